//! Fuzz targets for the deploy-config parser: arbitrary text, and configs
//! made of the schema's real field names at every level with values of
//! every wrong type and range, through `parse_text` and `check`, and the
//! plans that pass through what the controller derives from them (timers,
//! resource requests). Nothing may panic; every refusal names a path.

use super::{check, duration, parse_text, Checked};
use crate::resources::{replica_memory, MemoryAsk};
use llm_serve_router::fuzzing::fuzz_for;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Map, Value};

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![
            Just(json!(0)),
            Just(json!(-1)),
            Just(json!(1)),
            Just(json!(0.5)),
            Just(json!(1.5)),
            Just(json!(1e300)),
            Just(json!(4_294_967_296u64)),
            Just(json!(u64::MAX)),
            Just(json!("auto")),
        ],
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        ".{0,10}".prop_map(Value::String),
        prop_oneof![
            Just("/"),
            Just("/a"),
            Just("/a b"),
            Just("a/"),
            Just("llm_serve:build_openai_app"),
            Just("default"),
            Just("JSON"),
            Just("TEXT"),
            Just("DEBUG"),
            Just("EveryNode"),
        ]
        .prop_map(|s| Value::String(s.into())),
    ]
}

/// An object of some of `fields` (and a stray key) with values from `v`.
fn object(
    fields: &'static [&'static str],
    v: impl Strategy<Value = Value>,
) -> impl Strategy<Value = Value> {
    prop::collection::vec(
        (
            prop_oneof![
                4 => prop::sample::select(fields).prop_map(str::to_string),
                1 => ".{0,5}".prop_map(String::from),
            ],
            v,
        ),
        0..fields.len().min(8) + 1,
    )
    .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>()))
}

const ACTOR: &[&str] = &[
    "num_cpus",
    "num_gpus",
    "memory",
    "resources",
    "accelerator_type",
    "runtime_env",
    "object_store_memory",
];
const AUTOSCALING: &[&str] = &[
    "min_replicas",
    "max_replicas",
    "initial_replicas",
    "target_ongoing_requests",
    "upscale_delay_s",
    "downscale_delay_s",
    "metrics_interval_s",
    "look_back_period_s",
    "upscaling_factor",
    "downscaling_factor",
];
const DEPLOYMENT: &[&str] = &[
    "name",
    "num_replicas",
    "max_ongoing_requests",
    "max_queued_requests",
    "user_config",
    "graceful_shutdown_wait_loop_s",
    "graceful_shutdown_timeout_s",
    "health_check_period_s",
    "health_check_timeout_s",
    "max_replicas_per_node",
    "logging_config",
];
const ENGINE: &[&str] = &[
    "block_size",
    "kv_cache_memory_bytes",
    "kv_cache_memory_fraction",
    "max_num_seqs",
    "max_num_batched_tokens",
    "max_model_len",
    "enable_chunked_prefill",
    "enable_prefix_caching",
    "scheduling_policy",
];

fn deployment_config() -> impl Strategy<Value = Value> {
    (
        object(DEPLOYMENT, scalar()),
        prop::option::of(object(ACTOR, scalar())),
        prop::option::of(object(AUTOSCALING, scalar())),
    )
        .prop_map(|(mut d, actor, auto)| {
            if let Some(a) = actor {
                d["ray_actor_options"] = a;
            }
            if let Some(a) = auto {
                d["autoscaling_config"] = a;
            }
            d
        })
}

fn llm_config() -> impl Strategy<Value = Value> {
    (
        prop::option::of(scalar()),
        prop::option::of(scalar()),
        object(ENGINE, scalar()),
        deployment_config(),
        prop::option::of(object(&["env_vars", "pip"], object(&["A", "B"], scalar()))),
    )
        .prop_map(|(id, source, engine, deployment, runtime_env)| {
            let mut c = json!({
                "model_loading_config": {"model_id": id.unwrap_or(json!("m"))},
                "engine_kwargs": engine,
                "deployment_config": deployment,
            });
            if let Some(s) = source {
                c["model_loading_config"]["model_source"] = s;
            }
            if let Some(r) = runtime_env {
                c["runtime_env"] = r;
            }
            c
        })
}

fn application() -> impl Strategy<Value = Value> {
    (
        prop::option::of(scalar()),
        prop::option::of(scalar()),
        prop::collection::vec(llm_config(), 0..3),
        prop::collection::vec(deployment_config(), 0..2),
        any::<bool>(),
    )
        .prop_map(|(name, prefix, llm_configs, deployments, builder)| {
            let mut a = json!({
                "import_path": if builder { "llm_serve:build_openai_app" } else { "x:y" },
                "args": {"llm_configs": llm_configs},
                "deployments": deployments,
            });
            if let Some(n) = name {
                a["name"] = n;
            }
            if let Some(p) = prefix {
                a["route_prefix"] = p;
            }
            a
        })
}

fn deploy_config() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(application(), 0..3),
        prop::option::of(object(
            &["host", "port", "request_timeout_s", "keep_alive_timeout_s"],
            scalar(),
        )),
        prop::option::of(object(
            &["encoding", "log_level", "enable_access_log"],
            scalar(),
        )),
        prop::option::of(scalar()),
    )
        .prop_map(|(apps, http, logging, proxy)| {
            let mut c = json!({"applications": apps});
            if let Some(h) = http {
                c["http_options"] = h;
            }
            if let Some(l) = logging {
                c["logging_config"] = l;
            }
            if let Some(p) = proxy {
                c["proxy_location"] = p;
            }
            c
        })
}

/// What the controller derives from an accepted config must not panic
/// either: its timers and each replica's memory share.
fn use_plans(c: &Checked) {
    for app in &c.apps {
        for d in &app.deployments {
            let cfg = &d.config;
            for s in [
                cfg.health_check_period_s,
                cfg.health_check_timeout_s,
                cfg.graceful_shutdown_wait_loop_s,
                cfg.graceful_shutdown_timeout_s,
            ] {
                let _ = std::time::Instant::now() + duration(s);
            }
            if let Some(m) = d.model() {
                let engine = llm_serve_engine::EngineConfig::from_kwargs(&Value::Object(
                    m.engine_kwargs.clone(),
                ));
                if let Ok(e) = engine {
                    let _ = replica_memory(&MemoryAsk {
                        actor_memory_bytes: cfg.ray_actor_options.memory,
                        weights_bytes: 1 << 27,
                        kv_cache_memory_bytes: e.kv_cache_memory_bytes.map(|b| b as u64),
                        kv_cache_memory_fraction: e.kv_cache_memory_fraction,
                        node_memory_bytes: 24e9,
                    });
                }
            }
        }
    }
    if let Some(t) = c.config.http_options.request_timeout_s {
        let _ = std::time::Instant::now() + duration(t);
    }
}

fn run(text: &str) -> Result<(), TestCaseError> {
    match parse_text(text).and_then(|v| check(v, None)) {
        Ok(c) => use_plans(&c),
        Err(e) => {
            prop_assert!(!e.path.is_empty() && !e.message.is_empty(), "{e:?}");
        }
    }
    Ok(())
}

#[test]
fn arbitrary_text_never_panics() {
    fuzz_for("config text", ".{0,200}", |text| run(&text));
}

#[test]
fn structured_but_wrong_configs_never_panic() {
    fuzz_for("config structure", deploy_config(), |config| {
        run(&config.to_string())?;
        let yaml =
            serde_yaml_ng::to_string(&config).map_err(|e| TestCaseError::fail(e.to_string()))?;
        run(&yaml)
    });
}
