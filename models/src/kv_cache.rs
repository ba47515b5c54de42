//! The paged KV cache: per layer, one K and one V tensor of
//! `[num_blocks, num_kv_heads, block_size, head_dim]`.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use candle_core::{DType, Device, Tensor};
use llm_serve_kernels::attention::{KvGeometry, KvPrecision};

/// Precision of the cached K/V values (vLLM's `kv_cache_dtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheDtype {
    F32,
    /// Values rounded to f16, as llama.cpp caches them by default. They
    /// are stored in f32 slots: the memory is that of an f32 cache.
    F16,
}

impl CacheDtype {
    /// Bytes one cached value takes.
    pub fn bytes(self) -> usize {
        4
    }

    pub fn precision(self) -> KvPrecision {
        match self {
            CacheDtype::F32 => KvPrecision::F32,
            CacheDtype::F16 => KvPrecision::F16,
        }
    }
}

pub struct KvCache {
    geom: KvGeometry,
    dtype: CacheDtype,
    layers: Vec<(Tensor, Tensor)>,
}

impl KvCache {
    /// Bytes one block takes across all layers (K and V).
    pub fn bytes_per_block(cfg: &ModelConfig, block_size: usize) -> usize {
        2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * block_size * CacheDtype::F32.bytes()
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
        let shape = (num_blocks, cfg.num_kv_heads, block_size, cfg.head_dim);
        let layers = (0..cfg.num_layers)
            .map(|_| {
                Ok((
                    Tensor::zeros(shape, DType::F32, device)?,
                    Tensor::zeros(shape, DType::F32, device)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
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

    pub(crate) fn layer(&self, i: usize) -> &(Tensor, Tensor) {
        &self.layers[i]
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
}
