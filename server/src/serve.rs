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
    Ok(json!({
        "proxy_location": "EveryNode",
        "http_options": {"host": args.host, "port": args.port},
        "applications": [{
            "name": "default",
            "route_prefix": "/",
            "import_path": crate::config::build::BUILDER_IMPORT_PATHS[0],
            "args": {"llm_configs": [{
                "model_loading_config": {"model_id": served, "model_source": args.model},
                "engine_kwargs": kwargs,
                "deployment_config": {
                    "num_replicas": 1,
                    "graceful_shutdown_timeout_s": args.graceful_shutdown_timeout_s.max(0.0),
                    "ray_actor_options": {"num_cpus": threads},
                },
            }]},
        }],
    }))
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
