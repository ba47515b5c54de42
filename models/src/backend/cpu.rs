//! The CPU backend: candle CPU tensors, with llm-serve's kernels (SIMD
//! quantized matmuls, paged attention, rotary, norms) as candle custom ops.
//! Weights stay in the kernels' matrix formats in host memory.

use super::Backend;
use crate::batch::StepInputs;
use crate::error::Result;
use crate::kv_cache::CacheDtype;
use crate::linear::Linear;
use candle_core::{Device, Tensor};
use llm_serve_kernels::attention::{KvGeometry, KvRole, SeqSpan};
use llm_serve_kernels::lora::LoraSegment;
use llm_serve_kernels::ops::{
    Add, ApplyExt, Columns, Embedding, LoraUpdate, PagedAttention, QMatMul, RmsNorm, Rope, SiluMul,
    WriteCache,
};
use llm_serve_kernels::rope::RopeTable;
use llm_serve_kernels::QMatrix;
use std::sync::Arc;

pub struct Cpu;

/// A step's metadata as the CPU kernels read it.
pub struct CpuStep<'a> {
    ids: Tensor,
    positions: &'a [usize],
    spans: Vec<SeqSpan<'a>>,
    /// The logits rows, unless they are every row.
    wanted: Option<Tensor>,
}

impl Backend for Cpu {
    type Act = Tensor;
    type Linear = Linear;
    type Table = Arc<QMatrix>;
    type Vector = Vec<f32>;
    type Rope = RopeTable;
    type Cache = Tensor;
    type Step<'a> = CpuStep<'a>;

    fn linear(&self, parts: Vec<QMatrix>, bias: Option<Vec<f32>>) -> Result<Linear> {
        Linear::stacked(parts, bias, &Device::Cpu)
    }

    fn table(&self, m: Arc<QMatrix>) -> Result<Arc<QMatrix>> {
        Ok(m)
    }

    fn vector(&self, v: Vec<f32>) -> Result<Vec<f32>> {
        Ok(v)
    }

    fn rope_table(&self, t: RopeTable) -> Result<RopeTable> {
        Ok(t)
    }

    /// Zeros whose pages the OS supplies on first touch (a large cache
    /// costs nothing until its blocks are used).
    fn cache(&self, geom: KvGeometry, dtype: CacheDtype) -> Result<Tensor> {
        let shape = (
            geom.num_blocks,
            geom.num_kv_heads,
            geom.block_size,
            geom.head_dim,
        );
        let n = geom.layer_len();
        Ok(match dtype {
            CacheDtype::F32 => Tensor::from_vec(vec![0f32; n], shape, &Device::Cpu)?,
            CacheDtype::F16 => {
                let values: Vec<half::f16> = bytemuck::allocation::cast_vec(vec![0u16; n]);
                Tensor::from_vec(values, shape, &Device::Cpu)?
            }
        })
    }

    fn prepare<'a>(&self, inputs: &'a StepInputs) -> Result<CpuStep<'a>> {
        let n = inputs.num_tokens();
        let wanted = if inputs.logits_rows.len() == n {
            None
        } else {
            Some(Tensor::from_vec(
                inputs.logits_rows.clone(),
                inputs.logits_rows.len(),
                &Device::Cpu,
            )?)
        };
        Ok(CpuStep {
            ids: Tensor::from_vec(inputs.token_ids.clone(), n, &Device::Cpu)?,
            positions: &inputs.positions,
            spans: inputs.spans(),
            wanted,
        })
    }

    fn embed(&self, table: &Arc<QMatrix>, step: &CpuStep) -> Result<Tensor> {
        Ok(step.ids.op1(&Embedding(table))?)
    }

    fn rms_norm(&self, x: &Tensor, weight: &Vec<f32>, eps: f32) -> Result<Tensor> {
        Ok(x.op1(&RmsNorm { weight, eps })?)
    }

    fn matmul(&self, x: &Tensor, w: &Linear) -> Result<Tensor> {
        w.forward(x)
    }

    fn lora(&self, y: Tensor, x: &Tensor, segments: &[LoraSegment]) -> Result<Tensor> {
        y.inplace_op2(x, &LoraUpdate { segments })?;
        Ok(y)
    }

    fn matmul_table(&self, x: &Tensor, table: &Arc<QMatrix>) -> Result<Tensor> {
        Ok(x.op1(&QMatMul(table))?)
    }

    fn rope(
        &self,
        x: &Tensor,
        rope: &RopeTable,
        step: &CpuStep,
        first_col: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Tensor> {
        Ok(x.op1(&Rope {
            table: rope,
            positions: step.positions,
            first_col,
            num_heads: heads,
            head_dim,
        })?)
    }

    fn columns(&self, x: &Tensor, first: usize, len: usize) -> Result<Tensor> {
        Ok(x.op1(&Columns { first, len })?)
    }

    fn write_cache(
        &self,
        cache: &mut Tensor,
        x: &Tensor,
        step: &CpuStep,
        geom: KvGeometry,
        role: KvRole,
    ) -> Result<()> {
        Ok(cache.inplace_op2(
            x,
            &WriteCache {
                geom,
                seqs: &step.spans,
                role,
            },
        )?)
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        step: &CpuStep,
        geom: KvGeometry,
        num_heads: usize,
        scale: f32,
    ) -> Result<Tensor> {
        Ok(q.apply_op3_no_bwd(
            k,
            v,
            &PagedAttention {
                geom,
                num_heads,
                seqs: &step.spans,
                scale,
            },
        )?)
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok(a.op2(b, &Add)?)
    }

    fn silu_mul(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.op1(&SiluMul)?)
    }

    fn logits_rows(&self, x: Tensor, step: &CpuStep) -> Result<Tensor> {
        Ok(match &step.wanted {
            None => x,
            Some(rows) => x.index_select(rows, 0)?,
        })
    }

    fn to_host(&self, x: Tensor) -> Result<Tensor> {
        Ok(x)
    }
}
