//! Compute kernels for llm-serve.
//!
//! Everything the model runtime does per token that is worth hand-writing
//! lives here: quantized matrix products (SIMD dot products over GGML blocks,
//! chosen at run time from the CPU's features), paged attention that reads
//! K/V through block tables, rotary embeddings with per-token positions,
//! RMSNorm, the fused SwiGLU activation and LoRA's shrink/expand update.
//! Kernels are plain functions over slices so they can be tested against
//! naive references; `ops` wraps them as candle custom ops for the model
//! code.

pub mod activation;
pub mod attention;
pub mod buffer;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod error;
mod exp;
pub mod lora;
pub mod matmul;
pub mod norm;
pub mod ops;
pub mod quant;
pub mod rope;
pub mod threads;

pub(crate) use error::shape_err;
pub use error::{Error, Result};
pub use matmul::QMatrix;
pub use quant::WeightType;
