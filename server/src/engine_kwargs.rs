//! vLLM-style engine flags merged into Ray Serve LLM's `engine_kwargs`
//! (the one form the replica takes).

use crate::cli::EngineFlags;
use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

/// The `engine_kwargs` object the flags describe; flags override the keys
/// of `--engine-kwargs`. Checked here so a typo fails before anything
/// starts.
pub fn engine_kwargs(f: &EngineFlags) -> Result<Value> {
    let mut kwargs: Map<String, Value> = match &f.engine_kwargs {
        Some(text) => match serde_json::from_str(text)
            .with_context(|| format!("--engine-kwargs is not valid JSON: {text}"))?
        {
            Value::Object(m) => m,
            _ => anyhow::bail!("--engine-kwargs must be a JSON object"),
        },
        None => Map::new(),
    };
    let mut set = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            kwargs.insert(k.to_string(), v);
        }
    };
    set("max_model_len", f.max_model_len.map(|v| json!(v)));
    set("max_num_seqs", f.max_num_seqs.map(|v| json!(v)));
    set(
        "max_num_batched_tokens",
        f.max_num_batched_tokens.map(|v| json!(v)),
    );
    set("block_size", f.block_size.map(|v| json!(v)));
    set(
        "kv_cache_memory_bytes",
        f.kv_cache_memory_bytes.map(|v| json!(v)),
    );
    set(
        "kv_cache_memory_fraction",
        f.kv_cache_memory_fraction.map(|v| json!(v)),
    );
    set(
        "enable_prefix_caching",
        f.enable_prefix_caching.map(|v| json!(v)),
    );
    set(
        "enable_chunked_prefill",
        f.enable_chunked_prefill.map(|v| json!(v)),
    );
    set(
        "scheduling_policy",
        f.scheduling_policy.as_ref().map(|v| json!(v)),
    );
    let value = Value::Object(kwargs);
    llm_serve_engine::EngineConfig::from_kwargs(&value)?;
    Ok(value)
}
