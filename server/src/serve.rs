//! `llm-serve serve --model X`: sugar for `run` on a one-application
//! deploy config made from the flags (one code path: the controller, the
//! proxy and one engine replica process, supervised, restarted if it
//! dies). `--print-config` shows the config instead of running it.

use crate::cli::ServeArgs;
use crate::config::schema::{GrpcOptions, HttpOptions, ProxyLocation};
use crate::daemon;
use anyhow::{Context, Result};
use serde_json::{json, Value};

/// The deploy config `serve` runs.
pub fn config_of(args: &ServeArgs) -> Result<Value> {
    let kwargs = crate::engine_kwargs::engine_kwargs(&args.engine)?;
    let served = args
        .served_model_name
        .clone()
        .unwrap_or_else(|| args.model.clone());
    let threads = args
        .engine
        .threads
        .map(|t| t as f64)
        .or(args.daemon.num_cpus)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()) as f64);
    let mut llm_config = json!({
        "model_loading_config": {"model_id": served, "model_source": args.model},
        "engine_kwargs": kwargs,
        "deployment_config": {
            "num_replicas": 1,
            "graceful_shutdown_timeout_s": args.graceful_shutdown_timeout_s.max(0.0),
            "ray_actor_options": {"num_cpus": threads},
        },
    });
    if let Some(lora) = lora_config(args)? {
        llm_config["lora_config"] = lora;
    }
    Ok(json!({
        "proxy_location": "EveryNode",
        "http_options": {"host": args.host, "port": args.port},
        "applications": [{
            "name": "default",
            "route_prefix": "/",
            "import_path": crate::config::build::BUILDER_IMPORT_PATHS[0],
            "args": {"llm_configs": [llm_config]},
        }],
    }))
}

/// The `lora_config` the LoRA flags describe, if any is given.
fn lora_config(args: &ServeArgs) -> Result<Option<Value>> {
    if args.lora_dir.is_none()
        && args.max_num_adapters_per_replica.is_none()
        && args.lora_modules.is_empty()
    {
        return Ok(None);
    }
    let mut lora = serde_json::Map::new();
    if let Some(d) = &args.lora_dir {
        lora.insert("dynamic_lora_loading_path".into(), d.clone().into());
    }
    if let Some(n) = args.max_num_adapters_per_replica {
        lora.insert("max_num_adapters_per_replica".into(), n.into());
    }
    let mut modules = serde_json::Map::new();
    for m in &args.lora_modules {
        let (name, path) = lora_module(m)?;
        modules.insert(name, path.into());
    }
    if !modules.is_empty() {
        lora.insert("lora_modules".into(), Value::Object(modules));
    }
    Ok(Some(Value::Object(lora)))
}

/// One `--lora-modules` entry: `name=path`, or vLLM's JSON object.
fn lora_module(text: &str) -> Result<(String, String)> {
    if text.trim_start().starts_with('{') {
        let v: Value = serde_json::from_str(text)
            .with_context(|| format!("--lora-modules: {text} is not valid JSON"))?;
        let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        return match (field("name"), field("path")) {
            (Some(n), Some(p)) => Ok((n, p)),
            _ => anyhow::bail!("--lora-modules: {text} needs \"name\" and \"path\" strings"),
        };
    }
    match text.split_once('=') {
        Some((n, p)) if !n.is_empty() && !p.is_empty() => Ok((n.to_string(), p.to_string())),
        _ => anyhow::bail!("--lora-modules: expected name=path, got {text:?}"),
    }
}

pub fn run(args: ServeArgs) -> Result<()> {
    let value = config_of(&args)?;
    let checked =
        crate::config::check(value, None).context("the serve flags make no valid config")?;
    if args.print_config {
        print!("{}", serde_yaml_ng::to_string(&checked.value)?);
        return Ok(());
    }
    let http = HttpOptions {
        host: args.host.clone(),
        port: args.port,
        ..HttpOptions::default()
    };
    let mut s = crate::start::settings(
        &args.daemon,
        http,
        GrpcOptions::default(),
        ProxyLocation::EveryNode,
    )?;
    s.shutdown_grace = crate::config::duration(args.graceful_shutdown_timeout_s)
        + std::time::Duration::from_secs(5);
    crate::start::runtime()?.block_on(daemon::run(s, Some(checked), None))
}
