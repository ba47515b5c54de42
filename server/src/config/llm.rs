//! Ray Serve LLM's `LLMConfig` and friends, under their own field names, so
//! a Ray Serve LLM config loads as is.

use super::schema::DeploymentOptions;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    #[serde(default)]
    pub dynamic_lora_loading_path: Option<String>,
    #[serde(default = "default_max_adapters")]
    pub max_num_adapters_per_replica: u32,
    #[serde(default = "default_download_timeout")]
    pub download_timeout_s: Option<f64>,
    #[serde(default = "default_download_tries")]
    pub max_download_tries: u32,
}

fn default_max_adapters() -> u32 {
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
