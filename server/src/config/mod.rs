//! The deploy config: Ray Serve's `ServeDeploySchema` in YAML or JSON,
//! checked whole before anything changes (every error names the field's
//! path and what was expected), and built into applications of
//! deployments by `llm_serve:build_openai_app`.

pub mod build;
#[cfg(test)]
mod fuzz;
pub mod llm;
pub mod resolve;
pub mod schema;
mod unique_keys;

pub use build::AppPlan;
pub use resolve::DeploymentConfig;
pub use schema::ServeDeploySchema;

use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The longest time any setting may name (a year): beyond it the
/// controller's clocks would overflow.
pub const MAX_SECONDS: f64 = 31_536_000.0;

/// A setting in seconds as a duration, within `0..=MAX_SECONDS` (NaN is
/// 0), so no value can overflow a timer.
pub fn duration(seconds: f64) -> std::time::Duration {
    let s = if seconds.is_nan() {
        0.0
    } else {
        seconds.clamp(0.0, MAX_SECONDS)
    };
    std::time::Duration::from_secs_f64(s)
}

/// A config that cannot be taken: where, and what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// The field, e.g. `applications[0].args.llm_configs[1].engine_kwargs`.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        let path = path.into();
        ConfigError {
            path: if path.is_empty() {
                "(config)".into()
            } else {
                path
            },
            message: message.into(),
        }
    }
}

/// Reads `value` as a `T`; an error names the field's path under `base`.
pub fn from_value_at<T: DeserializeOwned>(value: Value, base: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (base.is_empty(), inner.as_str()) {
            (_, ".") => base.to_string(),
            (true, p) => p.to_string(),
            (false, p) if p.starts_with('[') => format!("{base}{p}"),
            (false, p) => format!("{base}.{p}"),
        };
        ConfigError::at(path, e.into_inner().to_string())
    })
}

/// Parses config text (YAML, of which JSON is a subset) into a value; a
/// key given twice in one mapping is an error naming it (YAML parsers
/// would silently keep the last one).
pub fn parse_text(text: &str) -> Result<Value, ConfigError> {
    parse_yaml(text).map_err(|(path, e)| ConfigError::at(path, e))
}

/// YAML or JSON text to a value, refusing duplicate keys; errors are the
/// path where it went wrong and what.
fn parse_yaml(text: &str) -> Result<Value, (String, String)> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    match serde_path_to_error::deserialize::<_, unique_keys::UniqueKeys>(de) {
        Ok(v) => Ok(v.0),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            if inner.starts_with(unique_keys::DUPLICATE) {
                Err((path, inner))
            } else {
                Err((
                    "(config)".into(),
                    format!("not valid YAML or JSON: {inner}"),
                ))
            }
        }
    }
}

/// Reads a YAML or JSON file named in a config; a relative path is taken
/// from `base_dir` when given.
fn read_file_value(file: &str, base_dir: Option<&Path>) -> Result<Value, String> {
    let path = resolve_path(file, base_dir);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_yaml(&text).map_err(|(at, e)| format!("{}: {at}: {e}", path.display()))
}

fn resolve_path(file: &str, base_dir: Option<&Path>) -> PathBuf {
    let p = PathBuf::from(file);
    match base_dir {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p,
    }
}

/// A checked config and what it builds.
#[derive(Clone, Debug)]
pub struct Checked {
    pub config: ServeDeploySchema,
    pub apps: Vec<AppPlan>,
    /// The config as given, with `llm_configs` files read in: what the
    /// admin API stores and `llm-serve config` prints.
    pub value: Value,
}

/// Checks a whole config and builds every application. `llm_configs`
/// file paths (relative ones from `base_dir`) are read into the config
/// first, so the checked config stands on its own.
pub fn check(mut value: Value, base_dir: Option<&Path>) -> Result<Checked, ConfigError> {
    if !value.is_object() {
        return Err(ConfigError::at(
            "(config)",
            "expected a mapping with `applications` (Ray Serve's multi-application config)",
        ));
    }
    inline_llm_config_files(&mut value, base_dir)?;
    let config: ServeDeploySchema = from_value_at(value.clone(), "")?;
    check_global(&config)?;
    let mut names = BTreeSet::new();
    let mut prefixes = BTreeSet::new();
    let mut apps = Vec::new();
    for (i, app) in config.applications.iter().enumerate() {
        let path = format!("applications[{i}]");
        if app.name.trim().is_empty() {
            return Err(ConfigError::at(
                format!("{path}.name"),
                "expected a non-empty application name",
            ));
        }
        if !names.insert(app.name.clone()) {
            return Err(ConfigError::at(
                format!("{path}.name"),
                format!("duplicate application name \"{}\"", app.name),
            ));
        }
        if let Some(prefix) = &app.route_prefix {
            check_route_prefix(prefix, &format!("{path}.route_prefix"))?;
            if !prefixes.insert(prefix.clone()) {
                return Err(ConfigError::at(
                    format!("{path}.route_prefix"),
                    format!("duplicate route prefix \"{prefix}\": each application needs its own"),
                ));
            }
        }
        apps.push(build::build_app(app, i)?);
    }
    Ok(Checked {
        config,
        apps,
        value,
    })
}

/// What may go wrong later although the config is valid: a model source
/// that is neither on this machine nor a Hugging Face id (its replicas
/// will fail to start unless it appears before they do).
pub fn warnings(checked: &Checked) -> Vec<String> {
    let mut out = Vec::new();
    for app in &checked.apps {
        for d in &app.deployments {
            let Some(m) = d.model() else { continue };
            if let Err(e) = llm_serve_models::ModelSource::parse(&m.model_source) {
                out.push(format!(
                    "application '{}', deployment '{}': model_source \"{}\" cannot be found here ({e}); its replicas will fail to start unless it appears",
                    app.name,
                    d.name(),
                    m.model_source
                ));
            }
        }
    }
    out
}

/// Replaces `llm_configs` entries that are file paths by the files'
/// contents.
fn inline_llm_config_files(value: &mut Value, base_dir: Option<&Path>) -> Result<(), ConfigError> {
    let Some(apps) = value.get_mut("applications").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    for (i, app) in apps.iter_mut().enumerate() {
        let Some(list) = app
            .pointer_mut("/args/llm_configs")
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for (j, entry) in list.iter_mut().enumerate() {
            if let Value::String(file) = entry {
                let v = read_file_value(file, base_dir).map_err(|m| {
                    ConfigError::at(format!("applications[{i}].args.llm_configs[{j}]"), m)
                })?;
                *entry = v;
            }
        }
    }
    Ok(())
}

fn check_global(c: &ServeDeploySchema) -> Result<(), ConfigError> {
    if let Some(t) = c.http_options.request_timeout_s {
        if !(t.is_finite() && t > 0.0 && t <= MAX_SECONDS) {
            return Err(ConfigError::at(
                "http_options.request_timeout_s",
                format!("expected a positive number of seconds up to {MAX_SECONDS}, got {t}"),
            ));
        }
    }
    let k = c.http_options.keep_alive_timeout_s;
    if !(0.0..=MAX_SECONDS).contains(&k) {
        return Err(ConfigError::at(
            "http_options.keep_alive_timeout_s",
            format!("expected a number of seconds from 0 to {MAX_SECONDS}, got {k}"),
        ));
    }
    if !c.grpc_options.grpc_servicer_functions.is_empty() {
        return Err(ConfigError::at(
            "grpc_options.grpc_servicer_functions",
            "a gRPC proxy is not supported yet: leave grpc_servicer_functions empty (the OpenAI API is HTTP)",
        ));
    }
    Ok(())
}

/// Ray Serve's rules for a route prefix: starts with `/`, no trailing `/`
/// (except `/` itself), no `{` or `}`; and ours: only characters a
/// request path can hold as they are (RFC 3986's), so every prefix can
/// be reached.
fn check_route_prefix(prefix: &str, path: &str) -> Result<(), ConfigError> {
    let path_char = |c: char| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/".contains(c);
    let problem = if !prefix.starts_with('/') {
        Some("must start with \"/\"".to_string())
    } else if prefix.len() > 1 && prefix.ends_with('/') {
        Some("must not end with \"/\" (unless it is \"/\")".to_string())
    } else if prefix.contains('{') || prefix.contains('}') {
        Some("must not contain \"{\" or \"}\"".to_string())
    } else {
        prefix.chars().find(|&c| !path_char(c)).map(|c| {
            format!(
                "holds {c:?}, which a request path cannot carry as it is: use letters, digits and -._~!$&'()*+,;=:@/ only"
            )
        })
    };
    match problem {
        Some(p) => Err(ConfigError::at(
            path,
            format!("route prefix \"{prefix}\" {p}"),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
