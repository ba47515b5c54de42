//! LoRA adapters end to end, on the default model with the random
//! adapters of fixtures/lora/smollm2: an LRU of adapters per replica with
//! Serve's log lines and counters, adapters in use never evicted, affinity
//! routing across two replicas with fallback when the holder is saturated,
//! bad adapters refused with the reason while other requests run, the
//! adapters in `/v1/models`, `lora_modules`, and vLLM's run-time load and
//! unload endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::daemon::{app, config, wait_until, Daemon};
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Duration;

const ENGINE: &str = "{max_model_len: 512, kv_cache_memory_bytes: 33554432, max_lora_rank: 4}";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/lora")
}

/// A loading directory: adapters `a`, `b`, `c`, `zero` (good, rank <= 4),
/// and broken ones, each named for what is wrong with it.
fn loading_dir(root: &Path) -> PathBuf {
    let dir = root.join("loras");
    std::fs::create_dir_all(&dir).unwrap();
    let smol = fixtures().join("smollm2");
    for (name, target) in [
        ("a", smol.join("qk-r4")),
        ("b", smol.join("o-down-r4")),
        ("c", smol.join("all-r2")),
        ("zero", smol.join("zero-b")),
        ("rank-high", smol.join("qv-r8")),
        ("wrong-shapes", fixtures().join("tiny-llama/qv-r8")),
    ] {
        std::os::unix::fs::symlink(target, dir.join(name)).unwrap();
    }
    let config = std::fs::read_to_string(smol.join("all-r2/adapter_config.json")).unwrap();
    let bin = dir.join("bin-only");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("adapter_config.json"), &config).unwrap();
    std::fs::write(bin.join("adapter_model.bin"), b"a pickle").unwrap();
    let dora = dir.join("dora");
    std::fs::create_dir_all(&dora).unwrap();
    let dora_config = config.replace("\"use_dora\": false", "\"use_dora\": true");
    assert_ne!(dora_config, config);
    std::fs::write(dora.join("adapter_config.json"), dora_config).unwrap();
    std::os::unix::fs::symlink(
        smol.join("all-r2/adapter_model.safetensors"),
        dora.join("adapter_model.safetensors"),
    )
    .unwrap();
    dir
}

/// A config of one application serving the default model as `smollm2`
/// with `lora_config`.
fn lora_app(lora_config: &str, deployment_config: &str) -> String {
    config(&[app(
        "default",
        "/",
        &[format!(
            "    - model_loading_config: {{model_id: smollm2, model_source: default}}\n      engine_kwargs: {ENGINE}\n      lora_config: {lora_config}\n      deployment_config: {deployment_config}\n"
        )],
    )])
}

fn post(d: &Daemon, path: &str, body: &Value) -> (u16, Value) {
    common::daemon::post(&format!("{}{path}", d.http), body)
}

/// A short greedy chat with `model`.
fn ask(d: &Daemon, model: &str) -> (u16, Value) {
    post(
        d,
        "/v1/chat/completions",
        &json!({
            "model": model,
            "messages": [{"role": "user", "content": "Name a colour."}],
            "max_tokens": 3,
            "temperature": 0,
        }),
    )
}

/// A streamed chat of `tokens` tokens in the background; the handle gives
/// the status and the number of content chunks. Returns once the first
/// chunk has arrived (the request is running on its replica).
fn stream(d: &Daemon, model: &str, tokens: u32) -> std::thread::JoinHandle<(u16, usize)> {
    let url = format!("{}/v1/chat/completions", d.http);
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": true,
        "stream": true,
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let r = match ureq::post(&url)
            .timeout(Duration::from_secs(300))
            .send_json(body)
        {
            Ok(r) => r,
            Err(ureq::Error::Status(code, _)) => {
                let _ = tx.send(());
                return (code, 0);
            }
            Err(e) => panic!("{e}"),
        };
        let status = r.status();
        let mut chunks = 0;
        for line in std::io::BufReader::new(r.into_reader()).lines() {
            let line = line.unwrap();
            if line.starts_with("data: {") {
                chunks += 1;
                if chunks == 2 {
                    let _ = tx.send(());
                }
            }
        }
        let _ = tx.send(());
        (status, chunks)
    });
    rx.recv_timeout(Duration::from_secs(120)).unwrap();
    h
}

/// The replicas' `Loading model` / `Unloading model` lines, in order.
fn multiplex_log(d: &Daemon) -> Vec<String> {
    let dir = d.state_dir.join("logs/serve");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("replica_") {
            continue;
        }
        for line in std::fs::read_to_string(&p).unwrap().lines() {
            for key in ["Loading model '", "Unloading model '"] {
                if let Some(i) = line.find(key) {
                    let rest = &line[i..];
                    let end = rest.find("'.").map_or(rest.len(), |e| e + 2);
                    out.push(rest[..end].to_string());
                }
            }
        }
    }
    out
}

fn metrics(d: &Daemon) -> String {
    common::daemon::get(&format!("{}/metrics", d.http)).1
}

/// A metric's samples: (labels text, value).
fn samples<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let (metric, labels) = key.split_once('{').unwrap_or((key, ""));
            (metric == name).then(|| (labels, value.parse().unwrap_or(f64::NAN)))
        })
        .collect()
}

fn total(text: &str, name: &str) -> f64 {
    samples(text, name).iter().map(|s| s.1).sum()
}

/// A label's value in a sample's labels text.
fn label<'a>(labels: &'a str, key: &str) -> &'a str {
    let start = labels.find(&format!("{key}=\"")).map(|i| i + key.len() + 2);
    start.map_or("", |s| {
        let rest = &labels[s..];
        &rest[..rest.find('"').unwrap_or(rest.len())]
    })
}

#[test]
fn adapters_live_in_an_lru_and_those_in_use_are_never_evicted() {
    let mut d = Daemon::start(&[]);
    let dir = loading_dir(&d.state_dir);
    d.deploy_ok(&lora_app(
        &format!(
            "{{dynamic_lora_loading_path: {}, max_num_adapters_per_replica: 2}}",
            dir.display()
        ),
        "{num_replicas: 1}",
    ));
    d.wait_app("default", "RUNNING", Duration::from_secs(120));
    // a, b, c, a: c evicts a, then a evicts b.
    for a in ["a", "b", "c", "a"] {
        let (status, body) = ask(&d, &format!("smollm2:{a}"));
        assert_eq!(status, 200, "{a}: {body}");
        assert_eq!(body["model"], format!("smollm2:{a}"));
    }
    // Log lines reach the file a moment after the answer.
    wait_until("the multiplex log lines", Duration::from_secs(10), || {
        multiplex_log(&d).len() >= 6
    });
    assert_eq!(
        multiplex_log(&d),
        [
            "Loading model 'a'.",
            "Loading model 'b'.",
            "Unloading model 'a'.",
            "Loading model 'c'.",
            "Unloading model 'b'.",
            "Loading model 'a'.",
        ]
    );
    let m = metrics(&d);
    assert_eq!(
        total(&m, "serve_multiplexed_models_load_counter_total"),
        4.0
    );
    assert_eq!(
        total(&m, "serve_multiplexed_models_unload_counter_total"),
        2.0
    );
    assert_eq!(total(&m, "serve_num_multiplexed_models"), 2.0);
    assert_eq!(
        total(&m, "serve_multiplexed_get_model_requests_counter_total"),
        4.0
    );
    let mut registered: Vec<&str> = samples(&m, "serve_registered_multiplexed_model_id")
        .iter()
        .map(|(l, _)| label(l, "model_id"))
        .collect();
    registered.sort();
    assert_eq!(registered, ["a", "c"]);
    assert_eq!(
        samples(&m, "serve_multiplexed_model_load_latency_ms_count")
            .iter()
            .map(|s| s.1)
            .sum::<f64>(),
        4.0
    );
    // A long request on `zero`, then a storm for the others through the
    // one place left: every one is served, `zero` stays loaded.
    let long = stream(&d, "smollm2:zero", 400);
    // vLLM's lora_requests_info names it running (published after the
    // engine's next step).
    wait_until("zero running", Duration::from_secs(10), || {
        samples(&metrics(&d), "llm_serve:lora_requests_info")
            .first()
            .is_some_and(|(l, _)| {
                label(l, "running_lora_adapters") == "zero" && label(l, "max_lora") == "2"
            })
    });
    let storm: Vec<_> = (0..9)
        .map(|i| {
            let model = format!("smollm2:{}", ["a", "b", "c"][i % 3]);
            let (http, body) = (d.http.clone(), ask_body(&model));
            std::thread::spawn(move || {
                common::daemon::post(&format!("{http}/v1/chat/completions"), &body)
            })
        })
        .collect();
    for s in storm {
        let (status, body) = s.join().unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert!(!multiplex_log(&d).contains(&"Unloading model 'zero'.".to_string()));
    let (status, chunks) = long.join().unwrap();
    assert_eq!(status, 200);
    // Tokens whose text is not complete yet (UTF-8) send no chunk.
    assert!(chunks >= 300, "{chunks} chunks");
    d.shutdown();
}

fn ask_body(model: &str) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 3,
        "temperature": 0,
    })
}

#[test]
fn bad_adapters_are_refused_with_the_reason_while_others_run() {
    let mut d = Daemon::start_with_env(&[], &[("LLM_SERVE_ALLOW_RUNTIME_LORA_UPDATING", "1")]);
    let dir = loading_dir(&d.state_dir);
    let named = fixtures().join("smollm2/o-down-r4");
    d.deploy_ok(&lora_app(
        &format!(
            "{{dynamic_lora_loading_path: {}, max_num_adapters_per_replica: 4, lora_modules: {{named: {}}}}}",
            dir.display(),
            named.display()
        ),
        "{num_replicas: 1}",
    ));
    d.wait_app("default", "RUNNING", Duration::from_secs(120));
    // The adapters in /v1/models, vLLM's card shape.
    let (status, text) = common::daemon::get(&format!("{}/v1/models", d.http));
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in [
        "smollm2",
        "smollm2:a",
        "smollm2:zero",
        "smollm2:named",
        "smollm2:dora",
    ] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
    let a = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "smollm2:a")
        .unwrap();
    assert_eq!(a["parent"], "smollm2");
    assert_eq!(a["root"], format!("{}/a", dir.display()));
    // A request running on the replica while bad ones come and go.
    let running = stream(&d, "smollm2:a", 60);
    let cases = [
        ("smollm2:missing", 404, "adapter_config.json"),
        ("smollm2:bin-only", 400, "adapter_model.bin"),
        ("smollm2:wrong-shapes", 400, "another model"),
        (
            "smollm2:rank-high",
            400,
            "LoRA rank 8 is greater than max_lora_rank 4",
        ),
        ("smollm2:dora", 400, "DoRA"),
        ("smollm2:..", 400, "not a valid LoRA adapter name"),
        ("unknown:a", 404, "The model `unknown:a` does not exist."),
    ];
    for (model, code, needle) in cases {
        let (status, body) = ask(&d, model);
        assert_eq!(status, code, "{model}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{model}: {message}");
        assert_eq!(body["error"]["param"], "model", "{model}: {body}");
    }
    let (status, chunks) = running.join().unwrap();
    assert_eq!((status, chunks >= 40), (200, true), "{chunks}");
    // lora_modules: by its own name (vLLM) and as smollm2:named.
    assert_eq!(ask(&d, "named").0, 200);
    assert_eq!(ask(&d, "smollm2:named").0, 200);
    // Run-time load and unload, vLLM's shapes and texts.
    let load = |body: Value| post(&d, "/v1/load_lora_adapter", &body);
    let (status, body) = load(json!({"lora_name": "late"}));
    assert_eq!(status, 400, "{body}");
    let path = fixtures().join("smollm2/all-r2");
    let body = json!({"lora_name": "late", "lora_path": path});
    let r = ureq::post(&format!("{}/v1/load_lora_adapter", d.http)).send_json(body.clone());
    assert_eq!(
        r.unwrap().into_string().unwrap(),
        "Success: LoRA adapter 'late' added successfully."
    );
    let (status, answer) = load(body.clone());
    assert_eq!(status, 400);
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("has already been loaded"));
    assert_eq!(ask(&d, "smollm2:late").0, 200);
    assert_eq!(ask(&d, "late").0, 200);
    let (status, answer) = load(json!({"lora_name": "broken", "lora_path": dir.join("dora")}));
    assert_eq!(status, 400, "{answer}");
    let (status, _) = post(&d, "/v1/unload_lora_adapter", &json!({"lora_name": "late"}));
    assert_eq!(status, 200);
    let (status, answer) = post(&d, "/v1/unload_lora_adapter", &json!({"lora_name": "late"}));
    assert_eq!(status, 404, "{answer}");
    assert_eq!(ask(&d, "late").0, 404);
    d.shutdown();
}

#[test]
fn adapter_requests_follow_the_replica_that_holds_it_until_it_is_saturated() {
    let mut d = Daemon::start(&["--num-cpus", "2"]);
    d.deploy_ok(&lora_app(
        &format!(
            "{{dynamic_lora_loading_path: {}}}",
            fixtures().join("smollm2").display()
        ),
        "{num_replicas: 2, max_ongoing_requests: 2, ray_actor_options: {num_cpus: 1}}",
    ));
    d.wait_app("default", "RUNNING", Duration::from_secs(120));
    wait_until("two replicas", Duration::from_secs(120), || {
        d.replicas("default", "LLMServer:smollm2")
            .iter()
            .filter(|r| r["state"] == "RUNNING")
            .count()
            == 2
    });
    let per_replica = |name: &str| -> Vec<(String, f64)> {
        let m = metrics(&d);
        let mut v: Vec<(String, f64)> = samples(&m, name)
            .iter()
            .map(|(l, v)| (label(l, "replica").to_string(), *v))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    };
    for _ in 0..6 {
        assert_eq!(ask(&d, "smollm2:qk-r4").0, 200);
    }
    let served = per_replica("serve_deployment_request_counter_total");
    assert_eq!(served[0].1, 6.0, "{served:?}");
    assert!(served.get(1).is_none_or(|s| s.1 == 0.0), "{served:?}");
    let holder = served[0].0.clone();
    let loads = per_replica("serve_multiplexed_models_load_counter_total");
    assert_eq!(loads.iter().map(|l| l.1).sum::<f64>(), 1.0, "{loads:?}");
    // Saturate the holder (max_ongoing_requests 2): the next request for
    // the adapter goes to the other replica, which loads it.
    let long: Vec<_> = (0..2).map(|_| stream(&d, "smollm2:qk-r4", 150)).collect();
    let (status, _) = ask(&d, "smollm2:qk-r4");
    assert_eq!(status, 200);
    let loads = per_replica("serve_multiplexed_models_load_counter_total");
    assert_eq!(loads.iter().map(|l| l.1).sum::<f64>(), 2.0, "{loads:?}");
    assert!(loads.iter().all(|l| l.1 == 1.0), "{loads:?}");
    let served = per_replica("serve_deployment_request_counter_total");
    let other: f64 = served.iter().filter(|s| s.0 != holder).map(|s| s.1).sum();
    assert_eq!(other, 1.0, "{served:?}");
    for l in long {
        assert_eq!(l.join().unwrap().0, 200);
    }
    d.shutdown();
}

#[test]
fn build_writes_a_lora_config_that_checks() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("config.yaml");
    let run = |args: &[&str]| {
        std::process::Command::new(common::daemon::BIN)
            .args(args)
            .output()
            .unwrap()
    };
    let built = run(&[
        "build",
        "default",
        "--lora-dir",
        "/srv/loras",
        "--max-num-adapters-per-replica",
        "4",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let yaml = std::fs::read_to_string(&out).unwrap();
    for line in [
        "dynamic_lora_loading_path: /srv/loras",
        "max_num_adapters_per_replica: 4",
        "download_timeout_s: 30.0",
        "max_download_tries: 3",
    ] {
        assert!(yaml.contains(line), "{line} in {yaml}");
    }
    let checked = run(&["check", out.to_str().unwrap()]);
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
}
