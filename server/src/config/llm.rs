//! Ray Serve LLM's `LLMConfig` and friends, under their own field names, so
//! a Ray Serve LLM config loads as is.

use super::schema::DeploymentOptions;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    pub model_loading_config: ModelLoadingConfig,
    /// Ray names the engine here (`vLLM`); ours is the only one, so only
    /// the names that mean "the default engine" are taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_engine: Option<String>,
    #[serde(default)]
    pub engine_kwargs: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_config: Option<LoraConfig>,
    #[serde(default)]
    pub deployment_config: DeploymentOptions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_env: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_group_config: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experimental_configs: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_engine_metrics: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelLoadingConfig {
    /// The name clients send as `model`.
    pub model_id: String,
    /// A local path or a Hugging Face id; defaults to `model_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_source: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_source: Option<String>,
}

/// Ray Serve LLM's `lora_config`, plus `lora_modules`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// One subdirectory (or object-store prefix) per adapter: a local
    /// path, `file://`, `s3://`, `gs://`, `az://`/`abfss://` or `http(s)://`.
    #[serde(default)]
    pub dynamic_lora_loading_path: Option<String>,
    #[serde(default = "default_max_adapters")]
    pub max_num_adapters_per_replica: u32,
    /// Per download attempt; zero or less: no limit (Ray's rule).
    #[serde(default = "default_download_timeout")]
    pub download_timeout_s: Option<f64>,
    #[serde(default = "default_download_tries")]
    pub max_download_tries: u32,
    /// llm-serve's addition, vLLM's `--lora-modules`: adapters by name with
    /// their own path or URI, loaded when a replica starts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lora_modules: BTreeMap<String, String>,
}

impl LoraConfig {
    /// Ray's defaults, for a model that serves adapters with no
    /// `lora_config` (`engine_kwargs.enable_lora`).
    pub fn with_capacity(max_num_adapters_per_replica: u32) -> Self {
        LoraConfig {
            dynamic_lora_loading_path: None,
            max_num_adapters_per_replica,
            download_timeout_s: default_download_timeout(),
            max_download_tries: default_download_tries(),
            lora_modules: BTreeMap::new(),
        }
    }
}

pub fn default_max_adapters() -> u32 {
    16
}

fn default_download_timeout() -> Option<f64> {
    Some(30.0)
}

fn default_download_tries() -> u32 {
    3
}

/// Engine names taken as "this server's engine".
pub const ENGINE_NAMES: [&str; 2] = ["vLLM", "llm-serve"];
