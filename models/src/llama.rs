//! The llama-family transformer (Llama 2/3, SmolLM2, TinyLlama, Mistral,
//! Qwen2) over a paged KV cache, one ragged batch per forward call.

use crate::batch::{LogitsWanted, SeqInput};
use crate::config::{ModelConfig, RopeScaling};
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::kv_cache::{CacheDtype, KvCache};
use crate::linear::Linear;
use crate::rope_scaling::inv_freq;
use crate::safetensors_store::SafetensorsStore;
use crate::source::{ModelFiles, WeightsFormat};
use candle_core::{Device, Tensor};
use llm_serve_kernels::attention::{KvRole, SeqSpan};
use llm_serve_kernels::ops::{
    Add, ApplyExt, Columns, Embedding, PagedAttention, RmsNorm, Rope, SiluMul, WriteCache,
};
use llm_serve_kernels::rope::RopeTable;
use llm_serve_kernels::QMatrix;
use std::sync::Arc;

struct Layer {
    attn_norm: Vec<f32>,
    qkv: Linear,
    o: Linear,
    mlp_norm: Vec<f32>,
    gate_up: Linear,
    down: Linear,
}

pub struct Model {
    cfg: ModelConfig,
    embed: Arc<QMatrix>,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    lm_head: Arc<QMatrix>,
    rope: RopeTable,
    max_model_len: usize,
    device: Device,
    weights_bytes: usize,
    /// GGUF metadata, kept for the tokenizer and chat template.
    gguf: Option<candle_core::quantized::gguf_file::Content>,
}

/// Where tensors come from, with each format's names.
enum Store {
    Gguf(GgufFile),
    Safetensors(SafetensorsStore),
}

impl Store {
    fn has(&self, hf: &str, gguf: &str) -> bool {
        match self {
            Store::Gguf(g) => g.has(gguf),
            Store::Safetensors(s) => s.has(hf),
        }
    }

    fn matrix(&self, hf: &str, gguf: &str) -> Result<QMatrix> {
        match self {
            Store::Gguf(g) => g.matrix(gguf),
            Store::Safetensors(s) => s.matrix(hf),
        }
    }

    fn vector(&self, hf: &str, gguf: &str) -> Result<Vec<f32>> {
        match self {
            Store::Gguf(g) => g.vector(gguf),
            Store::Safetensors(s) => s.vector(hf),
        }
    }
}

impl Model {
    /// Loads a model. `max_model_len` caps the context (default: the model's
    /// trained length).
    pub fn load(files: &ModelFiles, max_model_len: Option<usize>) -> Result<Self> {
        let device = Device::Cpu;
        let (mut cfg, store, cfg_path) = match files.format {
            WeightsFormat::Gguf => {
                let path = files
                    .gguf
                    .clone()
                    .ok_or_else(|| ModelError::Unsupported("GGUF model without a file".into()))?;
                let g = GgufFile::open(&path)?;
                let cfg = ModelConfig::from_gguf(&path, &g.content)?;
                (cfg, Store::Gguf(g), path)
            }
            WeightsFormat::Safetensors => {
                let path = files.config.clone().ok_or_else(|| {
                    ModelError::Unsupported("safetensors model without config.json".into())
                })?;
                let cfg = ModelConfig::from_hf_json(&path)?;
                (
                    cfg,
                    Store::Safetensors(SafetensorsStore::open(&files.safetensors)?),
                    path,
                )
            }
        };
        if let Store::Gguf(g) = &store {
            if g.has("rope_freqs.weight") {
                cfg.rope_scaling = Some(RopeScaling::FreqFactors(g.vector("rope_freqs.weight")?));
            }
        }
        let max_model_len = match max_model_len {
            Some(0) => {
                return Err(ModelError::Config {
                    path: cfg_path,
                    field: "max_model_len".into(),
                    detail: "must be positive".into(),
                })
            }
            Some(n) if n > cfg.max_position_embeddings => {
                return Err(ModelError::Config {
                    path: cfg_path,
                    field: "max_model_len".into(),
                    detail: format!(
                        "{n} exceeds the model's maximum context of {} tokens",
                        cfg.max_position_embeddings
                    ),
                })
            }
            Some(n) => n,
            None => cfg.max_position_embeddings,
        };
        let embed = Arc::new(store.matrix("model.embed_tokens.weight", "token_embd.weight")?);
        check_dims(
            &cfg_path,
            "token embedding",
            &embed,
            cfg.vocab_size,
            cfg.hidden_size,
        )?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            layers.push(load_layer(&store, &cfg, i, &device, &cfg_path)?);
        }
        let norm = store.vector("model.norm.weight", "output_norm.weight")?;
        let lm_head = if store.has("lm_head.weight", "output.weight") {
            Arc::new(store.matrix("lm_head.weight", "output.weight")?)
        } else if cfg.tie_word_embeddings || matches!(store, Store::Gguf(_)) {
            embed.clone()
        } else {
            return Err(ModelError::Tensor {
                path: cfg_path,
                name: "lm_head.weight".into(),
                detail: "missing and tie_word_embeddings is false".into(),
            });
        };
        check_dims(
            &cfg_path,
            "output projection",
            &lm_head,
            cfg.vocab_size,
            cfg.hidden_size,
        )?;
        let freqs = inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling.as_ref());
        let rope = RopeTable::new(&freqs, max_model_len, cfg.rope_style, 1.0);
        let weights_bytes = embed.storage_bytes()
            + if Arc::ptr_eq(&embed, &lm_head) {
                0
            } else {
                lm_head.storage_bytes()
            }
            + layers
                .iter()
                .map(|l| {
                    l.qkv.storage_bytes()
                        + l.o.storage_bytes()
                        + l.gate_up.storage_bytes()
                        + l.down.storage_bytes()
                })
                .sum::<usize>();
        let gguf = match store {
            Store::Gguf(g) => Some(g.content),
            Store::Safetensors(_) => None,
        };
        Ok(Model {
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            rope,
            max_model_len,
            device,
            weights_bytes,
            gguf,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The cache precision that matches the reference implementation of
    /// this model's format: f16 for GGUF (as llama.cpp), f32 for
    /// safetensors (computed in f32, as transformers in f32).
    pub fn default_cache_dtype(&self) -> CacheDtype {
        if self.gguf.is_some() {
            CacheDtype::F16
        } else {
            CacheDtype::F32
        }
    }

    pub fn max_model_len(&self) -> usize {
        self.max_model_len
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes of weight storage.
    pub fn weights_bytes(&self) -> usize {
        self.weights_bytes
    }

    /// GGUF metadata, for GGUF models.
    pub fn gguf_metadata(&self) -> Option<&candle_core::quantized::gguf_file::Content> {
        self.gguf.as_ref()
    }

    /// Runs one ragged batch: writes every new token's K/V into its
    /// sequence's cache blocks and returns logits `[rows, vocab]` for the
    /// positions asked for, sequence by sequence in order.
    pub fn forward(&self, seqs: &[SeqInput], cache: &mut KvCache) -> Result<Tensor> {
        let cfg = &self.cfg;
        if cache.num_layers() != cfg.num_layers
            || cache.geometry().num_kv_heads != cfg.num_kv_heads
            || cache.geometry().head_dim != cfg.head_dim
        {
            return Err(ModelError::Batch(
                "the KV cache was made for another model".into(),
            ));
        }
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut spans = Vec::with_capacity(seqs.len());
        let mut wanted = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            if s.tokens.is_empty() {
                return Err(ModelError::Batch(format!("sequence {i} has no new tokens")));
            }
            let end = s.start_pos + s.tokens.len();
            if end > self.max_model_len {
                return Err(ModelError::Batch(format!(
                    "sequence {i} reaches position {end}, beyond the maximum context of {} tokens",
                    self.max_model_len
                )));
            }
            if let Some(&t) = s.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                return Err(ModelError::Batch(format!(
                    "sequence {i}: token id {t} is outside the vocabulary of {}",
                    cfg.vocab_size
                )));
            }
            let start = tokens.len();
            tokens.extend_from_slice(s.tokens);
            positions.extend(s.start_pos..end);
            spans.push(SeqSpan {
                start,
                len: s.tokens.len(),
                context_len: end,
                block_table: s.block_table,
            });
            match s.logits {
                LogitsWanted::None => {}
                LogitsWanted::Last => wanted.push((start + s.tokens.len() - 1) as u32),
                LogitsWanted::All => {
                    wanted.extend((start..start + s.tokens.len()).map(|t| t as u32))
                }
            }
        }
        let n_tokens = tokens.len();
        let ids = Tensor::from_vec(tokens, n_tokens, &self.device)?;
        let mut x = ids.op1(&Embedding(&self.embed))?;
        let geom = cache.geometry();
        let (nh, nkv, d) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let scale = 1.0 / (d as f32).sqrt();
        for (li, layer) in self.layers.iter().enumerate() {
            let h = x.op1(&RmsNorm {
                weight: &layer.attn_norm,
                eps: cfg.rms_norm_eps,
            })?;
            let qkv = layer.qkv.forward(&h)?;
            let q = qkv.op1(&Rope {
                table: &self.rope,
                positions: &positions,
                first_col: 0,
                num_heads: nh,
                head_dim: d,
            })?;
            let k = qkv.op1(&Rope {
                table: &self.rope,
                positions: &positions,
                first_col: nh * d,
                num_heads: nkv,
                head_dim: d,
            })?;
            let v = qkv.op1(&Columns {
                first: (nh + nkv) * d,
                len: nkv * d,
            })?;
            let (k_cache, v_cache) = cache.layer(li);
            k_cache.inplace_op2(
                &k,
                &WriteCache {
                    geom,
                    seqs: &spans,
                    role: KvRole::Key,
                },
            )?;
            v_cache.inplace_op2(
                &v,
                &WriteCache {
                    geom,
                    seqs: &spans,
                    role: KvRole::Value,
                },
            )?;
            let attn = q.apply_op3_no_bwd(
                k_cache,
                v_cache,
                &PagedAttention {
                    geom,
                    num_heads: nh,
                    seqs: &spans,
                    scale,
                },
            )?;
            x = x.op2(&layer.o.forward(&attn)?, &Add)?;
            let h = x.op1(&RmsNorm {
                weight: &layer.mlp_norm,
                eps: cfg.rms_norm_eps,
            })?;
            let act = layer.gate_up.forward(&h)?.op1(&SiluMul)?;
            x = x.op2(&layer.down.forward(&act)?, &Add)?;
        }
        let n_wanted = wanted.len();
        if n_wanted == 0 {
            return Ok(Tensor::zeros(
                (0, cfg.vocab_size),
                candle_core::DType::F32,
                &self.device,
            )?);
        }
        let rows = if n_wanted == n_tokens {
            x
        } else {
            x.index_select(&Tensor::from_vec(wanted, n_wanted, &self.device)?, 0)?
        };
        let h = rows.op1(&RmsNorm {
            weight: &self.norm,
            eps: cfg.rms_norm_eps,
        })?;
        Ok(h.op1(&llm_serve_kernels::ops::QMatMul(&self.lm_head))?)
    }
}

fn check_dims(
    path: &std::path::Path,
    what: &str,
    m: &QMatrix,
    rows: usize,
    cols: usize,
) -> Result<()> {
    if m.rows() != rows || m.cols() != cols {
        return Err(ModelError::Config {
            path: path.to_path_buf(),
            field: what.into(),
            detail: format!(
                "weight is {} x {}, the config says {rows} x {cols}",
                m.rows(),
                m.cols()
            ),
        });
    }
    Ok(())
}

fn load_layer(
    store: &Store,
    cfg: &ModelConfig,
    i: usize,
    device: &Device,
    path: &std::path::Path,
) -> Result<Layer> {
    let hf = |s: &str| format!("model.layers.{i}.{s}");
    let gg = |s: &str| format!("blk.{i}.{s}");
    let (h, d) = (cfg.hidden_size, cfg.head_dim);
    let q = store.matrix(&hf("self_attn.q_proj.weight"), &gg("attn_q.weight"))?;
    let k = store.matrix(&hf("self_attn.k_proj.weight"), &gg("attn_k.weight"))?;
    let v = store.matrix(&hf("self_attn.v_proj.weight"), &gg("attn_v.weight"))?;
    check_dims(path, &format!("layer {i} q"), &q, cfg.num_heads * d, h)?;
    check_dims(path, &format!("layer {i} k"), &k, cfg.num_kv_heads * d, h)?;
    check_dims(path, &format!("layer {i} v"), &v, cfg.num_kv_heads * d, h)?;
    let bias = if cfg.attention_bias {
        let mut b = store.vector(&hf("self_attn.q_proj.bias"), &gg("attn_q.bias"))?;
        b.extend(store.vector(&hf("self_attn.k_proj.bias"), &gg("attn_k.bias"))?);
        b.extend(store.vector(&hf("self_attn.v_proj.bias"), &gg("attn_v.bias"))?);
        Some(b)
    } else {
        None
    };
    let o = store.matrix(&hf("self_attn.o_proj.weight"), &gg("attn_output.weight"))?;
    check_dims(path, &format!("layer {i} o"), &o, h, cfg.num_heads * d)?;
    let gate = store.matrix(&hf("mlp.gate_proj.weight"), &gg("ffn_gate.weight"))?;
    let up = store.matrix(&hf("mlp.up_proj.weight"), &gg("ffn_up.weight"))?;
    let down = store.matrix(&hf("mlp.down_proj.weight"), &gg("ffn_down.weight"))?;
    check_dims(
        path,
        &format!("layer {i} gate"),
        &gate,
        cfg.intermediate_size,
        h,
    )?;
    check_dims(
        path,
        &format!("layer {i} up"),
        &up,
        cfg.intermediate_size,
        h,
    )?;
    check_dims(
        path,
        &format!("layer {i} down"),
        &down,
        h,
        cfg.intermediate_size,
    )?;
    Ok(Layer {
        attn_norm: store.vector(&hf("input_layernorm.weight"), &gg("attn_norm.weight"))?,
        qkv: Linear::stacked(vec![q, k, v], bias, device)?,
        o: Linear::stacked(vec![o], None, device)?,
        mlp_norm: store.vector(
            &hf("post_attention_layernorm.weight"),
            &gg("ffn_norm.weight"),
        )?,
        gate_up: Linear::stacked(vec![gate, up], None, device)?,
        down: Linear::stacked(vec![down], None, device)?,
    })
}
