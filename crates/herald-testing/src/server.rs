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
    /// The user and group it runs as, when not this process's.
    user: Option<(u32, u32)>,
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
            user: None,
            child: None,
            _dir: dir,
        }
    }

    /// Runs it as user `uid` and group `gid` (the caller makes its data directory theirs).
    pub fn run_as(mut self, uid: u32, gid: u32) -> Self {
        self.user = Some((uid, gid));
        self
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
        let mut command = Command::new(&self.program);
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        let child = command
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

    /// Sends it `signal` (e.g. `QUIT`) and waits, at most 30 s, for it to exit; then kills
    /// it.
    pub async fn stop_with(&mut self, signal: &str) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .is_err()
        {
            let _ = child.start_kill();
            let _ = child.wait().await;
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

/// A PostgreSQL server of the test's own, not started: a fresh cluster (trust authentication
/// for `postgres` on 127.0.0.1, its socket in its data directory) made with `initdb`. As
/// root, the server runs as the `postgres` user, since PostgreSQL refuses to run as root.
/// Its database `postgres` is at `postgres://postgres@127.0.0.1:<port>/postgres`.
pub fn private_postgres() -> PrivateServer {
    let bindir = postgres_bindir();
    let user = if output_of("id", &["-u"]) == "0" {
        let uid = output_of("id", &["-u", "postgres"]);
        let gid = output_of("id", &["-g", "postgres"]);
        Some((
            uid.parse::<u32>()
                .unwrap_or_else(|_| panic!("no uid for postgres: {uid}")),
            gid.parse::<u32>()
                .unwrap_or_else(|_| panic!("no gid for postgres: {gid}")),
        ))
    } else {
        None
    };
    let initdb = bindir.join("initdb");
    let server = PrivateServer::new(bindir.join("postgres"), |port, data| {
        let cluster = data.join("pg");
        let mut command = std::process::Command::new(&initdb);
        command
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&cluster)
            .stdout(Stdio::null());
        if let Some((uid, gid)) = user {
            use std::os::unix::fs::PermissionsExt as _;
            use std::os::unix::process::CommandExt as _;
            // The temporary directory is this user's alone; let `postgres` in.
            for dir in [data.parent().unwrap_or(data), data] {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                    .unwrap_or_else(|err| panic!("cannot open {} up: {err}", dir.display()));
            }
            let owned = std::process::Command::new("chown")
                .arg(format!("{uid}:{gid}"))
                .arg(data)
                .status()
                .is_ok_and(|status| status.success());
            assert!(owned, "cannot give {} to postgres", data.display());
            command.uid(uid).gid(gid);
        }
        let output = command
            .output()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", initdb.display()));
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        [
            "-D".into(),
            cluster.into_os_string(),
            "-p".into(),
            port.to_string().into(),
            "-k".into(),
            data.as_os_str().to_owned(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
        ]
        .into()
    });
    match user {
        Some((uid, gid)) => server.run_as(uid, gid),
        None => server,
    }
}

/// The newest Debian PostgreSQL's binaries, or those in `PATH`.
fn postgres_bindir() -> PathBuf {
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path().join("bin"))
                .filter(|bin| bin.join("initdb").is_file())
                .collect()
        })
        .unwrap_or_default();
    debian.sort_by_key(|bin| {
        bin.parent()
            .and_then(|version| version.file_name())
            .and_then(|name| name.to_str())
            .and_then(|name| name.parse::<u32>().ok())
            .unwrap_or(0)
    });
    debian.pop().unwrap_or_else(|| {
        find_binary("initdb", &[])
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    })
}

/// What `program args` prints, trimmed; empty when it cannot run.
fn output_of(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_default()
}
