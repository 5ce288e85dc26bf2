//! The real `apiward run` binary as a child process, with every line it writes on stdout (the
//! request log) and stderr (diagnostics) kept for the test to read.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running gateway process; killed when dropped.
pub struct GatewayProcess {
    pub child: Child,
    /// The public listener, read from the "apiward is serving" line.
    pub addr: SocketAddr,
    /// The admin listener, when one is configured.
    pub admin: Option<SocketAddr>,
    pub config_path: PathBuf,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    _dir: Option<tempfile::TempDir>,
}

impl GatewayProcess {
    /// Writes `toml` to a temporary file and runs `apiward run --config FILE EXTRA...`.
    pub fn start(toml: &str, extra: &[&str]) -> GatewayProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("apiward.toml");
        std::fs::write(&path, toml).expect("write config");
        let mut p = GatewayProcess::start_at(&path, extra);
        p._dir = Some(dir);
        p
    }

    /// Runs `apiward run --config PATH EXTRA...` on an existing file.
    pub fn start_at(path: &Path, extra: &[&str]) -> GatewayProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_apiward"))
            .args(["run", "--config"])
            .arg(path)
            .args(extra)
            .env_remove("APIWARD_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run apiward");
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        let mut p = GatewayProcess {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: None,
            config_path: path.to_path_buf(),
            stdout,
            stderr,
            _dir: None,
        };
        let serving = p
            .stderr_line(|l| l.contains("apiward is serving"))
            .unwrap_or_else(|| panic!("the gateway did not start:\n{}", p.stderr_text()));
        let field = |name: &str| -> Option<SocketAddr> {
            // text: `listen=127.0.0.1:1234`; JSON: `"listen":"127.0.0.1:1234"`
            let rest = serving
                .split(&format!("{name}="))
                .nth(1)
                .or_else(|| serving.split(&format!("\"{name}\":\"")).nth(1))?;
            rest.split(|c: char| c.is_whitespace() || c == '"')
                .next()?
                .parse()
                .ok()
        };
        p.addr = field("listen").expect("the listen address in the start-up line");
        p.admin = field("admin");
        p
    }

    /// The first stderr line matching `pred`, waiting up to 10 s for it.
    pub fn stderr_line(&self, pred: impl Fn(&str) -> bool) -> Option<String> {
        wait_for(&self.stderr, &pred, Duration::from_secs(10))
    }

    /// The first stdout line (request log) matching `pred`, waiting up to 10 s.
    pub fn stdout_line(&self, pred: impl Fn(&str) -> bool) -> Option<String> {
        wait_for(&self.stdout, &pred, Duration::from_secs(10))
    }

    /// Every stderr line so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr_lines().join("\n")
    }

    /// Sends a signal (by name, as `kill -s` takes it) to the gateway.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} failed");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if let Ok(mut l) = sink.lock() {
                l.push(line);
            }
        }
    });
    lines
}

fn wait_for(
    lines: &Mutex<Vec<String>>,
    pred: &dyn Fn(&str) -> bool,
    limit: Duration,
) -> Option<String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = lines
            .lock()
            .ok()
            .and_then(|l| l.iter().find(|l| pred(l)).cloned())
        {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `check` every 10 ms for up to 10 s; whether it became true.
pub fn wait_until(check: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
