//! Architecture hyperparameters, read from a Hugging Face `config.json` or a
//! GGUF file's metadata into one shape.

use crate::error::{ModelError, Result};
use candle_core::quantized::gguf_file;
use llm_serve_kernels::rope::RopeStyle;
use serde_json::Value;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3, SmolLM2, TinyLlama, Mistral (no sliding window).
    Llama,
    /// Qwen2 / Qwen2.5: llama with q/k/v biases.
    Qwen2,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear { factor: f32 },
    /// Llama 3.1's wavelength-dependent scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
    /// Per-frequency divisors stored in a GGUF (`rope_freqs.weight`).
    FreqFactors(Vec<f32>),
}

#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub arch: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: Option<RopeScaling>,
    pub rope_style: RopeStyle,
    /// The longest context the model was trained for.
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, detail: String| ModelError::Config {
            path: path.to_path_buf(),
            field: field.into(),
            detail,
        };
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(bad(name, "must be positive".into()));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "{} attention heads are not a multiple of {} key/value heads",
                    self.num_heads, self.num_kv_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(bad("head_dim", format!("{} is odd", self.head_dim)));
        }
        if self.rms_norm_eps.is_nan()
            || self.rms_norm_eps <= 0.0
            || self.rope_theta.is_nan()
            || self.rope_theta <= 0.0
        {
            return Err(bad("rms_norm_eps / rope_theta", "must be positive".into()));
        }
        Ok(())
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io_err(path))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| ModelError::Format {
            path: path.to_path_buf(),
            what: "JSON config",
            detail: e.to_string(),
        })?;
        let cfg = HfConfig { path, v: &v };
        let model_type = cfg.str_opt("model_type").unwrap_or_default();
        let arch = match model_type.as_str() {
            "llama" | "mistral" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "{}: model_type {other:?} is not supported (supported: llama, mistral, qwen2)",
                    path.display()
                )))
            }
        };
        let hidden_size = cfg.usize("hidden_size")?;
        let num_heads = cfg.usize("num_attention_heads")?;
        let num_kv_heads = cfg.usize_opt("num_key_value_heads")?.unwrap_or(num_heads);
        let head_dim = match cfg.usize_opt("head_dim")? {
            Some(d) => d,
            None if num_heads > 0 => hidden_size / num_heads,
            None => 0,
        };
        let mut max_pos = cfg.usize("max_position_embeddings")?;
        if let Some(window) = cfg.usize_opt("sliding_window")? {
            let used =
                model_type != "qwen2" || cfg.bool_opt("use_sliding_window")?.unwrap_or(false);
            if used && window < max_pos {
                tracing::warn!(
                    "{}: sliding-window attention is not implemented; limiting the context to the window of {window} tokens, where full attention is exact",
                    path.display()
                );
                max_pos = window;
            }
        }
        // transformers v5 writes `rope_parameters` (theta and scaling in
        // one object); older configs `rope_theta` and `rope_scaling`.
        let rope_params = v.get("rope_parameters").filter(|p| p.is_object());
        let rope_scaling = match rope_params.or_else(|| v.get("rope_scaling")) {
            None | Some(Value::Null) => None,
            Some(rs) => parse_rope_scaling(path, rs)?,
        };
        let rope_theta = match rope_params.and_then(|p| p.get("rope_theta")) {
            Some(t) => Some(t.as_f64().ok_or_else(|| ModelError::Config {
                path: path.to_path_buf(),
                field: "rope_parameters.rope_theta".into(),
                detail: "expected a number".into(),
            })? as f32),
            None => cfg.f32_opt("rope_theta")?,
        };
        let eos_token_ids = token_id_list(v.get("eos_token_id"));
        let out = ModelConfig {
            arch,
            vocab_size: cfg.usize("vocab_size")?,
            hidden_size,
            intermediate_size: cfg.usize("intermediate_size")?,
            num_layers: cfg.usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: cfg.f32_opt("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: rope_theta.unwrap_or(10000.0),
            rope_scaling,
            rope_style: RopeStyle::HalfSplit,
            max_position_embeddings: max_pos,
            tie_word_embeddings: cfg.bool_opt("tie_word_embeddings")?.unwrap_or(false),
            attention_bias: arch == Architecture::Qwen2
                || cfg.bool_opt("attention_bias")?.unwrap_or(false),
            bos_token_id: cfg.usize_opt("bos_token_id")?.map(|x| x as u32),
            eos_token_ids,
        };
        out.validate(path)?;
        Ok(out)
    }

    /// Reads a GGUF file's metadata.
    pub fn from_gguf(path: &Path, content: &gguf_file::Content) -> Result<Self> {
        let md = GgufMeta { path, content };
        let arch_name = md.str("general.architecture")?;
        let (arch, rope_style) = match arch_name.as_str() {
            // llama.cpp's converter permutes llama q/k rows for interleaved rope.
            "llama" | "mistral" => (Architecture::Llama, RopeStyle::Interleaved),
            "qwen2" => (Architecture::Qwen2, RopeStyle::HalfSplit),
            other => {
                return Err(ModelError::Unsupported(format!(
                    "{}: GGUF architecture {other:?} is not supported (supported: llama, mistral, qwen2)",
                    path.display()
                )))
            }
        };
        let a = arch_name.as_str();
        let hidden_size = md.usize(&format!("{a}.embedding_length"))?;
        let num_heads = md.usize(&format!("{a}.attention.head_count"))?;
        let num_kv_heads = md
            .usize_opt(&format!("{a}.attention.head_count_kv"))?
            .unwrap_or(num_heads);
        let head_dim = match md.usize_opt(&format!("{a}.attention.key_length"))? {
            Some(d) => d,
            None if num_heads > 0 => hidden_size / num_heads,
            None => 0,
        };
        let vocab_size = match md.usize_opt(&format!("{a}.vocab_size"))? {
            Some(v) => v,
            None => match content.metadata.get("tokenizer.ggml.tokens") {
                Some(gguf_file::Value::Array(t)) => t.len(),
                _ => content
                    .tensor_infos
                    .get("token_embd.weight")
                    .map(|t| t.shape.dims()[0])
                    .unwrap_or(0),
            },
        };
        let rope_scaling = match md.str_opt(&format!("{a}.rope.scaling.type"))?.as_deref() {
            None | Some("none") => None,
            Some("linear") => Some(RopeScaling::Linear {
                factor: md.f32(&format!("{a}.rope.scaling.factor"))?,
            }),
            Some(other) => {
                return Err(ModelError::Unsupported(format!(
                    "{}: rope scaling type {other:?} is not supported",
                    path.display()
                )))
            }
        };
        let out = ModelConfig {
            arch,
            vocab_size,
            hidden_size,
            intermediate_size: md.usize(&format!("{a}.feed_forward_length"))?,
            num_layers: md.usize(&format!("{a}.block_count"))?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: md.f32(&format!("{a}.attention.layer_norm_rms_epsilon"))?,
            rope_theta: md
                .f32_opt(&format!("{a}.rope.freq_base"))?
                .unwrap_or(10000.0),
            rope_scaling,
            rope_style,
            max_position_embeddings: md.usize(&format!("{a}.context_length"))?,
            tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
            attention_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            bos_token_id: md
                .usize_opt("tokenizer.ggml.bos_token_id")?
                .map(|x| x as u32),
            eos_token_ids: md
                .usize_opt("tokenizer.ggml.eos_token_id")?
                .map(|x| vec![x as u32])
                .unwrap_or_default(),
        };
        out.validate(path)?;
        Ok(out)
    }
}

fn parse_rope_scaling(path: &Path, rs: &Value) -> Result<Option<RopeScaling>> {
    let field = |name: &str| ModelError::Config {
        path: path.to_path_buf(),
        field: format!("rope_scaling.{name}"),
        detail: "missing or not a number".into(),
    };
    let num = |name: &str| {
        rs.get(name)
            .and_then(Value::as_f64)
            .ok_or_else(|| field(name))
    };
    let kind = rs
        .get("rope_type")
        .or_else(|| rs.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    Ok(match kind {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: num("factor")? as f32,
        }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: num("factor")? as f32,
            low_freq_factor: num("low_freq_factor")? as f32,
            high_freq_factor: num("high_freq_factor")? as f32,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        }),
        other => {
            return Err(ModelError::Unsupported(format!(
                "{}: rope_scaling type {other:?} is not supported (supported: linear, llama3)",
                path.display()
            )))
        }
    })
}

struct HfConfig<'a> {
    path: &'a Path,
    v: &'a Value,
}

impl HfConfig<'_> {
    fn err(&self, field: &str, detail: &str) -> ModelError {
        ModelError::Config {
            path: self.path.to_path_buf(),
            field: field.into(),
            detail: detail.into(),
        }
    }

    fn usize_opt(&self, field: &str) -> Result<Option<usize>> {
        match self.v.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.err(field, "expected a non-negative integer")),
        }
    }

    fn usize(&self, field: &str) -> Result<usize> {
        self.usize_opt(field)?
            .ok_or_else(|| self.err(field, "missing"))
    }

    fn f32_opt(&self, field: &str) -> Result<Option<f32>> {
        match self.v.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_f64()
                .map(|n| Some(n as f32))
                .ok_or_else(|| self.err(field, "expected a number")),
        }
    }

    fn bool_opt(&self, field: &str) -> Result<Option<bool>> {
        match self.v.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(field, "expected true or false")),
        }
    }

    fn str_opt(&self, field: &str) -> Option<String> {
        self.v
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_string)
    }
}

struct GgufMeta<'a> {
    path: &'a Path,
    content: &'a gguf_file::Content,
}

impl GgufMeta<'_> {
    fn err(&self, key: &str, detail: &str) -> ModelError {
        ModelError::Config {
            path: self.path.to_path_buf(),
            field: key.into(),
            detail: detail.into(),
        }
    }

    fn get(&self, key: &str) -> Option<&gguf_file::Value> {
        self.content.metadata.get(key)
    }

    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        use gguf_file::Value as V;
        Ok(match self.get(key) {
            None => None,
            Some(V::U8(x)) => Some(*x as usize),
            Some(V::U16(x)) => Some(*x as usize),
            Some(V::U32(x)) => Some(*x as usize),
            Some(V::U64(x)) => Some(*x as usize),
            Some(V::I32(x)) if *x >= 0 => Some(*x as usize),
            Some(V::I64(x)) if *x >= 0 => Some(*x as usize),
            Some(_) => return Err(self.err(key, "expected a non-negative integer")),
        })
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?.ok_or_else(|| self.err(key, "missing"))
    }

    fn f32_opt(&self, key: &str) -> Result<Option<f32>> {
        use gguf_file::Value as V;
        Ok(match self.get(key) {
            None => None,
            Some(V::F32(x)) => Some(*x),
            Some(V::F64(x)) => Some(*x as f32),
            Some(_) => return Err(self.err(key, "expected a float")),
        })
    }

    fn f32(&self, key: &str) -> Result<f32> {
        self.f32_opt(key)?.ok_or_else(|| self.err(key, "missing"))
    }

    fn str_opt(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(gguf_file::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.err(key, "expected a string")),
        }
    }

    fn str(&self, key: &str) -> Result<String> {
        self.str_opt(key)?.ok_or_else(|| self.err(key, "missing"))
    }
}

/// A token-id field of a Hugging Face JSON file (`eos_token_id` and the
/// like), which may be one id or a list of ids.
pub fn token_id_list(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect(),
        _ => Vec::new(),
    }
}
