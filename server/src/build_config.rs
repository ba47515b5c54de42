//! `llm-serve build` (a deploy config for some models, every default
//! written out, as `serve build` writes one) and `llm-serve check` (a
//! config checked the way `deploy` will check it).

use crate::cli::{BuildArgs, CheckArgs};
use crate::config::llm::LoraConfig;
use crate::config::{self, build, ServeDeploySchema};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::path::Path;

pub fn build(args: BuildArgs) -> Result<()> {
    let mut llm_configs = Vec::new();
    for m in &args.models {
        let (id, source) = match m.split_once('=') {
            Some((id, source)) if !id.is_empty() && !source.is_empty() => {
                (id.to_string(), source.to_string())
            }
            _ => (model_id_of(m), m.clone()),
        };
        let mut llm_config = json!({
            "model_loading_config": {"model_id": id, "model_source": source},
            "engine_kwargs": {},
            "deployment_config": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 1}},
        });
        if let Some(dir) = &args.lora_dir {
            // Ray Serve LLM's lora_config, every default written out.
            llm_config["lora_config"] = serde_json::to_value(LoraConfig {
                dynamic_lora_loading_path: Some(dir.clone()),
                ..LoraConfig::with_capacity(args.max_num_adapters_per_replica)
            })?;
        }
        llm_configs.push(llm_config);
    }
    let app = json!({
        "name": args.name,
        "route_prefix": args.route_prefix,
        "import_path": build::BUILDER_IMPORT_PATHS[0],
        "runtime_env": {},
        "args": {"llm_configs": llm_configs},
    });
    let mut value = serde_json::to_value(ServeDeploySchema::default())?;
    value["applications"] = json!([app]);
    // Check it as `deploy` would, and list the deployments it makes.
    let checked = config::check(value.clone(), None)?;
    let names: Vec<Value> = checked.apps[0]
        .deployments
        .iter()
        .map(|d| json!({"name": d.name()}))
        .collect();
    value["applications"][0]["deployments"] = Value::Array(names);
    let yaml = serde_yaml_ng::to_string(&value).context("cannot write the config as YAML")?;
    match &args.output_path {
        Some(path) => std::fs::write(path, yaml)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{yaml}"),
    }
    Ok(())
}

pub fn check(args: CheckArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read {}", args.config.display()))?;
    let base_dir = args.config.parent().filter(|p| !p.as_os_str().is_empty());
    let checked = config::check(config::parse_text(&text)?, base_dir)
        .with_context(|| format!("{} is not a valid deploy config", args.config.display()))?;
    for warning in config::warnings(&checked) {
        eprintln!("warning: {warning}");
    }
    let http = &checked.config.http_options;
    println!(
        "proxy {} on {}:{}",
        checked.config.proxy_location.as_str(),
        http.host,
        http.port
    );
    for app in &checked.apps {
        let prefix = app.route_prefix.as_deref().unwrap_or("(no route)");
        println!("application {} at {prefix}:", app.name);
        for d in &app.deployments {
            let replicas = match (&d.config.autoscaling_config, d.config.num_replicas) {
                (Some(a), _) => format!("autoscaling {}..{}", a.min_replicas, a.max_replicas),
                (None, _) => format!("{} replica(s)", d.config.initial_replicas()),
            };
            match d.model() {
                Some(m) => println!(
                    "  {}: model {} from {}, {replicas}",
                    d.name(),
                    m.model_id,
                    m.model_source
                ),
                None => println!("  {}: the OpenAI router (in the proxy)", d.name()),
            }
        }
    }
    Ok(())
}

/// The id clients would send for a model source: a hub id as is, a
/// file's stem, a directory's name.
fn model_id_of(source: &str) -> String {
    let path = Path::new(source);
    if path.exists() {
        let stem = if path.is_file() {
            path.file_stem()
        } else {
            path.file_name()
        };
        if let Some(s) = stem.and_then(|s| s.to_str()) {
            return s.to_string();
        }
    }
    source.to_string()
}
