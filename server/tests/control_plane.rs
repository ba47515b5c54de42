//! The control plane end to end on the real binary, the default model and
//! real replica processes: `llm-serve start`, `deploy`, `status`,
//! `config`, `shutdown` and `run`; replica failure and replacement;
//! lightweight and rolling updates; start failures and config errors;
//! fractional GPU placement; recovery of a killed daemon; the proxy's
//! timeouts, routes, metrics and logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::daemon::{
    alive, app, chat, config, get, kill, llm_config, one_app, post, wait_until, Daemon, BIN,
};
use common::serial;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SERVER: &str = "LLMServer:smollm2";
const UP: Duration = Duration::from_secs(90);

/// Requests sent in a loop by `clients` threads until stopped: when each
/// was sent and how it ended.
struct Traffic {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<(Instant, u16, Value)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(base: &str, clients: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, results, base) = (stop.clone(), results.clone(), base.to_string());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let sent = Instant::now();
                        let (status, body) = chat(&base, 4);
                        results.lock().unwrap().push((sent, status, body));
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            results,
            threads,
        }
    }

    fn finish(self) -> Vec<(Instant, u16, Value)> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.results).unwrap().into_inner().unwrap()
    }
}

#[test]
fn two_applications_deploy_report_status_and_answer() {
    let _serial = serial();
    let d = Daemon::start(&[]);
    let yaml = config(&[
        app(
            "a",
            "/a",
            &[llm_config(
                "smollm2",
                "{num_replicas: 2, ray_actor_options: {num_cpus: 0.5}}",
            )],
        ),
        app(
            "b",
            "/b",
            &[llm_config(
                "smollm2",
                "{ray_actor_options: {num_cpus: 0.5}}",
            )],
        ),
    ]);
    let out = d.deploy(&yaml);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout,
        "Sent deploy request successfully!\n * Use `llm-serve status` to check applications' statuses.\n * Use `llm-serve config` to see the current application config(s).\n"
    );
    assert_eq!(d.app_status("a"), "DEPLOYING");
    d.wait_app("a", "RUNNING", UP);
    d.wait_app("b", "RUNNING", UP);
    let status = d.status();
    let proxies = status["proxies"].as_object().unwrap();
    assert_eq!(proxies.len(), 1);
    assert_eq!(proxies.values().next().unwrap(), "HEALTHY");
    let a = &status["applications"]["a"];
    assert_eq!(a["message"], "");
    assert!(a["last_deployed_time_s"].as_f64().unwrap() > 1e9);
    assert_eq!(a["deployments"][SERVER]["status"], "HEALTHY");
    assert_eq!(
        a["deployments"][SERVER]["replica_states"],
        json!({"RUNNING": 2})
    );
    assert_eq!(
        status["applications"]["b"]["deployments"][SERVER]["replica_states"],
        json!({"RUNNING": 1})
    );

    for prefix in ["/a", "/b"] {
        let (code, body) = chat(&format!("{}{prefix}", d.http), 8);
        assert_eq!(code, 200, "{prefix}: {body}");
        assert!(!body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty());
        let (code, body) = post(
            &format!("{}{prefix}/v1/completions", d.http),
            &json!({"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}),
        );
        assert_eq!(code, 200, "{body}");
        let (code, models) = get(&format!("{}{prefix}/v1/models", d.http));
        assert_eq!(code, 200);
        assert!(models.contains("\"id\":\"smollm2\""), "{models}");
    }
    let (code, routes) = get(&format!("{}/-/routes", d.http));
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&routes).unwrap(),
        json!({"/a": "a", "/b": "b"})
    );
    assert_eq!(
        get(&format!("{}/-/healthz", d.http)),
        (200, "success".into())
    );
    let (code, body) = get(&format!("{}/c/v1/models", d.http));
    assert_eq!(code, 404);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], 404);

    // ServeInstanceDetails.
    let det = d.details();
    let ci = &det["controller_info"];
    assert_eq!(ci["actor_name"], "SERVE_CONTROLLER_ACTOR");
    let node_id = ci["node_id"].as_str().unwrap().to_string();
    assert!(!node_id.is_empty());
    assert!(std::path::Path::new(ci["log_file_path"].as_str().unwrap()).exists());
    assert_eq!(det["deploy_mode"], "MULTI_APP");
    assert_eq!(det["proxy_location"], "EveryNode");
    assert_eq!(det["grpc_options"]["port"], 9000);
    assert!(det["http_options"]["port"].as_u64().is_some());
    assert_eq!(det["proxies"][&node_id]["status"], "HEALTHY");
    assert_eq!(
        det["proxies"][&node_id]["actor_name"],
        format!("SERVE_CONTROLLER_ACTOR:SERVE_PROXY_ACTOR-{node_id}")
    );
    let a = &det["applications"]["a"];
    assert_eq!(a["name"], "a");
    assert_eq!(a["route_prefix"], "/a");
    assert_eq!(a["status"], "RUNNING");
    assert_eq!(a["docs_path"], Value::Null);
    assert_eq!(a["deployed_app_config"]["name"], "a");
    let dep = &a["deployments"][SERVER];
    assert_eq!(dep["name"], SERVER);
    assert_eq!(dep["status"], "HEALTHY");
    let dc = &dep["deployment_config"];
    assert_eq!(dc["num_replicas"], 2);
    assert_eq!(dc["max_ongoing_requests"], 1_000_000_000);
    assert_eq!(dc["health_check_period_s"], 10.0);
    assert_eq!(dc["health_check_timeout_s"], 10.0);
    assert_eq!(dc["graceful_shutdown_wait_loop_s"], 2.0);
    assert_eq!(dc["graceful_shutdown_timeout_s"], 20.0);
    assert_eq!(dc["ray_actor_options"]["num_cpus"], 0.5);
    assert_eq!(dc["is_driver_deployment"], false);
    let replicas = dep["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 2);
    for r in replicas {
        let id = r["replica_id"].as_str().unwrap();
        assert!(id.starts_with("a#LLMServer:smollm2#"), "{id}");
        assert_eq!(r["actor_name"], format!("SERVE_REPLICA::{id}"));
        assert_eq!(r["state"], "RUNNING");
        assert_eq!(r["node_id"], node_id.as_str());
        assert!(r["start_time_s"].as_f64().unwrap() > 1e9);
        assert!(alive(r["pid"].as_u64().unwrap() as u32));
        let log = std::fs::read_to_string(r["log_file_path"].as_str().unwrap()).unwrap();
        assert!(log.contains("model loaded"), "{log}");
        assert!(log.contains(id), "the replica's lines carry its id");
    }

    let out = d.cli(&["config", "-n", "b"]);
    assert!(out.status.success());
    let conf: Value = serde_yaml_ng::from_slice(&out.stdout).unwrap();
    assert_eq!(conf["name"], "b");
    assert_eq!(conf["route_prefix"], "/b");
    assert_eq!(
        conf["args"]["llm_configs"][0]["model_loading_config"]["model_id"],
        "smollm2"
    );

    let (_, metrics) = get(&format!("{}/metrics", d.http));
    for needle in [
        "serve_num_http_requests_total{application=\"a\",method=\"POST\",route=\"/a\",status_code=\"200\"}",
        "serve_http_request_latency_ms_bucket{application=\"b\"",
        "serve_num_http_error_requests_total{application=\"\",error_code=\"404\"",
        "serve_deployment_replica_healthy{application=\"a\",deployment=\"LLMServer:smollm2\",replica=\"a#LLMServer:smollm2#",
        "serve_deployment_replica_starts_total{application=\"b\"",
        "serve_deployment_request_counter_total{application=\"a\",deployment=\"LLMServer:smollm2\"",
        "serve_deployment_processing_latency_ms_count{application=\"b\"",
        "serve_replica_processing_queries{application=\"a\"",
        "llm_serve:num_requests_running{",
    ] {
        assert!(metrics.contains(needle), "no {needle} in\n{metrics}");
    }
}

#[test]
fn a_killed_replica_is_replaced_while_the_other_serves() {
    let _serial = serial();
    let d = Daemon::start(&[]);
    d.deploy_ok(&one_app(
        "t",
        "/",
        "{num_replicas: 2, ray_actor_options: {num_cpus: 0.5}}",
    ));
    d.wait_app("t", "RUNNING", UP);
    let before = d.replica_pids("t", SERVER);
    assert_eq!(before.len(), 2);
    let traffic = Traffic::start(&d.http, 2);
    std::thread::sleep(Duration::from_secs(1));
    let victim = before[0];
    let killed_at = Instant::now();
    kill(victim, libc::SIGKILL);
    // Watched through the admin API every 20 ms: the replacement is
    // quick on this small model.
    let mut seen = Vec::new();
    let deadline = Instant::now() + UP;
    loop {
        let det = d.details();
        let dep = &det["applications"]["t"]["deployments"][SERVER];
        let status = dep["status"].as_str().unwrap_or("").to_string();
        let replicas = dep["replicas"].as_array().cloned().unwrap_or_default();
        let running: Vec<u64> = replicas
            .iter()
            .filter(|r| r["state"] == "RUNNING")
            .filter_map(|r| r["pid"].as_u64())
            .collect();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status == "HEALTHY" && running.len() == 2 && !running.contains(&u64::from(victim)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no replacement; statuses seen: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        seen.iter().any(|s| s == "UNHEALTHY" || s == "UPDATING"),
        "statuses seen: {seen:?}"
    );
    let st = d.status();
    assert_eq!(
        st["applications"]["t"]["deployments"][SERVER]["replica_states"],
        json!({"RUNNING": 2})
    );
    std::thread::sleep(Duration::from_secs(1));
    let results = traffic.finish();
    let failed: Vec<_> = results.iter().filter(|(_, code, _)| *code != 200).collect();
    for (sent, code, body) in &failed {
        assert!(
            *sent < killed_at,
            "a request sent after the kill failed ({code}): {body}"
        );
    }
    assert!(failed.len() <= 2, "{} requests failed", failed.len());
    let after_kill = results.iter().filter(|(s, _, _)| *s > killed_at).count();
    assert!(after_kill > 0, "no request was served after the kill");
    let (_, metrics) = get(&format!("{}/metrics", d.http));
    assert!(metrics.contains("serve_deployment_replica_starts_total"));
}

#[test]
fn a_replica_failing_its_health_checks_is_replaced() {
    let _serial = serial();
    let d = Daemon::start(&[]);
    d.deploy_ok(&one_app(
        "h",
        "/",
        "{health_check_period_s: 0.5, health_check_timeout_s: 0.5, ray_actor_options: {num_cpus: 0.5}}",
    ));
    d.wait_app("h", "RUNNING", UP);
    let victim = d.replica_pids("h", SERVER)[0];
    // A frozen process answers nothing.
    kill(victim, libc::SIGSTOP);
    wait_until("the frozen replica to be replaced", UP, || {
        let pids = d.replica_pids("h", SERVER);
        d.app_status("h") == "RUNNING" && pids.len() == 1 && pids[0] != victim
    });
    wait_until(
        "the frozen replica to be killed",
        Duration::from_secs(10),
        || !alive(victim),
    );
    let log = std::fs::read_to_string(
        d.details()["controller_info"]["log_file_path"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(log.contains("failed 3 health checks in a row"), "{log}");
    let (code, body) = chat(&d.http, 4);
    assert_eq!(code, 200, "{body}");
}

#[test]
fn lightweight_updates_keep_replicas_and_code_updates_roll_them() {
    let _serial = serial();
    let d = Daemon::start(&[]);
    let deploy = |replicas: u32, language: &str, max_model_len: u32| {
        d.deploy_ok(&config(&[app(
            "u",
            "/",
            &[format!(
                "    - model_loading_config: {{model_id: smollm2, model_source: default}}\n      engine_kwargs: {{max_model_len: {max_model_len}, kv_cache_memory_bytes: 33554432}}\n      deployment_config: {{num_replicas: {replicas}, user_config: {{language: {language}}}, ray_actor_options: {{num_cpus: 0.5}}}}\n"
            )],
        )]));
    };
    let running = |n: usize| {
        move |d: &Daemon| {
            let st = d.status();
            st["applications"]["u"]["status"] == "RUNNING"
                && st["applications"]["u"]["deployments"][SERVER]["replica_states"]
                    == json!({"RUNNING": n})
        }
    };
    deploy(2, "french", 512);
    wait_until("2 replicas", UP, || running(2)(&d));
    let first = d.replica_pids("u", SERVER);

    deploy(2, "german", 512);
    std::thread::sleep(Duration::from_millis(500));
    wait_until("the user_config update", UP, || running(2)(&d));
    assert_eq!(
        d.replica_pids("u", SERVER),
        first,
        "user_config restarted replicas"
    );
    assert_eq!(
        d.details()["applications"]["u"]["deployments"][SERVER]["deployment_config"]["user_config"],
        json!({"language": "german"})
    );

    deploy(3, "german", 512);
    wait_until("3 replicas", UP, || running(3)(&d));
    let three = d.replica_pids("u", SERVER);
    assert!(
        first.iter().all(|p| three.contains(p)),
        "{first:?} {three:?}"
    );
    deploy(2, "german", 512);
    wait_until("2 replicas", UP, || running(2)(&d));
    let two = d.replica_pids("u", SERVER);
    assert!(two.iter().all(|p| three.contains(p)), "{two:?} {three:?}");

    // A code update (engine_kwargs) rolls the replicas one by one, under
    // traffic, never leaving none running.
    let traffic = Traffic::start(&d.http, 2);
    deploy(2, "german", 384);
    let mut samples = 0;
    wait_until("the rolling update", UP, || {
        let replicas = d.replicas("u", SERVER);
        let serving = replicas
            .iter()
            .filter(|r| r["state"] == "RUNNING" || r["state"] == "UPDATING")
            .count();
        assert!(
            serving >= 1,
            "no replica running during the update: {replicas:?}"
        );
        samples += 1;
        let pids = d.replica_pids("u", SERVER);
        running(2)(&d) && pids.iter().all(|p| !two.contains(p))
    });
    assert!(samples > 1);
    let results = traffic.finish();
    let failed: Vec<_> = results.iter().filter(|(_, c, _)| *c != 200).collect();
    assert!(
        failed.is_empty(),
        "requests failed during the update: {failed:?}"
    );
    assert!(results.len() > 4, "too little traffic: {}", results.len());
    for p in &two {
        wait_until("old replicas to exit", Duration::from_secs(30), || {
            !alive(*p)
        });
    }
    let (_, models) = get(&format!("{}/v1/models", d.http));
    assert!(models.contains("\"max_model_len\":384"), "{models}");
}

#[test]
fn autoscaling_follows_the_load_down_to_zero_and_back() {
    let _serial = serial();
    let d = Daemon::start(&["--num-cpus", "8"]);
    d.deploy_ok(&one_app(
        "auto",
        "/",
        "{autoscaling_config: {min_replicas: 0, initial_replicas: 1, max_replicas: 2, target_ongoing_requests: 1, upscale_delay_s: 0.5, downscale_delay_s: 2, metrics_interval_s: 0.2, look_back_period_s: 1}, ray_actor_options: {num_cpus: 0.5}}",
    ));
    let replica_states = |d: &Daemon| {
        d.status()["applications"]["auto"]["deployments"][SERVER]["replica_states"].clone()
    };
    wait_until("one replica", UP, || {
        replica_states(&d) == json!({"RUNNING": 1})
    });
    // Four clients, one request each at a time: 4 ongoing against a
    // target of 1 per replica, so up to max_replicas.
    let traffic = Traffic::start(&d.http, 4);
    wait_until("two replicas under load", UP, || {
        replica_states(&d) == json!({"RUNNING": 2})
    });
    let results = traffic.finish();
    assert!(results.iter().all(|(_, c, _)| *c == 200));
    // Quiet: down to zero replicas.
    wait_until("zero replicas when idle", UP, || {
        let st = d.status();
        let dep = &st["applications"]["auto"]["deployments"][SERVER];
        dep["replica_states"] == json!({}) && dep["status"] == "HEALTHY"
    });
    assert_eq!(d.app_status("auto"), "RUNNING");
    // A request wakes a replica and waits for it.
    let (code, body) = chat(&d.http, 4);
    assert_eq!(code, 200, "{body}");
    assert_eq!(replica_states(&d), json!({"RUNNING": 1}));
    let log = std::fs::read_to_string(
        d.details()["controller_info"]["log_file_path"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(
        log.contains(
            "Upscaling deployment LLMServer:smollm2 in application 'auto' from 1 to 2 replicas"
        ),
        "{log}"
    );
    assert!(
        log.contains("Downscaling deployment LLMServer:smollm2 in application 'auto'"),
        "{log}"
    );
    assert!(log.contains("from 0 to 1 replicas"), "{log}");
}

#[test]
fn a_missing_model_fails_the_deploy_and_a_typo_changes_nothing() {
    let _serial = serial();
    let d = Daemon::start(&[]);
    let yaml = config(&[app(
        "broken",
        "/",
        &["    - model_loading_config: {model_id: m, model_source: /nonexistent/dir/model.gguf}\n      deployment_config: {ray_actor_options: {num_cpus: 0.5}}\n".to_string()],
    )]);
    d.deploy_ok(&yaml);
    d.wait_app("broken", "DEPLOY_FAILED", UP);
    let st = d.status();
    let app = &st["applications"]["broken"];
    let message = app["message"].as_str().unwrap();
    assert!(message.contains("/nonexistent/dir/model.gguf"), "{message}");
    assert_eq!(app["deployments"]["LLMServer:m"]["status"], "UNHEALTHY");
    assert!(app["deployments"]["LLMServer:m"]["message"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/dir/model.gguf"));
    let (code, body) = chat(&d.http, 4);
    assert_eq!(code, 404, "{body}");

    let before = d.details();
    let typo = yaml.replace(
        "deployment_config: {ray_actor_options",
        "deployment_config: {num_replica: 2, ray_actor_options",
    );
    let out = d.deploy(&typo);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("applications[0].args.llm_configs[0].deployment_config.num_replica"),
        "{err}"
    );
    let after = d.details();
    assert_eq!(
        before["applications"]["broken"]["last_deployed_time_s"],
        after["applications"]["broken"]["last_deployed_time_s"]
    );
    // The admin API refuses it too, naming the field.
    let v: Value = serde_yaml_ng::from_str(&typo).unwrap();
    let r = ureq::put(&format!("{}/api/serve/applications/", d.admin)).send_json(v);
    match r {
        Err(ureq::Error::Status(400, r)) => {
            let body = r.into_string().unwrap();
            assert!(body.contains("num_replica"), "{body}");
        }
        other => panic!("expected a 400, got {other:?}"),
    }
}

#[test]
fn half_gpus_share_one_device_and_a_third_waits_for_gpu() {
    let _serial = serial();
    let d = Daemon::start(&["--num-gpus", "1", "--num-cpus", "8"]);
    let half = "{ray_actor_options: {num_cpus: 0.5, num_gpus: 0.5}}";
    d.deploy_ok(&config(&[app(
        "g",
        "/",
        &[
            llm_config("m1", half),
            llm_config("m2", half),
            llm_config("m3", half),
        ],
    )]));
    let placed = |d: &Daemon| {
        let st = d.status();
        let deps = &st["applications"]["g"]["deployments"];
        ["LLMServer:m1", "LLMServer:m2", "LLMServer:m3"]
            .iter()
            .filter(|n| deps[**n]["replica_states"] == json!({"RUNNING": 1}))
            .count()
    };
    wait_until("two placed replicas", UP, || placed(&d) == 2);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(placed(&d), 2);
    let st = d.status();
    let app = &st["applications"]["g"];
    assert_eq!(app["status"], "DEPLOYING");
    let waiting: Vec<&Value> = ["LLMServer:m1", "LLMServer:m2", "LLMServer:m3"]
        .iter()
        .map(|n| &app["deployments"][*n])
        .filter(|dep| dep["replica_states"] != json!({"RUNNING": 1}))
        .collect();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0]["status"], "UPDATING");
    let message = waiting[0]["message"].as_str().unwrap();
    assert!(message.contains("not enough GPU"), "{message}");
    for pid in d.all_replica_pids() {
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let env: Vec<String> = env
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).to_string())
            .collect();
        for want in [
            "CUDA_VISIBLE_DEVICES=0",
            "LLM_SERVE_GPU_MEMORY_FRACTION=0.5",
            "OMP_NUM_THREADS=1",
        ] {
            assert!(env.iter().any(|e| e == want), "replica {pid} lacks {want}");
        }
    }
    let (code, _) = post(
        &format!("{}/v1/completions", d.http),
        &json!({"model": "m1", "prompt": "Hi", "max_tokens": 2}),
    );
    assert_eq!(code, 200);
}

#[test]
fn a_restarted_daemon_recovers_its_applications_and_leaves_no_strays() {
    let _serial = serial();
    let mut d = Daemon::start(&[]);
    d.deploy_ok(&one_app(
        "r",
        "/r",
        "{num_replicas: 2, ray_actor_options: {num_cpus: 0.5}}",
    ));
    d.wait_app("r", "RUNNING", UP);
    let deployed_at = d.status()["applications"]["r"]["last_deployed_time_s"].clone();
    let old_daemon = d.pid();
    let old = d.all_replica_pids();
    assert_eq!(old.len(), 2);
    kill(old_daemon, libc::SIGKILL);
    wait_until("the daemon to die", Duration::from_secs(10), || {
        !alive(old_daemon)
    });
    d.start_again();
    d.wait_app("r", "RUNNING", UP);
    let st = d.status();
    assert_eq!(
        st["applications"]["r"]["deployments"][SERVER]["replica_states"],
        json!({"RUNNING": 2})
    );
    assert_eq!(st["applications"]["r"]["last_deployed_time_s"], deployed_at);
    for p in &old {
        wait_until(
            "the old replicas to be gone",
            Duration::from_secs(10),
            || !alive(*p),
        );
    }
    let new = d.all_replica_pids();
    assert!(new.iter().all(|p| !old.contains(p)));
    // Every replica process on the machine for this app is one of the
    // new daemon's.
    let strays: Vec<u32> = replica_processes("r#LLMServer:smollm2#")
        .into_iter()
        .filter(|p| !new.contains(p))
        .collect();
    assert!(strays.is_empty(), "stray replicas: {strays:?}");
    let (code, body) = chat(&format!("{}/r", d.http), 4);
    assert_eq!(code, 200, "{body}");
}

#[test]
fn shutdown_and_run_stop_everything_they_started() {
    let _serial = serial();
    let mut d = Daemon::start(&[]);
    d.deploy_ok(&one_app("s", "/", "{ray_actor_options: {num_cpus: 0.5}}"));
    d.wait_app("s", "RUNNING", UP);
    let daemon = d.pid();
    let replicas = d.all_replica_pids();
    let out = d.shutdown();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!alive(daemon));
    for p in replicas {
        assert!(!alive(p), "replica {p} outlived shutdown");
    }
    // Shutdown deleted the applications: a new daemon on the same state
    // dir brings none back.
    d.start_again();
    assert_eq!(d.details()["applications"], json!({}));
    let out = d.shutdown();
    assert!(out.status.success());

    // `run` in the foreground: Ctrl-C tears everything down.
    let dir = d.state_dir.join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let http_port = common::free_port();
    let admin_port = common::free_port();
    let path = dir.join("run.yaml");
    std::fs::write(
        &path,
        format!(
            "http_options: {{host: 127.0.0.1, port: {http_port}}}\n{}",
            one_app("run", "/", "{ray_actor_options: {num_cpus: 0.5}}")
        ),
    )
    .unwrap();
    let log = dir.join("run.log");
    let mut child = std::process::Command::new(BIN)
        .args(["run", path.to_str().unwrap(), "--dashboard-port"])
        .arg(admin_port.to_string())
        .args(["--state-dir", dir.to_str().unwrap()])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{http_port}");
    wait_until("run to serve", UP, || chat(&base, 2).0 == 200);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("Running config file:"), "{text}");
    wait_until("run to report the deploy", Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("Deployed Serve app successfully.")
    });
    let details: Value = ureq::get(&format!(
        "http://127.0.0.1:{admin_port}/api/serve/applications/"
    ))
    .call()
    .unwrap()
    .into_json()
    .unwrap();
    let replica_pids: Vec<u32> = details["applications"]["run"]["deployments"][SERVER]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["pid"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(replica_pids.len(), 1);
    kill(child.id(), libc::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "run did not exit after SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("Got KeyboardInterrupt, shutting down..."),
        "{text}"
    );
    for p in replica_pids {
        assert!(!alive(p), "replica {p} outlived run");
    }
}

#[test]
fn proxy_timeouts_keep_alive_and_json_logs() {
    let _serial = serial();
    let d = Daemon::start(&["--request-timeout-s", "1", "--keep-alive-timeout-s", "1"]);
    let yaml = format!(
        "logging_config: {{encoding: JSON}}\n{}",
        one_app("j", "/", "{ray_actor_options: {num_cpus: 0.5}}")
    );
    d.deploy_ok(&yaml);
    d.wait_app("j", "RUNNING", UP);
    // A generation longer than the request timeout: 408.
    let started = Instant::now();
    let (code, body) = post(
        &format!("{}/v1/completions", d.http),
        &json!({"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": true}),
    );
    assert_eq!(code, 408, "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(body["error"]["code"], 408);
    // The timed-out request is cancelled on its replica.
    wait_until(
        "the cancelled request to leave the engine",
        Duration::from_secs(5),
        || {
            let (_, m) = get(&format!("{}/metrics", d.http));
            common::metric_value(&m, "llm_serve:num_requests_running") == 0.0
        },
    );
    // An idle keep-alive connection is closed after keep_alive_timeout_s.
    use std::io::{Read, Write};
    let addr = d.http.trim_start_matches("http://").to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /-/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let idle = Instant::now();
    let n = s.read(&mut buf).unwrap_or(usize::MAX);
    assert_eq!(n, 0, "the idle connection was not closed");
    assert!(idle.elapsed() < Duration::from_secs(4));
    // JSON logs: the controller's after the deploy, and the replica's.
    let det = d.details();
    let replica = &det["applications"]["j"]["deployments"][SERVER]["replicas"][0];
    let log = std::fs::read_to_string(replica["log_file_path"].as_str().unwrap()).unwrap();
    let line: Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    for key in ["levelname", "asctime", "deployment", "replica", "message"] {
        assert!(line.get(key).is_some(), "no {key} in {line}");
    }
    assert_eq!(line["replica"], replica["replica_id"]);
    assert_eq!(line["application"], "j");
    let access = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("GENERATE "))
        })
        .expect("a replica access line");
    assert!(access["request_id"].as_str().is_some());
    let proxy_log = det["proxies"].as_object().unwrap().values().next().unwrap()["log_file_path"]
        .as_str()
        .unwrap()
        .to_string();
    let proxy = std::fs::read_to_string(proxy_log).unwrap();
    let access = proxy
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("POST 408"))
        })
        .expect("a proxy access line for the timed-out request");
    assert_eq!(access["application"], "j");
    assert_eq!(access["route"], "/");
}

/// Pids of `llm-serve replica` processes whose replica id starts with
/// `prefix`.
fn replica_processes(prefix: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if args.iter().any(|a| a == "replica")
            && args.iter().any(|a| a.starts_with(prefix))
            && alive(pid)
        {
            out.push(pid);
        }
    }
    out
}
