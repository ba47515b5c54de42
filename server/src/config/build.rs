//! The application builder `llm_serve:build_openai_app`: turns an
//! application entry's `args.llm_configs` into deployments — one
//! `LLMRouter` (the OpenAI ingress, which runs inside the proxy) and one
//! `LLMServer:<model_id>` per model (engine replicas) — with each
//! deployment's settings resolved by Serve's precedence.

use super::llm::{LlmConfig, LoraConfig, ENGINE_NAMES};
use super::resolve::{self, DeploymentConfig};
use super::schema::{ApplicationSchema, DeploymentOptions, NumReplicas};
use super::{from_value_at, ConfigError};
use llm_serve_engine::adapters::{check_adapter_name, AdapterLocation, REMOTE_NOT_YET};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The import paths that name this builder (Ray's own is accepted so a
/// Ray Serve LLM config loads unchanged).
pub const BUILDER_IMPORT_PATHS: [&str; 2] = [
    "llm_serve:build_openai_app",
    "ray.serve.llm:build_openai_app",
];
/// The ingress deployment's name.
pub const ROUTER_DEPLOYMENT: &str = "LLMRouter";
/// Prefix of the engine deployments' names.
pub const SERVER_PREFIX: &str = "LLMServer:";

/// What an engine replica runs: the part of a deployment whose change
/// means new replicas (a code update, in Serve's words).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub model_id: String,
    pub model_source: String,
    pub tokenizer_source: Option<String>,
    pub engine_kwargs: Map<String, Value>,
    pub accelerator_type: Option<String>,
    /// How the replicas serve LoRA adapters (`None`: they serve none).
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// `runtime_env.env_vars` of the application and the LLM config (the
    /// latter wins), set in each replica's environment.
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
// One per deployment plan: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum DeploymentKind {
    /// The OpenAI ingress, hosted by the proxy.
    Router { models: Vec<String> },
    /// Engine replicas serving one model.
    LlmServer(ModelSpec),
}

/// One deployment of a built application.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploymentPlan {
    pub config: DeploymentConfig,
    pub kind: DeploymentKind,
    /// The application's import path and runtime env, part of the code.
    pub app_code: String,
}

impl DeploymentPlan {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Everything whose change restarts replicas, as one comparable string
    /// (the controller's test for a code update against a lightweight one).
    pub fn code_version(&self) -> String {
        let code = serde_json::json!({
            "kind": self.kind,
            "app": self.app_code,
            "ray_actor_options": self.config.ray_actor_options,
            "placement_group_bundles": self.config.placement_group_bundles,
            "placement_group_strategy": self.config.placement_group_strategy,
        });
        code.to_string()
    }

    pub fn model(&self) -> Option<&ModelSpec> {
        match &self.kind {
            DeploymentKind::LlmServer(m) => Some(m),
            DeploymentKind::Router { .. } => None,
        }
    }
}

/// A built application.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppPlan {
    pub name: String,
    pub route_prefix: Option<String>,
    pub ingress: String,
    pub deployments: Vec<DeploymentPlan>,
}

/// `model_id` as a deployment name: Ray LLM's mangling (`/` → `--`,
/// `.` → `_`).
pub fn mangle(model_id: &str) -> String {
    model_id.replace('/', "--").replace('.', "_")
}

/// Builds application `index` of the config (its `llm_configs` files
/// already read in).
pub fn build_app(app: &ApplicationSchema, index: usize) -> Result<AppPlan, ConfigError> {
    let path = format!("applications[{index}]");
    if !BUILDER_IMPORT_PATHS.contains(&app.import_path.as_str()) {
        return Err(ConfigError::at(
            format!("{path}.import_path"),
            format!(
                "expected \"llm_serve:build_openai_app\" (the only application builder), got \"{}\"",
                app.import_path
            ),
        ));
    }
    let configs = llm_configs(&app.args, &format!("{path}.args"))?;
    let app_env = runtime_env_vars(&app.runtime_env, &format!("{path}.runtime_env"))?;
    let app_code =
        serde_json::json!({"import_path": app.import_path, "runtime_env": app.runtime_env})
            .to_string();
    let mut built = Vec::new();
    let mut models = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let cpath = format!("{path}.args.llm_configs[{i}]");
        let mut spec = model_spec(c, &cpath)?;
        let mut env = app_env.clone();
        if let Some(r) = &c.runtime_env {
            env.extend(runtime_env_vars(r, &format!("{cpath}.runtime_env"))?);
        }
        spec.env_vars = env;
        if let Some(r) = c
            .deployment_config
            .ray_actor_options
            .as_ref()
            .and_then(|o| o.runtime_env.as_ref())
        {
            runtime_env_vars(
                r,
                &format!("{cpath}.deployment_config.ray_actor_options.runtime_env"),
            )?;
        }
        if models.contains(&spec.model_id) {
            return Err(ConfigError::at(
                format!("{cpath}.model_loading_config.model_id"),
                format!(
                    "duplicate model id \"{}\": model ids must be unique within an application",
                    spec.model_id
                ),
            ));
        }
        resolve::validate(&c.deployment_config, &format!("{cpath}.deployment_config"))?;
        let name = format!(
            "{SERVER_PREFIX}{}",
            c.deployment_config
                .name
                .clone()
                .unwrap_or_else(|| mangle(&spec.model_id))
        );
        models.push(spec.model_id.clone());
        let code = c.deployment_config.clone();
        built.push((
            name,
            llm_server_defaults(),
            code,
            DeploymentKind::LlmServer(spec),
        ));
    }
    let router_code = DeploymentOptions::default();
    built.insert(
        0,
        (
            ROUTER_DEPLOYMENT.to_string(),
            router_defaults(),
            router_code,
            DeploymentKind::Router { models },
        ),
    );
    for (j, o) in app.deployments.iter().enumerate() {
        let dpath = format!("{path}.deployments[{j}]");
        let Some(name) = &o.name else {
            return Err(ConfigError::at(
                format!("{dpath}.name"),
                "expected the name of a deployment of the application",
            ));
        };
        if !built.iter().any(|b| &b.0 == name) {
            let names: Vec<&str> = built.iter().map(|b| b.0.as_str()).collect();
            return Err(ConfigError::at(
                format!("{dpath}.name"),
                format!(
                    "application \"{}\" has no deployment \"{name}\"; its deployments are {}",
                    app.name,
                    names.join(", ")
                ),
            ));
        }
        if app.deployments[..j]
            .iter()
            .any(|p| p.name.as_ref() == Some(name))
        {
            return Err(ConfigError::at(
                format!("{dpath}.name"),
                format!("deployment \"{name}\" is listed twice"),
            ));
        }
        resolve::validate(o, &dpath)?;
        if let Some(r) = o
            .ray_actor_options
            .as_ref()
            .and_then(|a| a.runtime_env.as_ref())
        {
            runtime_env_vars(r, &format!("{dpath}.ray_actor_options.runtime_env"))?;
        }
    }
    let deployments = built
        .into_iter()
        .map(|(name, defaults, code, kind)| {
            let over = app
                .deployments
                .iter()
                .find(|o| o.name.as_ref() == Some(&name));
            let mut layers: Vec<&DeploymentOptions> = vec![&defaults, &code];
            if let Some(o) = over {
                layers.push(o);
            }
            let mut merged = resolve::merge(&layers);
            if merged.logging_config.is_none() {
                merged.logging_config = app.logging_config.clone();
            }
            let mut config = resolve::resolve(&name, &merged);
            if let DeploymentKind::LlmServer(spec) = &kind {
                if config.ray_actor_options.accelerator_type.is_none() {
                    config.ray_actor_options.accelerator_type = spec.accelerator_type.clone();
                }
            }
            DeploymentPlan {
                config,
                kind,
                app_code: app_code.clone(),
            }
        })
        .collect();
    Ok(AppPlan {
        name: app.name.clone(),
        route_prefix: app.route_prefix.clone(),
        ingress: ROUTER_DEPLOYMENT.to_string(),
        deployments,
    })
}

/// The environment variables a `runtime_env` sets. `env_vars` (names to
/// strings) is the one field that applies to a replica process; Python
/// packaging fields (`pip`, `conda`, `working_dir`, ...) have nothing to
/// act on, so they are refused rather than silently ignored.
pub fn runtime_env_vars(
    env: &Map<String, Value>,
    path: &str,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for (key, value) in env {
        if key != "env_vars" {
            return Err(ConfigError::at(
                format!("{path}.{key}"),
                "not supported: replicas are native processes, so only runtime_env.env_vars applies",
            ));
        }
        let Some(vars) = value.as_object() else {
            return Err(ConfigError::at(
                format!("{path}.env_vars"),
                "expected a mapping of variable names to strings",
            ));
        };
        for (name, v) in vars {
            let valid_name = !name.is_empty()
                && !name.contains('=')
                && !name.contains('\0')
                && !name.starts_with("LLM_SERVE_");
            if !valid_name {
                return Err(ConfigError::at(
                    format!("{path}.env_vars.{name}"),
                    "expected a variable name without `=` (names starting with LLM_SERVE_ are set by llm-serve itself)",
                ));
            }
            match v {
                Value::String(text) if !text.contains('\0') => {
                    out.insert(name.clone(), text.clone());
                }
                _ => {
                    return Err(ConfigError::at(
                        format!("{path}.env_vars.{name}"),
                        format!("expected a string, got {v}"),
                    ))
                }
            }
        }
    }
    Ok(out)
}

/// Ray Serve LLM's defaults for engine deployments: the engine queues,
/// so replicas take every request the router sends.
fn llm_server_defaults() -> DeploymentOptions {
    DeploymentOptions {
        max_ongoing_requests: Some(1_000_000_000),
        health_check_period_s: Some(10.0),
        health_check_timeout_s: Some(10.0),
        ..Default::default()
    }
}

fn router_defaults() -> DeploymentOptions {
    DeploymentOptions {
        num_replicas: Some(NumReplicas::Count(1)),
        max_ongoing_requests: Some(1_000_000_000),
        ..Default::default()
    }
}

/// `args.llm_configs`: a non-empty list of LLM configs.
fn llm_configs(args: &Map<String, Value>, path: &str) -> Result<Vec<LlmConfig>, ConfigError> {
    for key in args.keys() {
        if key != "llm_configs" {
            return Err(ConfigError::at(
                format!("{path}.{key}"),
                "unknown argument of build_openai_app (expected llm_configs)",
            ));
        }
    }
    let list = match args.get("llm_configs") {
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(Value::Array(_)) => {
            return Err(ConfigError::at(
                format!("{path}.llm_configs"),
                "expected at least one LLM config",
            ));
        }
        Some(_) => {
            return Err(ConfigError::at(
                format!("{path}.llm_configs"),
                "expected a list of LLM configs (objects or YAML file paths)",
            ))
        }
        None => {
            return Err(ConfigError::at(
                format!("{path}.llm_configs"),
                "missing field (a list of LLM configs)",
            ))
        }
    };
    list.iter()
        .enumerate()
        .map(|(i, v)| from_value_at(v.clone(), &format!("{path}.llm_configs[{i}]")))
        .collect()
}

fn model_spec(c: &LlmConfig, path: &str) -> Result<ModelSpec, ConfigError> {
    let m = &c.model_loading_config;
    if m.model_id.trim().is_empty() {
        return Err(ConfigError::at(
            format!("{path}.model_loading_config.model_id"),
            "expected a non-empty model id",
        ));
    }
    let model_source = match &m.model_source {
        None | Some(Value::Null) => m.model_id.clone(),
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::Object(_)) => return Err(ConfigError::at(
            format!("{path}.model_loading_config.model_source"),
            "cloud mirrors (bucket_uri) are not supported: give a local path or a Hugging Face id",
        )),
        Some(_) => {
            return Err(ConfigError::at(
                format!("{path}.model_loading_config.model_source"),
                "expected a local path or a Hugging Face id",
            ))
        }
    };
    if let Some(t) = &m.tokenizer_source {
        if t != &model_source && t != &m.model_id {
            return Err(ConfigError::at(
                format!("{path}.model_loading_config.tokenizer_source"),
                format!("a tokenizer from another source than the model (\"{t}\") is not supported yet: the tokenizer comes with the model; leave tokenizer_source out"),
            ));
        }
    }
    if let Some(engine) = &c.llm_engine {
        if !ENGINE_NAMES.iter().any(|n| n.eq_ignore_ascii_case(engine)) {
            return Err(ConfigError::at(
                format!("{path}.llm_engine"),
                format!("unsupported engine \"{engine}\" (this server has one engine; leave llm_engine out)"),
            ));
        }
    }
    if c.placement_group_config.is_some() {
        return Err(ConfigError::at(
            format!("{path}.placement_group_config"),
            "placement groups are not supported: a replica is one process; use deployment_config.ray_actor_options",
        ));
    }
    for forbidden in ["model", "served_model_name"] {
        if c.engine_kwargs.contains_key(forbidden) {
            return Err(ConfigError::at(
                format!("{path}.engine_kwargs.{forbidden}"),
                "set the model through model_loading_config, not engine_kwargs",
            ));
        }
    }
    let engine =
        llm_serve_engine::EngineConfig::from_kwargs(&Value::Object(c.engine_kwargs.clone()))
            .map_err(|e| ConfigError::at(format!("{path}.engine_kwargs"), e.to_string()))?;
    let lora = lora_of(c, &engine, path)?;
    Ok(ModelSpec {
        model_id: m.model_id.clone(),
        model_source,
        tokenizer_source: m.tokenizer_source.clone(),
        engine_kwargs: c.engine_kwargs.clone(),
        accelerator_type: c.accelerator_type.clone(),
        lora,
        env_vars: BTreeMap::new(),
    })
}

/// How the model serves adapters: its `lora_config`, checked, or Ray's
/// defaults when only `engine_kwargs.enable_lora` asks for LoRA.
fn lora_of(
    c: &LlmConfig,
    engine: &llm_serve_engine::EngineConfig,
    path: &str,
) -> Result<Option<LoraConfig>, ConfigError> {
    let at = |field: &str| format!("{path}.{field}");
    engine
        .validate_lora()
        .map_err(|e| ConfigError::at(at("engine_kwargs"), e.to_string()))?;
    let Some(l) = &c.lora_config else {
        let lora = (engine.enable_lora || engine.max_loaded_adapters().is_some()).then(|| {
            LoraConfig::with_capacity(
                engine
                    .max_loaded_adapters()
                    .map_or(super::llm::default_max_adapters(), |n| {
                        u32::try_from(n).unwrap_or(u32::MAX)
                    }),
            )
        });
        return Ok(lora);
    };
    let mut l = l.clone();
    if l.max_num_adapters_per_replica == 0 {
        return Err(ConfigError::at(
            at("lora_config.max_num_adapters_per_replica"),
            "expected a positive integer",
        ));
    }
    if let Some(n) = engine.max_loaded_adapters() {
        if n != l.max_num_adapters_per_replica as usize {
            return Err(ConfigError::at(
                at("engine_kwargs.max_loras"),
                format!(
                    "max_loras / max_cpu_loras ({n}) must equal lora_config.max_num_adapters_per_replica ({}), as Ray Serve LLM asks; leave them out to use max_num_adapters_per_replica",
                    l.max_num_adapters_per_replica
                ),
            ));
        }
    }
    if l.max_download_tries == 0 {
        return Err(ConfigError::at(
            at("lora_config.max_download_tries"),
            "expected a positive integer",
        ));
    }
    match l.download_timeout_s {
        Some(t) if !t.is_finite() => {
            return Err(ConfigError::at(
                at("lora_config.download_timeout_s"),
                "expected a finite number of seconds",
            ))
        }
        Some(t) if t <= 0.0 => l.download_timeout_s = None,
        Some(t) if t > super::MAX_SECONDS => {
            return Err(ConfigError::at(
                at("lora_config.download_timeout_s"),
                format!("expected at most {} seconds", super::MAX_SECONDS),
            ))
        }
        _ => {}
    }
    let local = |field: &str, source: &str| -> Result<(), ConfigError> {
        match AdapterLocation::parse(source) {
            Ok(AdapterLocation::Local(_)) => Ok(()),
            Ok(AdapterLocation::Remote(_)) => Err(ConfigError::at(at(field), REMOTE_NOT_YET)),
            Err(e) => Err(ConfigError::at(at(field), e.to_string())),
        }
    };
    if let Some(p) = &l.dynamic_lora_loading_path {
        local("lora_config.dynamic_lora_loading_path", p)?;
        l.dynamic_lora_loading_path = Some(p.trim().trim_end_matches('/').to_string());
    }
    for (name, source) in &l.lora_modules {
        let field = format!("lora_config.lora_modules.{name}");
        check_adapter_name(name).map_err(|e| ConfigError::at(at(&field), e.to_string()))?;
        local(&field, source)?;
    }
    Ok(Some(l))
}
