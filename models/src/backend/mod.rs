//! The device seam. A backend owns, in its own device's form, everything a
//! forward pass touches: weights (projections, embedding tables, norm
//! vectors, the rotary table), the KV cache, activations and the per-step
//! metadata (token ids, positions, block tables, logits rows), and it
//! implements the handful of ops the architectures are written in. The
//! architecture code (`llama.rs`) is written once, over [`Backend`].
//!
//! Why not candle's `Device`: candle's CUDA device exists only with its
//! `cuda` feature, which needs nvcc at build time and links CUDA at link
//! time; llm-serve's CUDA backend must build without a toolkit and start
//! where only the driver exists (cudarc with dynamic loading, kernels
//! compiled by NVRTC at start-up). So each backend brings its own types:
//! the CPU backend keeps candle's CPU `Tensor` and runs our kernels as
//! candle custom ops (exactly the code the model ran before this seam);
//! a CUDA backend holds cudarc buffers.

pub(crate) mod cpu;

use crate::batch::StepInputs;
use crate::error::Result;
use crate::kv_cache::CacheDtype;
use candle_core::Tensor;
use llm_serve_kernels::attention::{KvGeometry, KvRole};
use llm_serve_kernels::lora::LoraSegment;
use llm_serve_kernels::rope::RopeTable;
use llm_serve_kernels::QMatrix;
use std::sync::Arc;

/// What an architecture needs from a device.
pub trait Backend: Send + Sync + Sized + 'static {
    /// Activations: a `[rows, width]` f32 matrix.
    type Act;
    /// A projection (row blocks of the stacked weight, optional bias).
    type Linear: Send + Sync;
    /// A weight matrix read by rows (embedding) or multiplied (output).
    type Table: Send + Sync;
    /// A norm's weights.
    type Vector: Send + Sync;
    type Rope: Send + Sync;
    /// One layer's K or V cache.
    type Cache: Send;
    /// One step's metadata, prepared once for every layer's ops.
    type Step<'a>;

    fn linear(&self, parts: Vec<QMatrix>, bias: Option<Vec<f32>>) -> Result<Self::Linear>;
    fn table(&self, m: Arc<QMatrix>) -> Result<Self::Table>;
    fn vector(&self, v: Vec<f32>) -> Result<Self::Vector>;
    fn rope_table(&self, t: RopeTable) -> Result<Self::Rope>;
    fn cache(&self, geom: KvGeometry, dtype: CacheDtype) -> Result<Self::Cache>;
    fn prepare<'a>(&self, inputs: &'a StepInputs) -> Result<Self::Step<'a>>;

    /// Embedding rows of the step's token ids.
    fn embed(&self, table: &Self::Table, step: &Self::Step<'_>) -> Result<Self::Act>;
    fn rms_norm(&self, x: &Self::Act, weight: &Self::Vector, eps: f32) -> Result<Self::Act>;
    /// `x W^T` (+ bias).
    fn matmul(&self, x: &Self::Act, w: &Self::Linear) -> Result<Self::Act>;
    /// Adds each segment's LoRA update to `y`, the projection of `x`.
    fn lora(&self, y: Self::Act, x: &Self::Act, segments: &[LoraSegment]) -> Result<Self::Act>;
    /// `x table^T` (the output projection).
    fn matmul_table(&self, x: &Self::Act, table: &Self::Table) -> Result<Self::Act>;
    /// Rotary embedding at the step's positions of the `heads * head_dim`
    /// columns of `x` from `first_col` on; the result has those columns.
    fn rope(
        &self,
        x: &Self::Act,
        rope: &Self::Rope,
        step: &Self::Step<'_>,
        first_col: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self::Act>;
    fn columns(&self, x: &Self::Act, first: usize, len: usize) -> Result<Self::Act>;
    /// Writes the step's new K or V rows into the cache.
    fn write_cache(
        &self,
        cache: &mut Self::Cache,
        x: &Self::Act,
        step: &Self::Step<'_>,
        geom: KvGeometry,
        role: KvRole,
    ) -> Result<()>;
    /// Paged attention of the step's queries over the cache.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &Self::Act,
        k: &Self::Cache,
        v: &Self::Cache,
        step: &Self::Step<'_>,
        geom: KvGeometry,
        num_heads: usize,
        scale: f32,
    ) -> Result<Self::Act>;
    fn add(&self, a: &Self::Act, b: &Self::Act) -> Result<Self::Act>;
    /// `(gate | up) -> silu(gate) * up`.
    fn silu_mul(&self, x: &Self::Act) -> Result<Self::Act>;
    /// The rows of `x` the step wants logits for.
    fn logits_rows(&self, x: Self::Act, step: &Self::Step<'_>) -> Result<Self::Act>;
    /// Logits `[rows, vocab]` as a host tensor for the sampler.
    fn to_host(&self, x: Self::Act) -> Result<Tensor>;
}
