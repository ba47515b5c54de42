//! The kernels as candle custom ops, so model code works on `Tensor`s and a
//! GPU backend can slot in its own implementation of each op.
//!
//! All ops take f32, row-major, contiguous inputs (what the model produces);
//! anything else is an error, not a silent copy.

use crate::attention::{paged_attention, write_cache, KvGeometry, KvPrecision, SeqSpan};
use crate::matmul::QMatrix;
use crate::rope::RopeTable;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp3, InplaceOp2, Layout, Result, Shape, Tensor,
};

fn f32s<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{op}: input must be contiguous")
    };
    match s {
        CpuStorage::F32(v) => Ok(&v[start..end]),
        _ => bail!("{op}: expected f32 input"),
    }
}

fn f32s_mut<'a>(op: &str, s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{op}: cache must be contiguous")
    };
    match s {
        CpuStorage::F32(v) => Ok(&mut v[start..end]),
        _ => bail!("{op}: expected an f32 cache"),
    }
}

fn kernel_err(e: crate::Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// Rows and the last dimension of a tensor seen as a matrix.
fn as_matrix(op: &str, l: &Layout) -> Result<(usize, usize)> {
    let dims = l.dims();
    let Some(&last) = dims.last() else {
        bail!("{op}: scalar input")
    };
    Ok((dims[..dims.len() - 1].iter().product(), last))
}

fn with_last_dim(l: &Layout, last: usize) -> Shape {
    let mut dims = l.dims().to_vec();
    if let Some(d) = dims.last_mut() {
        *d = last;
    }
    Shape::from(dims)
}

/// `x [.., K] -> x * W^T [.., N]` for a weight matrix in any format.
pub struct QMatMul<'a>(pub &'a QMatrix);

impl CustomOp1 for QMatMul<'_> {
    fn name(&self) -> &'static str {
        "qmatmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s("qmatmul", s, l)?;
        let (m, k) = as_matrix("qmatmul", l)?;
        if k != self.0.cols() {
            bail!("qmatmul: input has {k} columns, weight {:?}", self.0)
        }
        let mut out = vec![0f32; m * self.0.rows()];
        self.0.matmul(x, m, &mut out).map_err(kernel_err)?;
        Ok((CpuStorage::F32(out), with_last_dim(l, self.0.rows())))
    }
}

/// RMSNorm over the last dimension.
pub struct RmsNorm<'a> {
    pub weight: &'a [f32],
    pub eps: f32,
}

impl CustomOp1 for RmsNorm<'_> {
    fn name(&self) -> &'static str {
        "rms_norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s("rms_norm", s, l)?;
        let mut out = vec![0f32; x.len()];
        crate::norm::rms_norm(x, self.weight, self.eps, &mut out).map_err(kernel_err)?;
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// Rotary embedding of `[tokens, heads * head_dim]` at per-token positions.
pub struct Rope<'a> {
    pub table: &'a RopeTable,
    pub positions: &'a [usize],
    pub num_heads: usize,
    pub head_dim: usize,
}

impl CustomOp1 for Rope<'_> {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut x = f32s("rope", s, l)?.to_vec();
        self.table
            .apply(&mut x, self.positions, self.num_heads, self.head_dim)
            .map_err(kernel_err)?;
        Ok((CpuStorage::F32(x), l.shape().clone()))
    }
}

/// `[.., 2I] (gate | up) -> silu(gate) * up [.., I]`.
pub struct SiluMul;

impl CustomOp1 for SiluMul {
    fn name(&self) -> &'static str {
        "silu_mul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s("silu_mul", s, l)?;
        let (_, two_i) = as_matrix("silu_mul", l)?;
        if two_i % 2 != 0 {
            bail!("silu_mul: odd last dimension {two_i}")
        }
        let mut out = vec![0f32; x.len() / 2];
        crate::activation::silu_mul(x, two_i / 2, &mut out).map_err(kernel_err)?;
        Ok((CpuStorage::F32(out), with_last_dim(l, two_i / 2)))
    }
}

/// Rows of an embedding table (any format) for u32 token ids.
pub struct Embedding<'a>(pub &'a QMatrix);

impl CustomOp1 for Embedding<'_> {
    fn name(&self) -> &'static str {
        "embedding"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            bail!("embedding: ids must be contiguous")
        };
        let CpuStorage::U32(ids) = s else {
            bail!("embedding: ids must be u32")
        };
        let ids = &ids[start..end];
        let h = self.0.cols();
        let mut out = vec![0f32; ids.len() * h];
        for (&id, row) in ids.iter().zip(out.chunks_exact_mut(h)) {
            if id as usize >= self.0.rows() {
                bail!(
                    "token id {id} is outside the vocabulary of {}",
                    self.0.rows()
                )
            }
            self.0
                .dequantize_row(id as usize, row)
                .map_err(kernel_err)?;
        }
        let mut dims = l.dims().to_vec();
        dims.push(h);
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// Writes new K or V rows into a paged cache tensor in place.
pub struct WriteCache<'a> {
    pub geom: KvGeometry,
    pub seqs: &'a [SeqSpan<'a>],
    pub precision: KvPrecision,
}

impl InplaceOp2 for WriteCache<'_> {
    fn name(&self) -> &'static str {
        "write_cache"
    }

    fn cpu_fwd(&self, c: &mut CpuStorage, cl: &Layout, x: &CpuStorage, xl: &Layout) -> Result<()> {
        let x = f32s("write_cache", x, xl)?;
        let cache = f32s_mut("write_cache", c, cl)?;
        write_cache(&self.geom, cache, x, self.seqs, self.precision).map_err(kernel_err)
    }
}

/// Paged attention: `(q, k_cache, v_cache) -> out` shaped like `q`.
pub struct PagedAttention<'a> {
    pub geom: KvGeometry,
    pub num_heads: usize,
    pub seqs: &'a [SeqSpan<'a>],
    pub scale: f32,
}

impl CustomOp3 for PagedAttention<'_> {
    fn name(&self) -> &'static str {
        "paged_attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = f32s("paged_attention", qs, ql)?;
        let k = f32s("paged_attention", ks, kl)?;
        let v = f32s("paged_attention", vs, vl)?;
        let mut out = vec![0f32; q.len()];
        paged_attention(
            &self.geom,
            q,
            k,
            v,
            self.num_heads,
            self.seqs,
            self.scale,
            &mut out,
        )
        .map_err(kernel_err)?;
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }
}

/// Applies an op that needs no gradient (the model never trains).
pub trait ApplyExt {
    fn op1<C: CustomOp1>(&self, c: &C) -> Result<Tensor>;
}

impl ApplyExt for Tensor {
    fn op1<C: CustomOp1>(&self, c: &C) -> Result<Tensor> {
        self.apply_op1_no_bwd(c)
    }
}
