//! A server of a test's own (`redis-server`, `nats-server`, `tansu`…) on a private port of
//! 127.0.0.1, for tests that kill and restart their broker. The shared services of
//! `scripts/test` are never restarted by a test.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long a server may take to accept connections.
const SERVER_START: Duration = Duration::from_secs(20);

/// `name` in `PATH`, `also_in` or the usual system directories; fails the test naming it
/// otherwise.
pub fn find_binary(name: &str, also_in: &[PathBuf]) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let elsewhere: Vec<PathBuf> = also_in
        .iter()
        .cloned()
        .chain(
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .map(PathBuf::from),
        )
        .collect();
    std::env::split_paths(&path)
        .chain(elsewhere.iter().cloned())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "this test runs its own `{name}`, which is missing: it is not in PATH nor in \
                 {elsewhere:?}; install it (`scripts/test` does)"
            )
        })
}

/// A port nothing listens on now: bound on 127.0.0.1 by the system, then let go.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or_else(|err| panic!("no free port on 127.0.0.1: {err}"))
}

/// A server on a private port, killed (SIGKILL) when dropped. Its data directory and log
/// live in a temporary directory removed with it.
#[derive(Debug)]
pub struct PrivateServer {
    program: PathBuf,
    args: Vec<OsString>,
    /// Its working and data directory (empty at first, kept across restarts).
    data: PathBuf,
    /// Its standard output and error, across restarts.
    log: PathBuf,
    /// The port it listens on.
    pub port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl PrivateServer {
    /// A server of `program` on a free port, not started yet. `args` makes its arguments
    /// from the port and its (empty) data directory.
    pub fn new(program: PathBuf, args: impl FnOnce(u16, &Path) -> Vec<OsString>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("herald-server-")
            .tempdir()
            .unwrap_or_else(|err| panic!("no temporary directory: {err}"));
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", data.display()));
        let port = free_port();
        Self {
            args: args(port, &data),
            program,
            log: dir.path().join("server.log"),
            data,
            port,
            child: None,
            _dir: dir,
        }
    }

    /// [`PrivateServer::new`], started.
    pub async fn start(
        program: PathBuf,
        args: impl FnOnce(u16, &Path) -> Vec<OsString>,
        deadline: Instant,
    ) -> Self {
        let mut server = Self::new(program, args);
        server.start_again(deadline).await;
        server
    }

    /// Starts it (again, on the same port and data) and waits until it accepts connections,
    /// at most 20 s and not past `deadline`.
    pub async fn start_again(&mut self, deadline: Instant) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|err| panic!("cannot open {}: {err}", self.log.display()));
        let log_too = log
            .try_clone()
            .unwrap_or_else(|err| panic!("cannot share {}: {err}", self.log.display()));
        let child = Command::new(&self.program)
            .args(&self.args)
            .current_dir(&self.data)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(log_too)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", self.program.display()));
        let child = self.child.insert(child);
        let ready_by = deadline.min(Instant::now() + SERVER_START);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{} exited while starting ({status}); {}",
                    self.program.display(),
                    self.log_tail()
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < ready_by,
                "{} did not accept connections on port {} within {SERVER_START:?}; {}",
                self.program.display(),
                self.port,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills it with SIGKILL and reaps it.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// The last lines it wrote, for a failure message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "the last lines of {}:\n{}",
            self.program.display(),
            lines[lines.len().saturating_sub(20)..].join("\n")
        )
    }
}

/// Arguments of a `redis-server` on `port` that keeps its data in `data` in an append-only
/// file fsynced on every write, so a write it confirmed survives SIGKILL.
pub fn durable_redis_args(port: u16, data: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(data.into());
    args
}
