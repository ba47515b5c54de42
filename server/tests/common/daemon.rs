//! A background `llm-serve start` daemon for control-plane tests: its own
//! ports and state directory, the CLI against it, its admin API, and
//! cleanup (every process it started) when dropped.

use super::free_port;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// A POST of `body` to `url`: the status and the JSON answer.
pub fn post(url: &str, body: &Value) -> (u16, Value) {
    let r = ureq::post(url)
        .timeout(Duration::from_secs(60))
        .send_json(body.clone());
    match r {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => (0, Value::String(e.to_string())),
    }
}

/// A GET: the status and the body.
pub fn get(url: &str) -> (u16, String) {
    match ureq::get(url).timeout(Duration::from_secs(30)).call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// A short chat completion at `base` (a route prefix's URL); the status
/// and the answer.
pub fn chat(base: &str, max_tokens: u32) -> (u16, Value) {
    post(
        &format!("{base}/v1/chat/completions"),
        &serde_json::json!({
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }),
    )
}
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_llm-serve");

/// Engine settings that keep a test replica small.
pub const SMALL_ENGINE: &str = "{max_model_len: 512, kv_cache_memory_bytes: 33554432}";

pub struct Daemon {
    pub http: String,
    pub admin: String,
    pub state_dir: PathBuf,
    pub args: Vec<String>,
    /// The admin token it was started with (`--admin-token`), which the
    /// helpers present.
    pub token: Option<String>,
    /// Environment variables it is started with.
    pub env: Vec<(String, String)>,
    pid: Option<u32>,
}

/// An LLM config serving the default model as `smollm2`.
pub fn llm_config(model_id: &str, deployment_config: &str) -> String {
    format!(
        "    - model_loading_config: {{model_id: {model_id}, model_source: default}}\n      engine_kwargs: {SMALL_ENGINE}\n      deployment_config: {deployment_config}\n"
    )
}

/// An application entry of a deploy config.
pub fn app(name: &str, prefix: &str, llm_configs: &[String]) -> String {
    format!(
        "- name: {name}\n  route_prefix: {prefix}\n  import_path: llm_serve:build_openai_app\n  args:\n    llm_configs:\n{}",
        llm_configs.concat()
    )
}

/// A config of one application serving the default model as `smollm2`.
pub fn one_app(name: &str, prefix: &str, deployment_config: &str) -> String {
    config(&[app(
        name,
        prefix,
        &[llm_config("smollm2", deployment_config)],
    )])
}

pub fn config(apps: &[String]) -> String {
    format!("applications:\n{}", apps.concat())
}

/// Whether a process runs (not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

pub fn kill(pid: u32, signal: i32) {
    // SAFETY: kill(2) touches no memory of ours.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// Waits until `f` holds, polling; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Daemon {
    /// `llm-serve start` with its own ports and state dir, plus `extra`.
    pub fn start(extra: &[&str]) -> Daemon {
        Daemon::start_in(tempfile_dir(), extra)
    }

    /// `llm-serve start` with `env` set, plus `extra`.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::start_in_env(tempfile_dir(), extra, env)
    }

    /// `llm-serve start` on `state_dir` with its own ports, plus `extra`.
    pub fn start_in(state_dir: PathBuf, extra: &[&str]) -> Daemon {
        Daemon::start_in_env(state_dir, extra, &[])
    }

    fn start_in_env(state_dir: PathBuf, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let http_port = free_port();
        let admin_port = free_port();
        let mut args: Vec<String> = vec![
            "--http-port".into(),
            http_port.to_string(),
            "--dashboard-port".into(),
            admin_port.to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let token = extra
            .iter()
            .position(|a| *a == "--admin-token")
            .and_then(|i| extra.get(i + 1))
            .map(|t| t.to_string());
        let mut d = Daemon {
            http: format!("http://127.0.0.1:{http_port}"),
            admin: format!("http://127.0.0.1:{admin_port}"),
            state_dir,
            args,
            token,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            pid: None,
        };
        d.start_again();
        d
    }

    /// Starts the daemon (again) with the same flags and state dir.
    pub fn start_again(&mut self) {
        let out = Command::new(BIN)
            .arg("start")
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run llm-serve start");
        assert!(
            out.status.success(),
            "llm-serve start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("Started llm-serve"), "{stdout}");
        self.pid = self.details()["controller_info"]["pid"]
            .as_u64()
            .map(|p| p as u32);
    }

    pub fn pid(&self) -> u32 {
        self.pid.expect("the daemon's pid")
    }

    /// Runs `llm-serve <args> -a <admin>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args).args(["-a", &self.admin]);
        if let Some(t) = &self.token {
            cmd.args(["--token", t]);
        }
        cmd.stdin(Stdio::null())
            .output()
            .expect("run the llm-serve CLI")
    }

    /// Writes `yaml` to a file and deploys it with the CLI.
    pub fn deploy(&self, yaml: &str) -> Output {
        let path = self.state_dir.join(format!("config-{}.yaml", free_port()));
        std::fs::write(&path, yaml).unwrap();
        self.cli(&["deploy", path.to_str().unwrap()])
    }

    pub fn deploy_ok(&self, yaml: &str) {
        let out = self.deploy(yaml);
        assert!(
            out.status.success(),
            "deploy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `GET /api/serve/applications/`.
    pub fn details(&self) -> Value {
        let mut r = ureq::get(&format!("{}/api/serve/applications/", self.admin))
            .timeout(Duration::from_secs(10));
        if let Some(t) = &self.token {
            r = r.set("Authorization", &format!("Bearer {t}"));
        }
        r.call()
            .expect("GET /api/serve/applications/")
            .into_json()
            .expect("details as JSON")
    }

    /// `llm-serve status` parsed.
    pub fn status(&self) -> Value {
        let out = self.cli(&["status"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_yaml_ng::from_slice(&out.stdout).unwrap()
    }

    pub fn app_status(&self, app: &str) -> String {
        self.status()["applications"][app]["status"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    pub fn wait_app(&self, app: &str, status: &str, timeout: Duration) {
        wait_until(&format!("{app} {status}"), timeout, || {
            self.app_status(app) == status
        });
    }

    /// A deployment's replicas in the details.
    pub fn replicas(&self, app: &str, deployment: &str) -> Vec<Value> {
        self.details()["applications"][app]["deployments"][deployment]["replicas"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn replica_pids(&self, app: &str, deployment: &str) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .replicas(app, deployment)
            .iter()
            .filter_map(|r| r["pid"].as_u64().map(|p| p as u32))
            .collect();
        pids.sort();
        pids
    }

    /// Every replica pid of every application.
    pub fn all_replica_pids(&self) -> Vec<u32> {
        let d = self.details();
        let mut pids = Vec::new();
        for app in d["applications"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
        {
            for dep in app["deployments"]
                .as_object()
                .into_iter()
                .flat_map(|m| m.values())
            {
                for r in dep["replicas"].as_array().into_iter().flatten() {
                    if let Some(p) = r["pid"].as_u64() {
                        if p as u32 != self.pid() {
                            pids.push(p as u32);
                        }
                    }
                }
            }
        }
        pids
    }

    /// `llm-serve shutdown -y`.
    pub fn shutdown(&mut self) -> Output {
        let out = self.cli(&["shutdown", "-y"]);
        self.pid = None;
        out
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            // Replicas follow their parent (PDEATHSIG).
            kill(pid, libc::SIGKILL);
        }
    }
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "llm-serve-cp-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
