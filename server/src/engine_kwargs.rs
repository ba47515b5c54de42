//! vLLM-style engine flags merged into Ray Serve LLM's `engine_kwargs`
//! (the one form the replica takes).

use crate::cli::EngineFlags;
use anyhow::{Context, Result};
use llm_serve_engine::EngineConfig;
use serde_json::{Map, Value};

/// The `engine_kwargs` the flags describe: `--engine-kwargs`'s keys, with
/// the flags given on top.
pub fn engine_kwargs(f: &EngineFlags) -> Result<Map<String, Value>> {
    let mut kwargs: Map<String, Value> = match &f.engine_kwargs {
        Some(text) => match serde_json::from_str(text)
            .with_context(|| format!("--engine-kwargs is not valid JSON: {text}"))?
        {
            Value::Object(m) => m,
            _ => anyhow::bail!("--engine-kwargs must be a JSON object"),
        },
        None => Map::new(),
    };
    if let Value::Object(flags) = serde_json::to_value(f)? {
        kwargs.extend(flags);
    }
    Ok(kwargs)
}

/// The engine settings the flags describe, checked here so a typo fails
/// before anything starts.
pub fn engine_config(f: &EngineFlags) -> Result<EngineConfig> {
    Ok(EngineConfig::from_kwargs(&Value::Object(engine_kwargs(
        f,
    )?))?)
}
