//! Sampling defaults from a model's `generation_config.json` (vLLM's
//! `--generation-config auto`): what a request gets for the sampling
//! fields it leaves unset.

use crate::error::{EngineError, Result};
use std::path::Path;

/// Defaults for unset sampling fields; `None` falls back to vLLM's own
/// (temperature 1, top_p 1, top_k 0, min_p 0, repetition_penalty 1).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

impl GenerationDefaults {
    /// Reads the sampling fields of a `generation_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| EngineError::Internal(format!("cannot read {}: {e}", path.display())))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            EngineError::Internal(format!("{} is not valid JSON: {e}", path.display()))
        })?;
        let f = |k: &str| json.get(k).and_then(|v| v.as_f64()).map(|v| v as f32);
        // transformers' do_sample=false means greedy whatever else is set.
        let greedy = json.get("do_sample").and_then(|v| v.as_bool()) == Some(false);
        Ok(GenerationDefaults {
            temperature: if greedy { None } else { f("temperature") },
            top_p: if greedy { None } else { f("top_p") },
            top_k: if greedy {
                None
            } else {
                json.get("top_k").and_then(|v| v.as_i64()).map(|v| v as i32)
            },
            min_p: if greedy { None } else { f("min_p") },
            repetition_penalty: f("repetition_penalty"),
        })
    }
}
