//! Ray Serve's deploy config (`ServeDeploySchema` and the schemas inside
//! it) as users write it: every field Ray Serve documents, with its
//! default, unknown fields refused. Deployment options stay optional here
//! so the builder can tell what each layer set (see `resolve`).

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// The whole config: what `deploy` sends and the admin API stores.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeDeploySchema {
    #[serde(default)]
    pub proxy_location: ProxyLocation,
    #[serde(default)]
    pub http_options: HttpOptions,
    #[serde(default)]
    pub grpc_options: GrpcOptions,
    #[serde(default)]
    pub logging_config: LoggingConfig,
    #[serde(default)]
    pub applications: Vec<ApplicationSchema>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProxyLocation {
    Disabled,
    HeadOnly,
    #[default]
    EveryNode,
}

impl ProxyLocation {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyLocation::Disabled => "Disabled",
            ProxyLocation::HeadOnly => "HeadOnly",
            ProxyLocation::EveryNode => "EveryNode",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpOptions {
    pub host: String,
    pub port: u16,
    pub root_path: String,
    pub request_timeout_s: Option<f64>,
    pub keep_alive_timeout_s: f64,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            host: "0.0.0.0".into(),
            port: 8000,
            root_path: String::new(),
            request_timeout_s: None,
            keep_alive_timeout_s: 5.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcOptions {
    pub port: u16,
    pub grpc_servicer_functions: Vec<String>,
    pub request_timeout_s: Option<f64>,
}

impl Default for GrpcOptions {
    fn default() -> Self {
        GrpcOptions {
            port: 9000,
            grpc_servicer_functions: Vec::new(),
            request_timeout_s: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    #[default]
    #[serde(rename = "TEXT", alias = "text")]
    Text,
    #[serde(rename = "JSON", alias = "json")]
    Json,
}

/// Python logging's level names, as Ray Serve takes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    #[serde(rename = "DEBUG", alias = "debug")]
    Debug,
    #[default]
    #[serde(rename = "INFO", alias = "info")]
    Info,
    #[serde(rename = "WARNING", alias = "warning", alias = "WARN", alias = "warn")]
    Warning,
    #[serde(rename = "ERROR", alias = "error")]
    Error,
    #[serde(rename = "CRITICAL", alias = "critical")]
    Critical,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    pub encoding: Encoding,
    pub log_level: LogLevel,
    pub logs_dir: Option<String>,
    pub enable_access_log: bool,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            encoding: Encoding::Text,
            log_level: LogLevel::Info,
            logs_dir: None,
            enable_access_log: true,
        }
    }
}

fn default_app_name() -> String {
    "default".into()
}

fn default_route_prefix() -> Option<String> {
    Some("/".into())
}

/// One application entry (`ServeApplicationSchema`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplicationSchema {
    #[serde(default = "default_app_name")]
    pub name: String,
    /// `null` means no HTTP route.
    #[serde(default = "default_route_prefix")]
    pub route_prefix: Option<String>,
    pub import_path: String,
    #[serde(default)]
    pub runtime_env: Map<String, Value>,
    #[serde(default)]
    pub args: Map<String, Value>,
    #[serde(default)]
    pub deployments: Vec<DeploymentOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging_config: Option<LoggingConfig>,
}

/// `num_replicas`: a positive count, or `"auto"` (autoscaling with the
/// seeds' `auto` defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumReplicas {
    Count(u32),
    Auto,
}

impl Serialize for NumReplicas {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            NumReplicas::Count(n) => s.serialize_u32(*n),
            NumReplicas::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for NumReplicas {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const EXPECTED: &str = "expected a positive integer or \"auto\"";
        impl<'de> Visitor<'de> for V {
            type Value = NumReplicas;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a positive integer or \"auto\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumReplicas, E> {
                match u32::try_from(v) {
                    Ok(n) if n >= 1 => Ok(NumReplicas::Count(n)),
                    _ => Err(E::custom(format!("{EXPECTED}, got {v}"))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumReplicas, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("{EXPECTED}, got {v}"))),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<NumReplicas, E> {
                Err(E::custom(format!("{EXPECTED}, got {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NumReplicas, E> {
                if v == "auto" {
                    Ok(NumReplicas::Auto)
                } else {
                    Err(E::custom(format!("{EXPECTED}, got \"{v}\"")))
                }
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<NumReplicas, E> {
                Err(E::custom(format!("{EXPECTED}, got {v}")))
            }
        }
        d.deserialize_any(V)
    }
}

/// Deployment options as one layer sets them (`@serve.deployment`
/// arguments, an LLMConfig's `deployment_config`, or a `deployments[]`
/// entry): `None` is "not set here".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_replicas: Option<NumReplicas>,
    #[serde(
        default,
        alias = "max_concurrent_queries",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_ongoing_requests: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued_requests: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_config: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling_config: Option<AutoscalingOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_shutdown_wait_loop_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_shutdown_timeout_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_period_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_timeout_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ray_actor_options: Option<RayActorOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging_config: Option<LoggingConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_group_bundles: Option<Vec<BTreeMap<String, f64>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_group_strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas_per_node: Option<u32>,
}

/// `autoscaling_config` as written (replaced whole by a higher layer).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscalingOptions {
    #[serde(
        default,
        alias = "target_num_ongoing_requests_per_replica",
        skip_serializing_if = "Option::is_none"
    )]
    pub target_ongoing_requests: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upscale_delay_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downscale_delay_s: Option<f64>,
    #[serde(
        default,
        alias = "upscale_smoothing_factor",
        skip_serializing_if = "Option::is_none"
    )]
    pub upscaling_factor: Option<f64>,
    #[serde(
        default,
        alias = "downscale_smoothing_factor",
        skip_serializing_if = "Option::is_none"
    )]
    pub downscaling_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_interval_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub look_back_period_s: Option<f64>,
}

/// `ray_actor_options`: what one replica reserves.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RayActorOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_gpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_store_memory: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<BTreeMap<String, f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_env: Option<Map<String, Value>>,
}
