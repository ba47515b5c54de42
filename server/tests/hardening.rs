//! The serving path under hostile-but-honest use, end to end on the real
//! binary and the default model: fan-out bounds, memory reservation,
//! the admin plane's guards, requests held through a deploy and routed
//! around a frozen replica, status during an update, start failures,
//! clients that leave early, large prompts and replies, stalled bodies,
//! `serve` exiting when it cannot serve, placement warnings, and the
//! smaller validation gaps. One test per fix of the hardening issue.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::daemon::{
    alive, app, config, get, kill, llm_config, one_app, post, wait_until, Daemon, BIN,
};
use common::{metric_value, serial, Server, MODEL};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SERVER: &str = "LLMServer:smollm2";
const UP: Duration = Duration::from_secs(90);

fn chat_body(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 4,
        "temperature": 0,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// Asserts a 400 naming `param`; returns the message.
fn assert_400(code: u16, body: &Value, param: &str) -> String {
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["param"], param, "{body}");
    body["error"]["message"].as_str().unwrap().to_string()
}

/// Sends raw bytes to `base` (`http://host:port`) and returns the socket.
fn raw(base: &str, bytes: &[u8]) -> std::net::TcpStream {
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(bytes).unwrap();
    s
}

fn metrics(base: &str) -> String {
    get(&format!("{base}/metrics")).1
}

/// The value of one labelled sample (`name{...label...}`) in Prometheus
/// text, summed over the matching lines.
fn sample(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The environment of a process, as `NAME=value` strings.
fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).to_string())
        .collect()
}

fn cmdline(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
        .replace('\0', " ")
}

#[test]
fn n_and_fan_out_are_bounded() {
    let _serial = serial();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(Server::start(&["--max-num-seqs", "8"]));
    let url = format!("{}/v1/chat/completions", server.base);
    let completions = format!("{}/v1/completions", server.base);
    // A billion samples would have been a terabyte allocation.
    let (code, body) = post(&url, &chat_body(json!({"n": 1_000_000_000u64})));
    let m = assert_400(code, &body, "n");
    assert!(m.contains("at most 8"), "{m}");
    let (code, body) = post(&url, &chat_body(json!({"n": 9})));
    assert_400(code, &body, "n");
    let (code, body) = post(&url, &chat_body(json!({"n": 0})));
    assert_400(code, &body, "n");
    // Three prompts of three samples: nine sequences, one more than fit.
    let (code, body) = post(
        &completions,
        &json!({"model": MODEL, "prompt": ["a", "b", "c"], "n": 3, "max_tokens": 2}),
    );
    assert_400(code, &body, "prompt");
    // best_of is refused, never ignored (equal to n it changes nothing).
    let (code, body) = post(
        &completions,
        &json!({"model": MODEL, "prompt": "a", "best_of": 3, "max_tokens": 2}),
    );
    assert_400(code, &body, "best_of");
    let (code, body) = post(
        &completions,
        &json!({"model": MODEL, "prompt": "a", "n": 2, "best_of": 1, "max_tokens": 2}),
    );
    assert_400(code, &body, "best_of");
    let (code, body) = post(
        &completions,
        &json!({"model": MODEL, "prompt": "a", "n": 2, "best_of": 2, "max_tokens": 2}),
    );
    assert_eq!(code, 200, "{body}");
    // The replica is the one that started and still answers.
    let (code, body) = post(&url, &chat_body(json!({"n": 8})));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["choices"].as_array().unwrap().len(), 8);
    let starts = sample(
        &metrics(&server.base),
        "serve_deployment_replica_starts_total",
        "",
    );
    assert_eq!(starts, 1.0);
}

#[test]
fn replica_memory_is_reserved_at_placement_and_sizes_the_cache() {
    let _serial = serial();
    // 2 GiB for replicas: each below reserves the weights (98 MB), its
    // 512 MiB cache and the 256 MiB runtime reserve, so two fit, not three.
    let d = Daemon::start(&["--memory", &(2u64 << 30).to_string()]);
    let engine = "{max_model_len: 512, kv_cache_memory_bytes: 536870912}";
    let yaml = format!(
        "applications:\n- name: m\n  route_prefix: /\n  import_path: llm_serve:build_openai_app\n  args:\n    llm_configs:\n    - model_loading_config: {{model_id: smollm2, model_source: default}}\n      engine_kwargs: {engine}\n      deployment_config: {{num_replicas: 3, ray_actor_options: {{num_cpus: 0.1}}}}\n"
    );
    d.deploy_ok(&yaml);
    wait_until("two replicas running, the third unplaced", UP, || {
        let s = d.status();
        let dep = &s["applications"]["m"]["deployments"][SERVER];
        dep["replica_states"]["RUNNING"] == 2
            && dep["message"]
                .as_str()
                .is_some_and(|m| m.contains("cannot be placed: not enough memory"))
    });
    let s = d.status();
    assert_eq!(s["applications"]["m"]["status"], "DEPLOYING");
    // A memory share sizes the cache from what the weights and the
    // reserve leave of it.
    let share: u64 = 700 << 20;
    let yaml = format!(
        "applications:\n- name: m\n  route_prefix: /\n  import_path: llm_serve:build_openai_app\n  args:\n    llm_configs:\n    - model_loading_config: {{model_id: smollm2, model_source: default}}\n      engine_kwargs: {{max_model_len: 512}}\n      deployment_config: {{num_replicas: 1, ray_actor_options: {{num_cpus: 0.1, memory: {share}}}}}\n"
    );
    d.deploy_ok(&yaml);
    d.wait_app("m", "RUNNING", UP);
    // The replicas of the first version may still be stopping.
    wait_until("the old replicas gone", UP, || {
        d.replica_pids("m", SERVER).len() == 1
    });
    let pids = d.replica_pids("m", SERVER);
    assert_eq!(pids.len(), 1);
    let weights = std::fs::metadata(llm_serve_models_default()).unwrap().len();
    let kv = share - weights - (256 << 20);
    let cmd = cmdline(pids[0]);
    assert!(
        cmd.contains(&format!("\"kv_cache_memory_bytes\":{kv}")),
        "{cmd}"
    );
    assert!(environ(pids[0]).contains(&format!("LLM_SERVE_MEMORY_LIMIT_BYTES={share}")));
}

fn llm_serve_models_default() -> std::path::PathBuf {
    let dir = std::env::var("LLM_SERVE_MODELS_DIR")
        .ok()
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/llm-serve/models")
        });
    dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// A request to the admin API with optional token, Host and content type.
fn admin_call(
    method: &str,
    url: &str,
    token: Option<&str>,
    host: Option<&str>,
    content_type: Option<&str>,
    body: &str,
) -> u16 {
    let mut r = ureq::request(method, url).timeout(Duration::from_secs(10));
    if let Some(t) = token {
        r = r.set("Authorization", &format!("Bearer {t}"));
    }
    if let Some(h) = host {
        r = r.set("Host", h);
    }
    if let Some(c) = content_type {
        r = r.set("Content-Type", c);
    }
    match r.send_string(body) {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

#[test]
fn the_admin_plane_wants_its_token_its_own_host_and_json() {
    let _serial = serial();
    let d = Daemon::start(&["--admin-token", "adm1n"]);
    let apps = format!("{}/api/serve/applications/", d.admin);
    let shutdown = format!("{}/api/llm-serve/shutdown", d.admin);
    assert_eq!(admin_call("GET", &apps, None, None, None, ""), 401);
    assert_eq!(admin_call("GET", &apps, Some("wrong"), None, None, ""), 401);
    assert_eq!(admin_call("GET", &apps, Some("adm1n"), None, None, ""), 200);
    // DNS rebinding: a page's own name pointed at 127.0.0.1.
    let evil = Some("evil.example:8265");
    assert_eq!(admin_call("GET", &apps, Some("adm1n"), evil, None, ""), 403);
    assert_eq!(
        admin_call("GET", &apps, Some("adm1n"), Some("localhost"), None, ""),
        200
    );
    // A cross-site form or text/plain post changes nothing.
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        assert_eq!(
            admin_call("POST", &shutdown, Some("adm1n"), None, ct, "{}"),
            415
        );
    }
    assert!(alive(d.pid()));
    // The CLI passes the token from --token or the environment.
    let out = Command::new(BIN)
        .args(["status", "-a", &d.admin])
        .env_remove("LLM_SERVE_ADMIN_TOKEN")
        .env_remove("LLM_SERVE_API_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["deploy", "-a", &d.admin, "--token", "adm1n"])
        .arg({
            let p = d.state_dir.join("guarded.yaml");
            std::fs::write(
                &p,
                one_app("g", "/", "{ray_actor_options: {num_cpus: 0.5}}"),
            )
            .unwrap();
            p
        })
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = |token: &str| {
        Command::new(BIN)
            .args(["status", "-a", &d.admin])
            .env("LLM_SERVE_ADMIN_TOKEN", token)
            .output()
            .unwrap()
    };
    wait_until("g RUNNING", UP, || {
        String::from_utf8_lossy(&status("adm1n").stdout).contains("status: RUNNING")
    });
    // The OpenAI API takes JSON only.
    let r = ureq::post(&format!("{}/v1/chat/completions", d.http))
        .set("Content-Type", "text/plain")
        .send_string(&chat_body(json!({})).to_string());
    match r {
        Err(ureq::Error::Status(415, _)) => {}
        other => panic!("a text/plain chat request got {other:?}"),
    }
    // The replica answers only the secret its llm-serve handed it.
    let details: Value = ureq::get(&apps)
        .set("Authorization", "Bearer adm1n")
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    let replica = &details["applications"]["g"]["deployments"][SERVER]["replicas"][0];
    let pid = replica["pid"].as_u64().unwrap() as u32;
    let log = std::fs::read_to_string(replica["log_file_path"].as_str().unwrap()).unwrap();
    let port: u16 = log
        .split("port=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {log}"));
    let secret = environ(pid)
        .into_iter()
        .find_map(|v| {
            v.strip_prefix("LLM_SERVE_REPLICA_SECRET=")
                .map(str::to_owned)
        })
        .expect("the replica's secret");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Bound to loopback only.
        assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok());
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut bare = llm_serve_proto::replica_client::ReplicaClient::new(channel.clone());
        let refused = bare
            .health(llm_serve_proto::HealthRequest {})
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let mut with_secret = llm_serve_proto::replica_client::ReplicaClient::with_interceptor(
            channel,
            llm_serve_proto::PresentSecret::new(Some(&secret)),
        );
        assert!(with_secret
            .health(llm_serve_proto::HealthRequest {})
            .await
            .is_ok());
    });
    let listening = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let hex_port = format!(":{port:04X} ");
    let line = listening
        .lines()
        .find(|l| l.contains(&hex_port) && l.split_whitespace().nth(3) == Some("0A"))
        .expect("the replica's listening socket");
    assert!(
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .starts_with("0100007F"),
        "{line}"
    );
    // `serve` binds to loopback unless told otherwise.
    let out = Command::new(BIN)
        .args(["serve", "--model", "default", "--print-config"])
        .output()
        .unwrap();
    let printed: Value = serde_yaml_ng::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["http_options"]["host"], "127.0.0.1");
    let out = Command::new(BIN)
        .args(["shutdown", "-y", "-a", &d.admin, "--token", "adm1n"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn requests_wait_for_starting_replicas_and_route_around_a_frozen_one() {
    let _serial = serial();
    let d = Daemon::start(&[]);
    d.deploy_ok(&one_app(
        "w",
        "/",
        "{num_replicas: 2, ray_actor_options: {num_cpus: 0.5}}",
    ));
    // Sent while the replicas load: held until one is ready, not a 503.
    let (code, body) = common::daemon::chat(&d.http, 4);
    assert_eq!(code, 200, "{body}");
    d.wait_app("w", "RUNNING", UP);
    let pids = d.replica_pids("w", SERVER);
    assert_eq!(pids.len(), 2);
    // One replica stops answering; health checks (every 10 s, three to
    // fail) have not noticed yet. Requests still go through, each within
    // seconds, on the other one.
    kill(pids[0], libc::SIGSTOP);
    let started = Instant::now();
    for _ in 0..6 {
        let sent = Instant::now();
        let (code, body) = common::daemon::chat(&d.http, 4);
        assert_eq!(code, 200, "{body}");
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "a request took {:?}",
            sent.elapsed()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    kill(pids[0], libc::SIGCONT);
}

#[test]
fn an_application_is_deploying_from_the_moment_an_update_is_accepted() {
    let _serial = serial();
    let d = Daemon::start(&[]);
    let deploy = |model_id: &str| {
        let yaml = config(&[app(
            "u",
            "/",
            &[llm_config(model_id, "{ray_actor_options: {num_cpus: 0.5}}")],
        )]);
        let value: Value = serde_yaml_ng::from_str(&yaml).unwrap();
        let r = ureq::put(&format!("{}/api/serve/applications/", d.admin))
            .send_json(value)
            .unwrap();
        assert_eq!(r.status(), 200);
    };
    deploy("smollm2");
    d.wait_app("u", "RUNNING", UP);
    // A new model id: a new deployment, which has no replica yet.
    deploy("smollm2-b");
    let mut seen = Vec::new();
    let deadline = Instant::now() + UP;
    loop {
        let details = d.details();
        let status = details["applications"]["u"]["status"]
            .as_str()
            .unwrap()
            .to_string();
        if status == "RUNNING" {
            let running = details["applications"]["u"]["deployments"]["LLMServer:smollm2-b"]
                ["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["state"] == "RUNNING")
                .count();
            assert_eq!(running, 1, "RUNNING before the new deployment runs");
            break;
        }
        seen.push(status);
        assert!(Instant::now() < deadline, "{seen:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|s| s == "DEPLOYING"), "{seen:?}");
}

#[test]
fn a_replica_killed_while_starting_is_retried_and_serve_leaves_no_goal() {
    let _serial = serial();
    let d = Daemon::start(&[]);
    d.deploy_ok(&one_app("k", "/", "{ray_actor_options: {num_cpus: 0.5}}"));
    let mut first = None;
    wait_until("a starting replica", UP, || {
        let r = d.replicas("k", SERVER);
        first = r
            .first()
            .filter(|r| r["state"] == "STARTING")
            .and_then(|r| r["pid"].as_u64());
        first.is_some()
    });
    let victim = first.unwrap() as u32;
    kill(victim, libc::SIGKILL);
    wait_until("a new replica running", UP, || {
        let pids = d.replica_pids("k", SERVER);
        d.app_status("k") == "RUNNING" && pids.len() == 1 && pids[0] != victim
    });
    drop(d);
    // `serve` keeps no goal: a `start` on the state directory it used
    // (killed as an impatient supervisor would) brings nothing back; and
    // while it runs the directory is its own.
    let state = std::env::temp_dir().join(format!("llm-serve-hd-{}", common::free_port()));
    let (http, admin) = (common::free_port(), common::free_port());
    let mut serve = Command::new(BIN)
        .args(["serve", "--model", "default", "--max-model-len", "512"])
        .args(["--kv-cache-memory-bytes", "33554432", "--threads", "1"])
        .args([
            "--port",
            &http.to_string(),
            "--dashboard-port",
            &admin.to_string(),
        ])
        .arg("--state-dir")
        .arg(&state)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("serve healthy", UP, || {
        get(&format!("http://127.0.0.1:{http}/health")).0 == 200
    });
    let other_admin = common::free_port().to_string();
    let out = Command::new(BIN)
        .args(["start", "--http-port", &common::free_port().to_string()])
        .args(["--dashboard-port", &other_admin, "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is using the state directory"));
    kill(serve.id(), libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    kill(serve.id(), libc::SIGKILL);
    let _ = serve.wait();
    let again = Daemon::start_in(state, &[]);
    std::thread::sleep(Duration::from_secs(1));
    let apps = again.details()["applications"].clone();
    assert_eq!(apps, json!({}), "{apps}");
}

#[test]
fn a_client_that_leaves_before_the_response_is_counted_and_logged() {
    let _serial = serial();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(Server::start(&[]));
    let body = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": true})
        .to_string();
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let s = raw(&server.base, request.as_bytes());
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
    wait_until("the engine to let the request go", UP, || {
        let text = metrics(&server.base);
        metric_value(&text, "llm_serve:num_requests_running") == 0.0
    });
    let text = metrics(&server.base);
    // The scrape itself is the one request in flight.
    assert_eq!(
        metric_value(&text, "serve_num_ongoing_http_requests"),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "serve_num_http_requests_total", "code=\"499\""),
        1.0,
        "{text}"
    );
    let state = std::env::temp_dir().join(format!(
        "llm-serve-test-{}",
        server.base.rsplit(':').next().unwrap()
    ));
    let log = std::fs::read_to_string(state.join("logs/serve/proxy_127.0.0.1.log")).unwrap();
    assert!(log.contains("POST 499"), "{log}");
}

#[test]
fn prompts_and_replies_over_4_mib_get_the_engine_s_answer() {
    let _serial = serial();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(Server::start(&[]));
    // 5 MiB of prompt: too long for the context, said by the engine.
    let (code, body) = post(
        &format!("{}/v1/completions", server.base),
        &json!({"model": MODEL, "prompt": "hello ".repeat(900_000), "max_tokens": 1}),
    );
    let m = assert_400(code, &body, "input_tokens");
    assert!(m.contains("maximum context length"), "{m}");
    // A detokenized text of ~5 MB comes back whole.
    let (_, ids) = post(
        &format!("{}/tokenize", server.base),
        &json!({"model": MODEL, "prompt": "hello world", "add_special_tokens": false}),
    );
    let ids: Vec<u32> = ids["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    let tokens: Vec<u32> = ids
        .iter()
        .copied()
        .cycle()
        .take(ids.len() * 450_000)
        .collect();
    let (code, body) = post(
        &format!("{}/detokenize", server.base),
        &json!({"model": MODEL, "tokens": tokens}),
    );
    assert_eq!(
        code,
        200,
        "{}",
        body.to_string().chars().take(300).collect::<String>()
    );
    assert!(body["prompt"].as_str().unwrap().len() > 4 << 20);
}

#[test]
fn a_body_that_stalls_is_timed_out() {
    let _serial = serial();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(Server::start(&["--body-read-timeout-s", "1"]));
    let mut s = raw(
        &server.base,
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\":",
    );
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1 s"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn serve_exits_when_its_application_cannot_start() {
    let _serial = serial();
    let state = std::env::temp_dir().join(format!("llm-serve-hx-{}", common::free_port()));
    let mut child = Command::new(BIN)
        .args(["serve", "--model", "/nonexistent/dir/model.gguf"])
        .args(["--port", &common::free_port().to_string()])
        .args(["--dashboard-port", &common::free_port().to_string()])
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "serve still running"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success());
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: ") && last.contains("/nonexistent/dir/model.gguf"),
        "{stderr}"
    );
}

#[test]
fn unplaceable_replicas_are_logged_and_missing_models_warned_about() {
    let _serial = serial();
    let d = Daemon::start(&["--num-cpus", "1"]);
    d.deploy_ok(&one_app("p", "/", "{num_replicas: 2}"));
    let log_path = d.details()["controller_info"]["log_file_path"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until("the placement warning in the log", UP, || {
        std::fs::read_to_string(&log_path).is_ok_and(|l| {
            l.contains("WARNING") && l.contains("1 replica that cannot be placed: not enough CPU")
        })
    });
    let missing = config(&[app(
        "x",
        "/",
        &["    - model_loading_config: {model_id: m, model_source: /nonexistent/dir/model.gguf}\n"
            .to_string()],
    )]);
    let path = d.state_dir.join("missing.yaml");
    std::fs::write(&path, missing).unwrap();
    let out = Command::new(BIN).arg("check").arg(&path).output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning:") && err.contains("/nonexistent/dir/model.gguf"),
        "{err}"
    );
}

#[test]
fn smaller_gaps_are_400s_naming_the_field() {
    let _serial = serial();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(Server::start(&[]));
    let url = format!("{}/v1/chat/completions", server.base);
    let (code, body) = post(&url, &chat_body(json!({"tools": "x"})));
    assert_400(code, &body, "tools");
    let (code, body) = post(&url, &chat_body(json!({"tools": [{"type": "function"}]})));
    assert_400(code, &body, "tools[0]");
    let (code, body) = post(&url, &chat_body(json!({"tool_choice": 5, "tools": []})));
    assert_400(code, &body, "tool_choice");
    let (code, body) = post(
        &url,
        &chat_body(json!({"continue_final_message": true, "add_generation_prompt": true})),
    );
    assert_400(code, &body, "continue_final_message");
    for seed in [
        json!(9_223_372_036_854_775_808u64),
        json!(1.180_591_620_717_411_3e21),
    ] {
        let (code, body) = post(&url, &chat_body(json!({"seed": seed})));
        let m = assert_400(code, &body, "seed");
        assert!(
            m.contains("between -9223372036854775808 and 9223372036854775807"),
            "{m}"
        );
    }
    let (code, body) = post(&url, &chat_body(json!({"seed": -5})));
    assert_eq!(code, 200, "{body}");
    // An assistant turn that only called a tool has no content.
    let (code, body) = post(
        &url,
        &json!({"model": MODEL, "max_tokens": 4, "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": null},
            {"role": "user", "content": "Hi again"},
        ]}),
    );
    assert_eq!(code, 200, "{body}");
}

#[test]
fn configs_with_gaps_are_refused_and_runtime_env_reaches_replicas() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("llm-serve-hc-{}", common::free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let check = |name: &str, yaml: &str| {
        let p = dir.join(name);
        std::fs::write(&p, yaml).unwrap();
        let out = Command::new(BIN).arg("check").arg(&p).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let base = one_app("c", "/my app", "{num_replicas: 1}");
    let (ok, err) = check("space.yaml", &base);
    assert!(!ok && err.contains("applications[0].route_prefix"), "{err}");
    let dup = one_app("c", "/", "{num_replicas: 1, num_replicas: 2}");
    let (ok, err) = check("dup.yaml", &dup);
    assert!(!ok && err.contains("duplicate key `num_replicas`"), "{err}");
    assert!(
        err.contains("applications[0].args.llm_configs[0].deployment_config"),
        "{err}"
    );
    let pip = format!(
        "{}  runtime_env: {{pip: [torch]}}\n",
        one_app("c", "/", "{num_replicas: 1}")
    );
    let (ok, err) = check("pip.yaml", &pip);
    assert!(
        !ok && err.contains("applications[0].runtime_env.pip"),
        "{err}"
    );
    // env_vars reach the replica process; a config too large for the
    // admin API is refused naming the limit, not as "unreachable".
    let d = Daemon::start(&[]);
    let with_env = format!(
        "{}  runtime_env: {{env_vars: {{HARDENING_PROBE: app-level}}}}\n",
        one_app(
            "e",
            "/",
            "{ray_actor_options: {num_cpus: 0.5, runtime_env: {env_vars: {ACTOR_PROBE: yes}}}}"
        )
    );
    d.deploy_ok(&with_env);
    d.wait_app("e", "RUNNING", UP);
    let pid = d.replica_pids("e", SERVER)[0];
    let env = environ(pid);
    assert!(
        env.contains(&"HARDENING_PROBE=app-level".to_string()),
        "{env:?}"
    );
    assert!(env.contains(&"ACTOR_PROBE=yes".to_string()), "{env:?}");
    let huge = format!(
        "{}  runtime_env: {{env_vars: {{BIG: {}}}}}\n",
        one_app("e", "/", "{num_replicas: 1}"),
        "x".repeat(9 << 20)
    );
    let out = d.deploy(&huge);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limit") && err.contains("413"), "{err}");
    assert!(!err.contains("cannot reach"), "{err}");
}
