//! Paged attention on the CPU.
//!
//! A layer's KV cache is a pool of fixed-size blocks; each sequence names
//! its blocks in a block table. Inside a block, for each KV head, V is
//! stored `[block_size, head_dim]` (a key position's values are contiguous,
//! for the weighted sum) and K transposed, `[head_dim, block_size]` (one
//! dimension of consecutive keys is contiguous, so a SIMD register scores 16
//! keys against a query with no horizontal sums). Values are f32, or f16
//! (llama.cpp's default cache type: half the memory and bandwidth).
//!
//! One call handles a ragged batch: every sequence contributes `len` new
//! query tokens (a prefill chunk or a single decode token) that attend
//! causally to the `context_len` tokens now in its cache. Query heads share
//! KV heads in groups (GQA). Softmax is computed online over runs of up to
//! 16 keys, so memory stays flat however long the context.
//!
//! Every query's output is computed by the same operations in the same
//! order whatever else is in the batch or the task, so attention keeps the
//! model's outputs batch-invariant.

mod avx512;
mod portable;

use crate::cpu::{simd_level, SimdLevel};
use crate::{shape_err, Result};
use half::f16;
use std::cell::RefCell;

/// Shape of one layer's paged K (or V) cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvGeometry {
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl KvGeometry {
    /// Values in one layer's K (or V) cache.
    pub fn layer_len(&self) -> usize {
        self.num_blocks * self.num_kv_heads * self.block_size * self.head_dim
    }

    /// Where the values of `head` in `block` start.
    #[inline(always)]
    fn head_base(&self, block: usize, head: usize) -> usize {
        (block * self.num_kv_heads + head) * self.block_size * self.head_dim
    }
}

/// Which of the two caches a write goes to (they are laid out differently).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvRole {
    Key,
    Value,
}

/// One layer's K or V cache, read-only.
#[derive(Clone, Copy, Debug)]
pub enum KvSlice<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl KvSlice<'_> {
    fn len(&self) -> usize {
        match self {
            KvSlice::F32(s) => s.len(),
            KvSlice::F16(s) => s.len(),
        }
    }
}

/// One layer's K or V cache, for writing.
#[derive(Debug)]
pub enum KvSliceMut<'a> {
    F32(&'a mut [f32]),
    F16(&'a mut [f16]),
}

impl KvSliceMut<'_> {
    fn len(&self) -> usize {
        match self {
            KvSliceMut::F32(s) => s.len(),
            KvSliceMut::F16(s) => s.len(),
        }
    }
}

/// One sequence's part of a ragged batch.
#[derive(Clone, Copy, Debug)]
pub struct SeqSpan<'a> {
    /// Row of its first new token in the flattened batch.
    pub start: usize,
    /// New tokens this step.
    pub len: usize,
    /// Tokens in its cache once this step's tokens are written.
    pub context_len: usize,
    /// Cache blocks holding positions `[i * block_size, (i + 1) * block_size)`.
    pub block_table: &'a [u32],
}

fn validate(geom: &KvGeometry, seqs: &[SeqSpan], tokens: usize) -> Result<()> {
    for (i, s) in seqs.iter().enumerate() {
        if s.len > s.context_len || s.start + s.len > tokens {
            return Err(shape_err(
                "paged attention",
                format!("sequence {i}: {s:?} does not fit a batch of {tokens} tokens"),
            ));
        }
        let needed = s.context_len.div_ceil(geom.block_size);
        if s.block_table.len() < needed {
            return Err(shape_err(
                "paged attention",
                format!(
                    "sequence {i}: {} tokens need {needed} blocks, block table has {}",
                    s.context_len,
                    s.block_table.len()
                ),
            ));
        }
        if let Some(b) = s.block_table[..needed]
            .iter()
            .find(|&&b| b as usize >= geom.num_blocks)
        {
            return Err(shape_err(
                "paged attention",
                format!(
                    "sequence {i}: block {b} outside a cache of {}",
                    geom.num_blocks
                ),
            ));
        }
    }
    Ok(())
}

/// Stores each sequence's new K (or V) rows, `[tokens, num_kv_heads,
/// head_dim]`, in its cache slots (rounded to f16 for an f16 cache).
pub fn write_cache(
    geom: &KvGeometry,
    cache: KvSliceMut,
    x: &[f32],
    seqs: &[SeqSpan],
    role: KvRole,
) -> Result<()> {
    let row = geom.num_kv_heads * geom.head_dim;
    if row == 0 || !x.len().is_multiple_of(row) || cache.len() != geom.layer_len() {
        return Err(shape_err(
            "write_cache",
            format!(
                "{} values into a cache of {} for {geom:?}",
                x.len(),
                cache.len()
            ),
        ));
    }
    validate(geom, seqs, x.len() / row)?;
    match cache {
        KvSliceMut::F32(c) => write_rows(geom, c, x, seqs, role, |v| v),
        KvSliceMut::F16(c) => write_rows(geom, c, x, seqs, role, f16::from_f32),
    }
    Ok(())
}

fn write_rows<E: Copy>(
    geom: &KvGeometry,
    cache: &mut [E],
    x: &[f32],
    seqs: &[SeqSpan],
    role: KvRole,
    convert: impl Fn(f32) -> E,
) {
    let (d, bs) = (geom.head_dim, geom.block_size);
    for s in seqs {
        let first_pos = s.context_len - s.len;
        for i in 0..s.len {
            let pos = first_pos + i;
            let block = s.block_table[pos / bs] as usize;
            let slot = pos % bs;
            let t = s.start + i;
            for h in 0..geom.num_kv_heads {
                let base = geom.head_base(block, h);
                let src = &x[(t * geom.num_kv_heads + h) * d..][..d];
                match role {
                    KvRole::Value => {
                        let dst = &mut cache[base + slot * d..][..d];
                        for (c, &v) in dst.iter_mut().zip(src) {
                            *c = convert(v);
                        }
                    }
                    KvRole::Key => {
                        for (dim, &v) in src.iter().enumerate() {
                            cache[base + dim * bs + slot] = convert(v);
                        }
                    }
                }
            }
        }
    }
}

/// Query tokens of one sequence handled by one task.
const QUERY_TILE: usize = 16;

/// Causal attention of each sequence's new queries over its cached keys.
/// `q` and `out` are `[tokens, num_heads, head_dim]`; `k_cache` and
/// `v_cache` are one layer's caches, of the same element type.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    geom: &KvGeometry,
    q: &[f32],
    k_cache: KvSlice,
    v_cache: KvSlice,
    num_heads: usize,
    seqs: &[SeqSpan],
    scale: f32,
    out: &mut [f32],
) -> Result<()> {
    let d = geom.head_dim;
    let row = num_heads * d;
    let same_type = matches!(
        (k_cache, v_cache),
        (KvSlice::F32(_), KvSlice::F32(_)) | (KvSlice::F16(_), KvSlice::F16(_))
    );
    if num_heads == 0
        || geom.num_kv_heads == 0
        || !num_heads.is_multiple_of(geom.num_kv_heads)
        || !q.len().is_multiple_of(row)
        || out.len() != q.len()
        || k_cache.len() != geom.layer_len()
        || v_cache.len() != geom.layer_len()
        || !same_type
    {
        return Err(shape_err(
            "paged attention",
            format!("q {} values, {num_heads} heads, {geom:?}", q.len()),
        ));
    }
    validate(geom, seqs, q.len() / row)?;
    let mut items = Vec::new();
    for (si, s) in seqs.iter().enumerate() {
        for g in 0..geom.num_kv_heads {
            let mut t0 = 0;
            while t0 < s.len {
                items.push((si, g, t0, QUERY_TILE.min(s.len - t0)));
                t0 += QUERY_TILE;
            }
        }
    }
    let out_ptr = OutPtr(out.as_mut_ptr());
    let kernel = Kernel::pick(d);
    crate::threads::parallel_for(items.len(), |i| {
        let (si, g, t0, tl) = items[i];
        let job = Job {
            geom,
            q,
            k_cache,
            v_cache,
            num_heads,
            seq: &seqs[si],
            kv_head: g,
            tile_start: t0,
            tile_len: tl,
            scale,
            out: out_ptr,
        };
        job.run(kernel);
    });
    Ok(())
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every job writes only the output rows of its own (sequence, query
// tile, head group), which no other job writes.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// The implementation used for a head size on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Avx512,
    Avx2,
    Portable,
}

impl Kernel {
    fn pick(head_dim: usize) -> Kernel {
        let level = simd_level();
        if cfg!(target_arch = "x86_64") && level >= SimdLevel::Avx512 && avx512::supports(head_dim)
        {
            Kernel::Avx512
        } else if cfg!(target_arch = "x86_64") && level >= SimdLevel::Avx2 {
            Kernel::Avx2
        } else {
            Kernel::Portable
        }
    }
}

/// The queries of one task, gathered and scaled, and what they may see.
pub(crate) struct Tile<'a, E> {
    pub head_dim: usize,
    pub block_size: usize,
    pub block_table: &'a [u32],
    /// Offset of this task's KV head inside a block (in values).
    pub head_offset: usize,
    /// Values per block (all heads).
    pub block_stride: usize,
    pub k: &'a [E],
    pub v: &'a [E],
    /// `nq` rows of `head_dim`, already multiplied by the softmax scale.
    pub queries: &'a [f32],
    /// The last key position each query attends to (non-decreasing).
    pub limits: &'a [usize],
}

impl<E> Tile<'_, E> {
    /// Where the values of the block holding `pos` start for this head.
    #[inline(always)]
    pub fn base(&self, pos: usize) -> usize {
        self.block_table[pos / self.block_size] as usize * self.block_stride + self.head_offset
    }
}

struct Job<'a> {
    geom: &'a KvGeometry,
    q: &'a [f32],
    k_cache: KvSlice<'a>,
    v_cache: KvSlice<'a>,
    num_heads: usize,
    seq: &'a SeqSpan<'a>,
    kv_head: usize,
    tile_start: usize,
    tile_len: usize,
    scale: f32,
    out: OutPtr,
}

thread_local! {
    /// Per-thread scratch: gathered queries, their limits, their outputs.
    static SCRATCH: RefCell<(Vec<f32>, Vec<usize>, Vec<f32>)> = const {
        RefCell::new((Vec::new(), Vec::new(), Vec::new()))
    };
}

impl Job<'_> {
    fn run(&self, kernel: Kernel) {
        SCRATCH.with(|scratch| {
            let (queries, limits, out) = &mut *scratch.borrow_mut();
            self.gather(queries, limits);
            out.clear();
            out.resize(queries.len(), 0.0);
            match (self.k_cache, self.v_cache) {
                (KvSlice::F32(k), KvSlice::F32(v)) => {
                    self.attend(kernel, &self.tile(k, v, queries, limits), out)
                }
                (KvSlice::F16(k), KvSlice::F16(v)) => {
                    self.attend(kernel, &self.tile(k, v, queries, limits), out)
                }
                // `paged_attention` checked that both caches have one type.
                _ => {}
            }
            self.scatter(out);
        })
    }

    fn tile<'b, E>(
        &'b self,
        k: &'b [E],
        v: &'b [E],
        queries: &'b [f32],
        limits: &'b [usize],
    ) -> Tile<'b, E> {
        let geom = self.geom;
        Tile {
            head_dim: geom.head_dim,
            block_size: geom.block_size,
            block_table: self.seq.block_table,
            head_offset: geom.head_base(0, self.kv_head),
            block_stride: geom.num_kv_heads * geom.block_size * geom.head_dim,
            k,
            v,
            queries,
            limits,
        }
    }

    fn attend<E: portable::Element + avx512::Element>(
        &self,
        kernel: Kernel,
        tile: &Tile<E>,
        out: &mut [f32],
    ) {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: picked only on CPUs with AVX-512 F/BW/VL, FMA and
            // F16C, for a supported head size.
            Kernel::Avx512 => unsafe { avx512::attend(tile, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: picked only on CPUs with AVX2, FMA and F16C.
            Kernel::Avx2 => unsafe { portable::attend_avx2(tile, out) },
            _ => portable::attend(tile, out),
        }
    }

    /// The tile's query rows (`tile_len` tokens x the head group), scaled,
    /// and the last key position each may see.
    fn gather(&self, queries: &mut Vec<f32>, limits: &mut Vec<usize>) {
        let d = self.geom.head_dim;
        let group = self.num_heads / self.geom.num_kv_heads;
        let first_pos = self.seq.context_len - self.seq.len;
        queries.clear();
        limits.clear();
        for i in 0..self.tile_len {
            let t = self.seq.start + self.tile_start + i;
            for hh in 0..group {
                let h = self.kv_head * group + hh;
                let src = &self.q[(t * self.num_heads + h) * d..][..d];
                queries.extend(src.iter().map(|&v| v * self.scale));
                limits.push(first_pos + self.tile_start + i);
            }
        }
    }

    /// Writes each query's output to its row and head.
    fn scatter(&self, out: &[f32]) {
        let d = self.geom.head_dim;
        let group = self.num_heads / self.geom.num_kv_heads;
        for (qi, o) in out.chunks_exact(d).enumerate() {
            let (i, hh) = (qi / group, qi % group);
            let t = self.seq.start + self.tile_start + i;
            let h = self.kv_head * group + hh;
            // SAFETY: row t, head h belong to this job alone (OutPtr) and
            // lie inside the output checked by the caller.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(self.out.0.add((t * self.num_heads + h) * d), d)
            };
            dst.copy_from_slice(o);
        }
    }
}
