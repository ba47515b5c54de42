//! Model architectures and weight loading for llm-serve.
//!
//! A model is resolved from a source (a GGUF file, a Hugging Face directory
//! or a hub id), its weights are loaded into the kernels' matrix formats, and
//! its forward pass runs a *ragged batch*: the new tokens of several
//! sequences (prefill chunks and single decode tokens at different
//! positions) in one call over a paged KV cache. Weights, cache and
//! activations live on a backend (`backend`: the device seam).

mod backend;
mod batch;
mod config;
mod device;
mod error;
mod gguf;
mod kv_cache;
mod linear;
mod llama;
mod lora;
mod rope_scaling;
mod safetensors_store;
mod source;

pub use batch::{LogitsWanted, SeqInput, SeqRows, StepInputs};
pub use candle_core::quantized::gguf_file;
pub use config::{token_id_list, Architecture, ModelConfig, RopeScaling};
pub use device::Device;
pub use error::{ModelError, Result};
pub use kv_cache::{CacheDtype, KvCache};
pub use llama::Model;
pub use lora::{LoraAdapter, LoraDtype, LoraOptions, Projection, StepLora};
pub use source::{
    default_model_path, local_weights_bytes, models_dir, ModelFiles, ModelSource, WeightsFormat,
    DEFAULT_MODEL_FILE,
};
