//! The kernels as candle custom ops, so model code works on `Tensor`s and a
//! GPU backend can slot in its own implementation of each op.
//!
//! All ops take f32, row-major, contiguous inputs (what the model produces);
//! anything else is an error, not a silent copy.

use crate::attention::{
    paged_attention, write_cache, KvGeometry, KvRole, KvSlice, KvSliceMut, SeqSpan,
};
use crate::lora::{lora_apply, LoraSegment};
use crate::matmul::QMatrix;
use crate::rope::RopeTable;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, InplaceOp2, Layout, Result, Shape, Tensor,
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

/// A K or V cache tensor's values (f32 or f16).
fn kv_slice<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<KvSlice<'a>> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{op}: cache must be contiguous")
    };
    match s {
        CpuStorage::F32(v) => Ok(KvSlice::F32(&v[start..end])),
        CpuStorage::F16(v) => Ok(KvSlice::F16(&v[start..end])),
        _ => bail!("{op}: expected an f32 or f16 cache"),
    }
}

fn kv_slice_mut<'a>(op: &str, s: &'a mut CpuStorage, l: &Layout) -> Result<KvSliceMut<'a>> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{op}: cache must be contiguous")
    };
    match s {
        CpuStorage::F32(v) => Ok(KvSliceMut::F32(&mut v[start..end])),
        CpuStorage::F16(v) => Ok(KvSliceMut::F16(&mut v[start..end])),
        _ => bail!("{op}: expected an f32 or f16 cache"),
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

/// Rotary embedding at per-token positions of the `num_heads * head_dim`
/// columns starting at `first_col` of each row of a `[tokens, width]` input
/// (the query or key part of a fused QKV projection); the output is
/// `[tokens, num_heads * head_dim]`.
pub struct Rope<'a> {
    pub table: &'a RopeTable,
    pub positions: &'a [usize],
    pub first_col: usize,
    pub num_heads: usize,
    pub head_dim: usize,
}

impl CustomOp1 for Rope<'_> {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let cols = self.num_heads * self.head_dim;
        let mut x = columns("rope", s, l, self.first_col, cols)?;
        self.table
            .apply(&mut x, self.positions, self.num_heads, self.head_dim)
            .map_err(kernel_err)?;
        Ok((CpuStorage::F32(x), with_last_dim(l, cols)))
    }
}

/// Columns `first..first + len` of every row of a matrix.
pub struct Columns {
    pub first: usize,
    pub len: usize,
}

impl CustomOp1 for Columns {
    fn name(&self) -> &'static str {
        "columns"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = columns("columns", s, l, self.first, self.len)?;
        Ok((CpuStorage::F32(x), with_last_dim(l, self.len)))
    }
}

/// Copies columns `first..first + len` of each row into a new matrix.
fn columns(op: &str, s: &CpuStorage, l: &Layout, first: usize, len: usize) -> Result<Vec<f32>> {
    let x = f32s(op, s, l)?;
    let (rows, width) = as_matrix(op, l)?;
    if first + len > width {
        bail!("{op}: columns {first}..{} of rows of {width}", first + len)
    }
    let mut out = Vec::with_capacity(rows * len);
    for row in x.chunks_exact(width) {
        out.extend_from_slice(&row[first..first + len]);
    }
    Ok(out)
}

/// `a + b` for two tensors of the same shape (the residual connections):
/// one pass on the calling thread, which for activation-sized tensors is
/// cheaper than any fork-join.
pub struct Add;

impl CustomOp2 for Add {
    fn name(&self) -> &'static str {
        "add"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if al.shape() != bl.shape() {
            bail!("add: shapes {:?} and {:?} differ", al.shape(), bl.shape())
        }
        let (a, b) = (f32s("add", a, al)?, f32s("add", b, bl)?);
        let out = a.iter().zip(b).map(|(x, y)| x + y).collect();
        Ok((CpuStorage::F32(out), al.shape().clone()))
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
    pub role: KvRole,
}

impl InplaceOp2 for WriteCache<'_> {
    fn name(&self) -> &'static str {
        "write_cache"
    }

    fn cpu_fwd(&self, c: &mut CpuStorage, cl: &Layout, x: &CpuStorage, xl: &Layout) -> Result<()> {
        let x = f32s("write_cache", x, xl)?;
        let cache = kv_slice_mut("write_cache", c, cl)?;
        write_cache(&self.geom, cache, x, self.seqs, self.role).map_err(kernel_err)
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
        let k = kv_slice("paged_attention", ks, kl)?;
        let v = kv_slice("paged_attention", vs, vl)?;
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

/// The LoRA update of a projection's output `y` (in place) from its input
/// `x`: `y[rows] += (x[rows] A^T) Bt` for every segment.
pub struct LoraUpdate<'a> {
    pub segments: &'a [LoraSegment<'a>],
}

impl InplaceOp2 for LoraUpdate<'_> {
    fn name(&self) -> &'static str {
        "lora_update"
    }

    fn cpu_fwd(&self, y: &mut CpuStorage, yl: &Layout, x: &CpuStorage, xl: &Layout) -> Result<()> {
        let (_, in_features) = as_matrix("lora_update", xl)?;
        let (_, out_features) = as_matrix("lora_update", yl)?;
        let x = f32s("lora_update", x, xl)?;
        let Some((start, end)) = yl.contiguous_offsets() else {
            bail!("lora_update: output must be contiguous")
        };
        let CpuStorage::F32(y) = y else {
            bail!("lora_update: expected an f32 output")
        };
        lora_apply(
            x,
            in_features,
            &mut y[start..end],
            out_features,
            self.segments,
        )
        .map_err(kernel_err)
    }
}

/// Applies an op that needs no gradient (the model never trains).
pub trait ApplyExt {
    fn op1<C: CustomOp1>(&self, c: &C) -> Result<Tensor>;
    fn op2<C: CustomOp2>(&self, other: &Tensor, c: &C) -> Result<Tensor>;
}

impl ApplyExt for Tensor {
    fn op1<C: CustomOp1>(&self, c: &C) -> Result<Tensor> {
        self.apply_op1_no_bwd(c)
    }

    fn op2<C: CustomOp2>(&self, other: &Tensor, c: &C) -> Result<Tensor> {
        self.apply_op2_no_bwd(other, c)
    }
}
