//! Paged attention on the CPU.
//!
//! A layer's KV cache is a pool of fixed-size blocks laid out
//! `[num_blocks, num_kv_heads, block_size, head_dim]`; each sequence names
//! its blocks in a block table. One call handles a ragged batch: every
//! sequence contributes `len` new query tokens (a prefill chunk or a single
//! decode token) that attend causally to the `context_len` tokens now in its
//! cache. Query heads share KV heads in groups (GQA). Softmax is computed
//! online (one pass over the keys, rescaling as the running max grows), so
//! memory stays flat however long the context.

use crate::cpu::{simd_level, SimdLevel};
use crate::{shape_err, Result};

/// Shape of one layer's paged K (or V) cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvGeometry {
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl KvGeometry {
    /// f32 values in one layer's K (or V) cache.
    pub fn layer_len(&self) -> usize {
        self.num_blocks * self.num_kv_heads * self.block_size * self.head_dim
    }

    #[inline(always)]
    fn offset(&self, block: usize, head: usize, slot: usize) -> usize {
        ((block * self.num_kv_heads + head) * self.block_size + slot) * self.head_dim
    }
}

/// The precision K/V values are kept at in the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvPrecision {
    /// Full f32.
    #[default]
    F32,
    /// Rounded to f16 on write (llama.cpp's default cache type). The values
    /// are still stored in f32 slots.
    F16,
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
/// head_dim]`, in its cache slots.
pub fn write_cache(
    geom: &KvGeometry,
    cache: &mut [f32],
    x: &[f32],
    seqs: &[SeqSpan],
    precision: KvPrecision,
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
    let d = geom.head_dim;
    for s in seqs {
        let first_pos = s.context_len - s.len;
        for i in 0..s.len {
            let pos = first_pos + i;
            let block = s.block_table[pos / geom.block_size] as usize;
            let slot = pos % geom.block_size;
            let t = s.start + i;
            for h in 0..geom.num_kv_heads {
                let dst = geom.offset(block, h, slot);
                let src = (t * geom.num_kv_heads + h) * d;
                let (to, from) = (&mut cache[dst..dst + d], &x[src..src + d]);
                match precision {
                    KvPrecision::F32 => to.copy_from_slice(from),
                    KvPrecision::F16 => {
                        for (c, v) in to.iter_mut().zip(from) {
                            *c = half::f16::from_f32(*v).to_f32();
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Query tokens of one sequence handled by one task.
const QUERY_TILE: usize = 16;

/// Causal attention of each sequence's new queries over its cached keys.
/// `q` and `out` are `[tokens, num_heads, head_dim]`.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    geom: &KvGeometry,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    num_heads: usize,
    seqs: &[SeqSpan],
    scale: f32,
    out: &mut [f32],
) -> Result<()> {
    let d = geom.head_dim;
    let row = num_heads * d;
    if num_heads == 0
        || geom.num_kv_heads == 0
        || !num_heads.is_multiple_of(geom.num_kv_heads)
        || !q.len().is_multiple_of(row)
        || out.len() != q.len()
        || k_cache.len() != geom.layer_len()
        || v_cache.len() != geom.layer_len()
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
    let level = simd_level();
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
        job.run(level);
    });
    Ok(())
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every job writes only the output rows of its own (sequence, query
// tile, head group), which no other job writes.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

struct Job<'a> {
    geom: &'a KvGeometry,
    q: &'a [f32],
    k_cache: &'a [f32],
    v_cache: &'a [f32],
    num_heads: usize,
    seq: &'a SeqSpan<'a>,
    kv_head: usize,
    tile_start: usize,
    tile_len: usize,
    scale: f32,
    out: OutPtr,
}

impl Job<'_> {
    fn run(&self, level: SimdLevel) {
        #[cfg(target_arch = "x86_64")]
        {
            if level >= SimdLevel::Avx512 {
                // SAFETY: the CPU reported AVX-512F.
                return unsafe { self.run_avx512() };
            }
            if level >= SimdLevel::Avx2 {
                // SAFETY: the CPU reported AVX2 and FMA.
                return unsafe { self.run_avx2() };
            }
        }
        let _ = level;
        self.run_generic()
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn run_avx512(&self) {
        self.run_generic()
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self) {
        self.run_generic()
    }

    #[inline(always)]
    fn run_generic(&self) {
        let geom = self.geom;
        let d = geom.head_dim;
        let group = self.num_heads / geom.num_kv_heads;
        let nq = self.tile_len * group;
        let first_pos = self.seq.context_len - self.seq.len;
        let mut qs = vec![0f32; nq * d];
        let mut max = vec![f32::NEG_INFINITY; nq];
        let mut denom = vec![0f32; nq];
        let mut acc = vec![0f32; nq * d];
        let mut limits = vec![0usize; nq];
        for i in 0..self.tile_len {
            let t = self.seq.start + self.tile_start + i;
            for hh in 0..group {
                let h = self.kv_head * group + hh;
                let src = (t * self.num_heads + h) * d;
                let qi = i * group + hh;
                for (dst, &v) in qs[qi * d..(qi + 1) * d]
                    .iter_mut()
                    .zip(&self.q[src..src + d])
                {
                    *dst = v * self.scale;
                }
                limits[qi] = first_pos + self.tile_start + i;
            }
        }
        let last_pos = first_pos + self.tile_start + self.tile_len - 1;
        let bs = geom.block_size;
        let mut scores = vec![0f32; bs];
        for b in 0..=last_pos / bs {
            let block = self.seq.block_table[b] as usize;
            let base = geom.offset(block, self.kv_head, 0);
            let kb = &self.k_cache[base..base + bs * d];
            let vb = &self.v_cache[base..base + bs * d];
            let key0 = b * bs;
            for qi in 0..nq {
                let limit = limits[qi];
                if key0 > limit {
                    continue;
                }
                let n = bs.min(limit + 1 - key0);
                let qv = &qs[qi * d..(qi + 1) * d];
                let mut bmax = f32::NEG_INFINITY;
                for (j, s) in scores[..n].iter_mut().enumerate() {
                    *s = dot(qv, &kb[j * d..(j + 1) * d]);
                    bmax = bmax.max(*s);
                }
                let new_max = max[qi].max(bmax);
                let a = &mut acc[qi * d..(qi + 1) * d];
                if new_max > max[qi] && max[qi] != f32::NEG_INFINITY {
                    let corr = (max[qi] - new_max).exp();
                    denom[qi] *= corr;
                    for x in a.iter_mut() {
                        *x *= corr;
                    }
                }
                max[qi] = new_max;
                let mut sum = 0f32;
                for (j, &s) in scores[..n].iter().enumerate() {
                    let p = (s - new_max).exp();
                    sum += p;
                    axpy(a, p, &vb[j * d..(j + 1) * d]);
                }
                denom[qi] += sum;
            }
        }
        for i in 0..self.tile_len {
            let t = self.seq.start + self.tile_start + i;
            for hh in 0..group {
                let qi = i * group + hh;
                let h = self.kv_head * group + hh;
                let inv = 1.0 / denom[qi];
                let dst = (t * self.num_heads + h) * d;
                for (j, &v) in acc[qi * d..(qi + 1) * d].iter().enumerate() {
                    // SAFETY: row t, head h belong to this job alone (OutPtr)
                    // and lie inside the output checked by the caller.
                    unsafe { *self.out.0.add(dst + j) = v * inv };
                }
            }
        }
    }
}

const LANES: usize = 16;

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            lanes[l] = x[l].mul_add(y[l], lanes[l]);
        }
    }
    let mut s: f32 = lanes.iter().sum();
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    s
}

#[inline(always)]
fn axpy(acc: &mut [f32], p: f32, v: &[f32]) {
    for (a, &x) in acc.iter_mut().zip(v) {
        *a = p.mul_add(x, *a);
    }
}
