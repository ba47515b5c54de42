//! The paged KV cache: per layer, one K and one V cache of
//! `[num_blocks, num_kv_heads, block_size, head_dim]` values (inside a
//! block K is stored transposed, see `llm_serve_kernels::attention`), held
//! by the backend of the model's device.

use crate::backend::{cpu::Cpu, Backend};
use crate::config::ModelConfig;
use crate::device::Device;
use crate::error::{ModelError, Result};
use candle_core::Tensor;
use llm_serve_kernels::attention::KvGeometry;

/// Precision of the cached K/V values (vLLM's `kv_cache_dtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheDtype {
    F32,
    /// f16, as llama.cpp caches K/V by default.
    F16,
}

impl CacheDtype {
    /// Bytes one cached value takes.
    pub fn bytes(self) -> usize {
        match self {
            CacheDtype::F32 => 4,
            CacheDtype::F16 => 2,
        }
    }
}

/// Every layer's (K, V), on one backend.
pub(crate) enum Layers {
    Cpu(Vec<(Tensor, Tensor)>),
}

pub struct KvCache {
    geom: KvGeometry,
    dtype: CacheDtype,
    pub(crate) layers: Layers,
}

impl KvCache {
    /// Bytes one block takes across all layers (K and V).
    pub fn bytes_per_block(cfg: &ModelConfig, block_size: usize, dtype: CacheDtype) -> usize {
        2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * block_size * dtype.bytes()
    }

    pub fn new(
        cfg: &ModelConfig,
        num_blocks: usize,
        block_size: usize,
        dtype: CacheDtype,
        device: &Device,
    ) -> Result<Self> {
        if num_blocks == 0 || block_size == 0 {
            return Err(ModelError::Unsupported(format!(
                "a KV cache needs at least one block of at least one token (got {num_blocks} blocks of {block_size})"
            )));
        }
        let geom = KvGeometry {
            num_blocks,
            block_size,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
        };
        let layers = match device {
            Device::Cpu => Layers::Cpu(
                (0..cfg.num_layers)
                    .map(|_| Ok((Cpu.cache(geom, dtype)?, Cpu.cache(geom, dtype)?)))
                    .collect::<Result<Vec<_>>>()?,
            ),
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => return Err(crate::llama::no_cuda_kernels(device)),
        };
        Ok(KvCache {
            geom,
            dtype,
            layers,
        })
    }

    pub fn geometry(&self) -> KvGeometry {
        self.geom
    }

    pub fn dtype(&self) -> CacheDtype {
        self.dtype
    }

    pub fn num_blocks(&self) -> usize {
        self.geom.num_blocks
    }

    pub fn block_size(&self) -> usize {
        self.geom.block_size
    }

    pub fn num_layers(&self) -> usize {
        match &self.layers {
            Layers::Cpu(l) => l.len(),
        }
    }
}
