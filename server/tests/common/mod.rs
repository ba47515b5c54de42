//! Starting `llm-serve serve` for end-to-end tests. Tests that start a
//! server hold `serial()` so that only one runs at a time (two cores).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod daemon;

use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const MODEL: &str = "smollm2";
pub const MAX_MODEL_LEN: usize = 2048;

static SERIAL: Mutex<()> = Mutex::new(());

/// One server test at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Server {
    pub base: String,
    /// Its `--state-dir` (replica logs are under `logs/`).
    pub state_dir: std::path::PathBuf,
    child: Child,
}

impl Server {
    /// `llm-serve serve` on the default model with a small context and
    /// KV cache, plus `extra` flags; returns once the port answers.
    pub fn spawn(model: &str, extra: &[&str]) -> Server {
        let port = free_port();
        let admin_port = free_port().to_string();
        let state_dir = std::env::temp_dir().join(format!("llm-serve-test-{port}"));
        let mut args: Vec<String> = [
            "serve",
            "--dashboard-port",
            &admin_port,
            "--state-dir",
            state_dir.to_str().unwrap(),
            "--model",
            model,
            "--served-model-name",
            MODEL,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--max-model-len",
            &MAX_MODEL_LEN.to_string(),
            "--kv-cache-memory-bytes",
            &(256usize << 20).to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(env!("CARGO_BIN_EXE_llm-serve"))
            .args(&args)
            .stdin(Stdio::null())
            .spawn()
            .expect("start llm-serve serve");
        let server = Server {
            base: format!("http://127.0.0.1:{port}"),
            state_dir,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "llm-serve did not listen in 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Starts a server on the default model and waits until it is healthy.
    pub async fn start(extra: &[&str]) -> Server {
        let s = Server::spawn("default", extra);
        s.wait_healthy().await;
        s
    }

    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = reqwest::get(format!("{}/health", self.base)).await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "not healthy in 120 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then the exit status (killed after 60 s).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child touches no memory.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One engine metric's value summed over its label sets.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metric_value(&text, name)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate();
        }
    }
}

/// The sum of a metric's samples in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let metric = key.split('{').next()?;
            (metric == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The `data:` payloads of an SSE body, checking the framing: every event
/// is exactly `data: <payload>\n\n`.
pub fn sse_payloads(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "SSE body must end with a blank line"
    );
    body.trim_end_matches("\n\n")
        .split("\n\n")
        .map(|event| {
            let payload = event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"));
            assert!(!payload.contains('\n'), "multi-line event: {event:?}");
            payload.to_string()
        })
        .collect()
}
