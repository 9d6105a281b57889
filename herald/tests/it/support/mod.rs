//! Helpers to run the `herald` binary and wait for it, with deadlines instead of sleeps.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub(crate) mod sink;
pub(crate) mod webhooks;

/// How long a started binary may take to say where it listens.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A `Command` for the `herald` binary with a clean `HERALD_*` environment.
pub(crate) fn herald() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("HERALD_") {
            command.env_remove(name);
        }
    }
    command.stdin(Stdio::null());
    command
}

/// Applies the schema of the configuration in `config` through `herald migrate`.
pub(crate) fn migrate(config: &Path) {
    let migrated = herald()
        .args(["migrate", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
}

/// A running `herald` process; killed when dropped.
pub(crate) struct Running {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
    /// Standard output lines, as the reader thread sees them.
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    /// Starts `command` and waits until it prints `listening on <url>`. Its standard error
    /// (the log) is passed on to the test's, and read with its standard output.
    pub(crate) fn start(mut command: Command) -> Self {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("the herald binary starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        let tx_err = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                // The test may have stopped listening; the log still goes on to stderr.
                let _ = tx_err.send(line);
            }
        });
        let deadline = Instant::now() + START_DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let url = line.split("listening on ").nth(1).map(str::to_owned);
                    seen.push(line);
                    if let Some(url) = url {
                        return Self {
                            child,
                            url,
                            lines,
                            seen,
                        };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    panic!(
                        "herald did not say where it listens within {START_DEADLINE:?} (exit: {status:?}); it printed {seen:#?}"
                    );
                }
            }
        }
    }

    /// Waits (bounded) until standard output contains `needle`; returns all of it so far.
    pub(crate) fn wait_for_output(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.seen.join("\n");
            if text.contains(needle) {
                return text;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => {
                    panic!("herald did not print {needle:?} within 10 s; it printed:\n{text}")
                }
            }
        }
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub(crate) fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -TERM {pid} failed");
        wait_with_deadline(&mut self.child, Duration::from_secs(20))
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to the process.
    pub(crate) fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(&pid)
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{signal} {pid} failed");
    }

    /// `url` + `path`.
    pub(crate) fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `child` to exit, killing it and failing the test past `deadline`.
pub(crate) fn wait_with_deadline(child: &mut Child, deadline: Duration) -> ExitStatus {
    let until = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().expect("waiting on herald") {
            return status;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herald did not exit within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `herald dev` on a data directory and a free port.
pub(crate) fn start_dev(data_dir: &Path) -> Running {
    start_dev_with(data_dir, &[])
}

/// [`start_dev`] with `HERALD_*` configuration overrides.
pub(crate) fn start_dev_with(data_dir: &Path, env: &[(&str, &str)]) -> Running {
    let mut command = herald();
    command
        .args(["dev", "--http", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .envs(env.iter().copied());
    Running::start(command)
}

/// The admin key `herald dev` wrote into its data directory.
pub(crate) fn dev_admin_key(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("admin-token"))
        .expect("herald dev wrote its admin key")
        .trim()
        .to_owned()
}

/// An HTTP client that never reuses a connection across a restart.
pub(crate) fn client() -> reqwest::Client {
    // The process needs its one TLS crypto provider before any client is built.
    herald_router::mediator::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .expect("the HTTP client builds")
}

/// The body of `GET url` as text, asserting a 200.
pub(crate) async fn get_text(http: &reqwest::Client, url: &str) -> String {
    let response = http.get(url).send().await.expect("the request is sent");
    assert_eq!(response.status(), 200, "GET {url}");
    response.text().await.expect("the body is text")
}

/// The response body parsed as JSON, asserting the content type starts with `content_type`.
pub(crate) async fn json_body(
    response: reqwest::Response,
    content_type: &str,
) -> serde_json::Value {
    let actual = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    assert!(
        actual.starts_with(content_type),
        "content type {actual:?}, wanted {content_type}"
    );
    response.json().await.expect("the body is JSON")
}
