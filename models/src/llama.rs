//! The llama-family transformer (Llama 2/3, SmolLM2, TinyLlama, Mistral,
//! Qwen2) over a paged KV cache, one ragged batch per forward call. The
//! layer graph is written once over the device seam (`backend`).

use crate::backend::{cpu::Cpu, Backend};
use crate::batch::StepInputs;
use crate::config::{ModelConfig, RopeScaling};
use crate::device::Device;
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::kv_cache::{CacheDtype, KvCache, Layers};
use crate::lora::{Fused, LoraAdapter, LoraOptions, StepLora};
use crate::rope_scaling::inv_freq;
use crate::safetensors_store::SafetensorsStore;
use crate::source::{ModelFiles, WeightsFormat};
use candle_core::Tensor;
use llm_serve_kernels::attention::{KvGeometry, KvRole};
use llm_serve_kernels::rope::{RopeStyle, RopeTable};
use llm_serve_kernels::QMatrix;
use std::sync::Arc;

struct Layer<B: Backend> {
    attn_norm: B::Vector,
    qkv: B::Linear,
    o: B::Linear,
    mlp_norm: B::Vector,
    gate_up: B::Linear,
    down: B::Linear,
}

/// The weights on one backend, and the layer graph over them.
struct Llama<B: Backend> {
    backend: B,
    embed: B::Table,
    layers: Vec<Layer<B>>,
    norm: B::Vector,
    lm_head: B::Table,
    rope: B::Rope,
}

/// The loaded network, on the backend of its device.
enum Net {
    Cpu(Llama<Cpu>),
}

pub struct Model {
    cfg: ModelConfig,
    net: Net,
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
    /// Loads a model on the CPU. `max_model_len` caps the context
    /// (default: the model's trained length).
    pub fn load(files: &ModelFiles, max_model_len: Option<usize>) -> Result<Self> {
        Self::load_on(files, max_model_len, Device::Cpu)
    }

    /// Loads a model onto `device`.
    pub fn load_on(
        files: &ModelFiles,
        max_model_len: Option<usize>,
        device: Device,
    ) -> Result<Self> {
        #[cfg(feature = "cuda")]
        if let Device::Cuda(_) = device {
            return Err(no_cuda_kernels(&device));
        }
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
        let mut weights_bytes = embed.storage_bytes()
            + if Arc::ptr_eq(&embed, &lm_head) {
                0
            } else {
                lm_head.storage_bytes()
            };
        let freqs = inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling.as_ref());
        let rope = RopeTable::new(&freqs, max_model_len, cfg.rope_style, 1.0);
        let backend = Cpu;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let (layer, bytes) = load_layer(&store, &cfg, i, &backend, &cfg_path)?;
            layers.push(layer);
            weights_bytes += bytes;
        }
        let net = Llama {
            embed: backend.table(embed)?,
            layers,
            norm: backend.vector(store.vector("model.norm.weight", "output_norm.weight")?)?,
            lm_head: backend.table(lm_head)?,
            rope: backend.rope_table(rope)?,
            backend,
        };
        let gguf = match store {
            Store::Gguf(g) => Some(g.content),
            Store::Safetensors(_) => None,
        };
        Ok(Model {
            cfg,
            net: Net::Cpu(net),
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

    /// Loads the LoRA adapter in `dir` for this model.
    pub fn load_adapter(&self, dir: &std::path::Path, opts: LoraOptions) -> Result<LoraAdapter> {
        let permute_qk = self.gguf.is_some() && self.cfg.rope_style == RopeStyle::Interleaved;
        LoraAdapter::load(dir, &self.cfg, permute_qk, opts)
    }

    /// Runs one step: writes every new token's K/V into its sequence's
    /// cache blocks and returns logits `[rows, vocab]` for
    /// `inputs.logits_rows`, in that order. A sequence's `adapter_slot`
    /// indexes `adapters`.
    pub fn forward(
        &self,
        inputs: &StepInputs,
        cache: &mut KvCache,
        adapters: &[Arc<LoraAdapter>],
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        if cache.num_layers() != cfg.num_layers
            || cache.geometry().num_kv_heads != cfg.num_kv_heads
            || cache.geometry().head_dim != cfg.head_dim
            || cache.block_size() != inputs.block_size
        {
            return Err(ModelError::Batch(
                "the KV cache was made for another model or block size".into(),
            ));
        }
        if inputs.token_ids.is_empty() {
            return Err(ModelError::Batch("the step has no tokens".into()));
        }
        for (i, s) in inputs.seqs.iter().enumerate() {
            if s.context_len > self.max_model_len {
                return Err(ModelError::Batch(format!(
                    "sequence {i} reaches position {}, beyond the maximum context of {} tokens",
                    s.context_len, self.max_model_len
                )));
            }
        }
        if let Some(&t) = inputs
            .token_ids
            .iter()
            .find(|&&t| t as usize >= cfg.vocab_size)
        {
            return Err(ModelError::Batch(format!(
                "token id {t} is outside the vocabulary of {}",
                cfg.vocab_size
            )));
        }
        let n_tokens = inputs.num_tokens();
        if let Some(&r) = inputs.logits_rows.iter().find(|&&r| r as usize >= n_tokens) {
            return Err(ModelError::Batch(format!(
                "logits row {r} is outside the step's {n_tokens} tokens"
            )));
        }
        let lora = StepLora::new(inputs, adapters)?;
        lora.check(cfg)?;
        let geom = cache.geometry();
        match (&self.net, &mut cache.layers) {
            (Net::Cpu(net), Layers::Cpu(layers)) => net.forward(cfg, inputs, &lora, geom, layers),
        }
    }
}

impl<B: Backend> Llama<B> {
    fn forward(
        &self,
        cfg: &ModelConfig,
        inputs: &StepInputs,
        lora: &StepLora,
        geom: KvGeometry,
        cache: &mut [(B::Cache, B::Cache)],
    ) -> Result<Tensor> {
        let b = &self.backend;
        let step = b.prepare(inputs)?;
        let x = self.layers_forward(cfg, &step, lora, geom, cache)?;
        if inputs.logits_rows.is_empty() {
            // Nothing to sample: the K/V writes are the step's only output.
            return Ok(Tensor::zeros(
                (0, cfg.vocab_size),
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )?);
        }
        let rows = b.logits_rows(x, &step)?;
        let h = b.rms_norm(&rows, &self.norm, cfg.rms_norm_eps)?;
        b.to_host(b.matmul_table(&h, &self.lm_head)?)
    }

    /// Embedding and every layer: the hidden states of all the step's rows.
    fn layers_forward(
        &self,
        cfg: &ModelConfig,
        step: &B::Step<'_>,
        lora: &StepLora,
        geom: KvGeometry,
        cache: &mut [(B::Cache, B::Cache)],
    ) -> Result<B::Act> {
        let b = &self.backend;
        let (nh, nkv, d) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let scale = 1.0 / (d as f32).sqrt();
        let eps = cfg.rms_norm_eps;
        let mut x = b.embed(&self.embed, step)?;
        for (i, (layer, (k_cache, v_cache))) in self.layers.iter().zip(cache.iter_mut()).enumerate()
        {
            let project = |x: &B::Act, w: &B::Linear, fused: Fused| -> Result<B::Act> {
                let y = b.matmul(x, w)?;
                if lora.is_empty() {
                    return Ok(y);
                }
                let segments = lora.segments(i, fused);
                if segments.is_empty() {
                    return Ok(y);
                }
                b.lora(y, x, &segments)
            };
            let h = b.rms_norm(&x, &layer.attn_norm, eps)?;
            let qkv = project(&h, &layer.qkv, Fused::Qkv)?;
            let q = b.rope(&qkv, &self.rope, step, 0, nh, d)?;
            let k = b.rope(&qkv, &self.rope, step, nh * d, nkv, d)?;
            let v = b.columns(&qkv, (nh + nkv) * d, nkv * d)?;
            b.write_cache(k_cache, &k, step, geom, KvRole::Key)?;
            b.write_cache(v_cache, &v, step, geom, KvRole::Value)?;
            let attn = b.attention(&q, k_cache, v_cache, step, geom, nh, scale)?;
            x = b.add(&x, &project(&attn, &layer.o, Fused::O)?)?;
            let h = b.rms_norm(&x, &layer.mlp_norm, eps)?;
            let act = b.silu_mul(&project(&h, &layer.gate_up, Fused::GateUp)?)?;
            x = b.add(&x, &project(&act, &layer.down, Fused::Down)?)?;
        }
        Ok(x)
    }
}

/// The refusal for a CUDA device in a build whose CUDA backend has no
/// model kernels yet (device discovery only).
#[cfg(feature = "cuda")]
pub(crate) fn no_cuda_kernels(device: &Device) -> ModelError {
    let found = match device {
        Device::Cuda(n) => match llm_serve_kernels::cuda::probe(*n) {
            Ok(info) => format!("found {info}"),
            Err(e) => e.to_string(),
        },
        Device::Cpu => String::new(),
    };
    ModelError::Unsupported(format!(
        "device {device}: {found}; this build's CUDA backend has no model kernels yet, run on device cpu"
    ))
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

/// One layer's weights on the backend, and their bytes.
fn load_layer<B: Backend>(
    store: &Store,
    cfg: &ModelConfig,
    i: usize,
    backend: &B,
    path: &std::path::Path,
) -> Result<(Layer<B>, usize)> {
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
    let bytes = [&q, &k, &v, &o, &gate, &up, &down]
        .iter()
        .map(|m| m.storage_bytes())
        .sum();
    let layer = Layer {
        attn_norm: backend
            .vector(store.vector(&hf("input_layernorm.weight"), &gg("attn_norm.weight"))?)?,
        qkv: backend.linear(vec![q, k, v], bias)?,
        o: backend.linear(vec![o], None)?,
        mlp_norm: backend.vector(store.vector(
            &hf("post_attention_layernorm.weight"),
            &gg("ffn_norm.weight"),
        )?)?,
        gate_up: backend.linear(vec![gate, up], None)?,
        down: backend.linear(vec![down], None)?,
    };
    Ok((layer, bytes))
}
