//! The paged KV cache: per layer, one K and one V tensor of
//! `[num_blocks, num_kv_heads, block_size, head_dim]` values (inside a
//! block K is stored transposed, see `llm_serve_kernels::attention`).

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use candle_core::{Device, Tensor};
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

    /// A tensor of zeros whose pages the OS supplies on first touch (a
    /// large cache costs nothing until its blocks are used).
    fn zeros(self, shape: (usize, usize, usize, usize), device: &Device) -> Result<Tensor> {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        Ok(match self {
            CacheDtype::F32 => Tensor::from_vec(vec![0f32; n], shape, device)?,
            CacheDtype::F16 => {
                let values: Vec<half::f16> = bytemuck::allocation::cast_vec(vec![0u16; n]);
                Tensor::from_vec(values, shape, device)?
            }
        })
    }
}

pub struct KvCache {
    geom: KvGeometry,
    dtype: CacheDtype,
    layers: Vec<(Tensor, Tensor)>,
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
        let shape = (num_blocks, cfg.num_kv_heads, block_size, cfg.head_dim);
        let layers = (0..cfg.num_layers)
            .map(|_| Ok((dtype.zeros(shape, device)?, dtype.zeros(shape, device)?)))
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
