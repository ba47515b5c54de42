//! LoRA adapters for the llama family: a PEFT directory
//! (`adapter_config.json` + `adapter_model.safetensors`) checked against the
//! base model and loaded into the kernels' shrink/expand layout, and the
//! per-step view the forward pass applies: `y = W x + scale · B (A x)` for
//! the rows of each sequence that uses an adapter, after one base matmul
//! for all rows.

mod adapter;
mod peft;

pub use adapter::{LoraAdapter, LoraDtype, LoraOptions};

use crate::batch::StepInputs;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use llm_serve_kernels::lora::{LoraPart, LoraSegment};
use std::ops::Range;
use std::sync::Arc;

/// The projections an adapter may adapt, in PEFT's module names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Projection {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

/// A fused linear of the layer graph (the projections that read the same
/// input share one matmul).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fused {
    Qkv = 0,
    O = 1,
    GateUp = 2,
    Down = 3,
}

impl Projection {
    pub const ALL: [Projection; 7] = [
        Projection::Q,
        Projection::K,
        Projection::V,
        Projection::O,
        Projection::Gate,
        Projection::Up,
        Projection::Down,
    ];
    pub const NAMES: [&'static str; 7] = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];

    pub fn from_module(name: &str) -> Option<Projection> {
        Self::NAMES
            .iter()
            .position(|&n| n == name)
            .map(|i| Self::ALL[i])
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// The module's name in a Hugging Face llama/qwen2 model.
    pub fn module_path(self, layer: usize) -> String {
        let block = match self {
            Projection::Q | Projection::K | Projection::V | Projection::O => "self_attn",
            _ => "mlp",
        };
        format!("model.layers.{layer}.{block}.{}", self.name())
    }

    pub(crate) fn fused(self) -> Fused {
        match self {
            Projection::Q | Projection::K | Projection::V => Fused::Qkv,
            Projection::O => Fused::O,
            Projection::Gate | Projection::Up => Fused::GateUp,
            Projection::Down => Fused::Down,
        }
    }

    /// `(in_features, out_features)` in a model of `cfg`.
    pub fn shape(self, cfg: &ModelConfig) -> (usize, usize) {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let (q, kv) = (
            cfg.num_heads * cfg.head_dim,
            cfg.num_kv_heads * cfg.head_dim,
        );
        match self {
            Projection::Q => (h, q),
            Projection::K | Projection::V => (h, kv),
            Projection::O => (q, h),
            Projection::Gate | Projection::Up => (h, i),
            Projection::Down => (i, h),
        }
    }

    /// Its first column in the output of its fused linear.
    pub(crate) fn column(self, cfg: &ModelConfig) -> usize {
        let (q, kv) = (
            cfg.num_heads * cfg.head_dim,
            cfg.num_kv_heads * cfg.head_dim,
        );
        match self {
            Projection::K => q,
            Projection::V => q + kv,
            Projection::Up => cfg.intermediate_size,
            _ => 0,
        }
    }
}

/// The adapters of one step: which rows use which adapter.
pub struct StepLora<'a> {
    /// (rows, adapter), in row order; rows of the base model are absent.
    runs: Vec<(Range<usize>, &'a LoraAdapter)>,
}

impl<'a> StepLora<'a> {
    /// Resolves each sequence's adapter slot against `adapters`
    /// (`adapters[slot]`); neighbouring sequences of one adapter share a run.
    pub fn new(inputs: &StepInputs, adapters: &'a [Arc<LoraAdapter>]) -> Result<Self> {
        let mut runs: Vec<(Range<usize>, &'a LoraAdapter)> = Vec::new();
        for (i, s) in inputs.seqs.iter().enumerate() {
            let Some(slot) = s.adapter_slot else {
                continue;
            };
            let adapter = adapters.get(slot as usize).ok_or_else(|| {
                ModelError::Batch(format!(
                    "sequence {i} uses adapter slot {slot}, but the step has {} adapters",
                    adapters.len()
                ))
            })?;
            let rows = s.start..s.start + s.len;
            match runs.last_mut() {
                Some((r, a)) if r.end == rows.start && std::ptr::eq(*a, &**adapter) => {
                    r.end = rows.end
                }
                _ => runs.push((rows, adapter)),
            }
        }
        Ok(StepLora { runs })
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Checks that every adapter was loaded for a model of this shape.
    pub(crate) fn check(&self, cfg: &ModelConfig) -> Result<()> {
        for (_, a) in &self.runs {
            a.check_fits(cfg)?;
        }
        Ok(())
    }

    /// The kernel's segments for one fused linear of one layer.
    pub(crate) fn segments(&self, layer: usize, fused: Fused) -> Vec<LoraSegment<'a>> {
        self.runs
            .iter()
            .filter_map(|(rows, a)| {
                let parts: Vec<LoraPart<'a>> = a.parts(layer, fused);
                (!parts.is_empty()).then(|| LoraSegment {
                    rows: rows.clone(),
                    parts,
                })
            })
            .collect()
    }
}
