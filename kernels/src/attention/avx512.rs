//! The AVX-512 attention kernel for head sizes of 32, 64 and 128.
//!
//! Queries go in chunks of up to four (two for 128-wide heads) whose
//! accumulators stay in registers for the whole context. For each run of up
//! to 16 keys inside a block, one register per query holds the 16 scores
//! (built dimension by dimension from the transposed K block, each K load
//! shared by the chunk), the online softmax updates the query's running max
//! and denominator with a vector `exp`, and the weighted V rows are added,
//! each V load again shared by the chunk. A query's arithmetic does not
//! depend on which other queries share its chunk.

#[cfg(target_arch = "x86_64")]
pub(super) use imp::*;

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    /// Nothing to load on other architectures.
    pub(crate) trait Element {}
    impl Element for f32 {}
    impl Element for half::f16 {}

    pub(crate) fn supports(_head_dim: usize) -> bool {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod imp {
    // Every statement here is an intrinsic or pointer arithmetic under the
    // function-level contract (CPU features checked by the caller, bounds
    // by the tile's construction).
    #![allow(unsafe_op_in_unsafe_fn)]
    // Register arrays indexed in lockstep (queries x vectors) read clearest
    // as index loops.
    #![allow(clippy::needless_range_loop)]

    use super::super::portable;
    use super::super::Tile;
    use crate::exp::exp_avx512;
    use half::f16;
    use std::arch::x86_64::*;

    /// A cache element type the kernel can load 16 at a time.
    pub(crate) trait Element: Copy {
        /// The values at `p` in the lanes of `mask` (others zero; masked
        /// lanes are not read).
        unsafe fn load16(p: *const Self, mask: __mmask16) -> __m512;
    }

    impl Element for f32 {
        #[inline(always)]
        unsafe fn load16(p: *const f32, mask: __mmask16) -> __m512 {
            _mm512_maskz_loadu_ps(mask, p)
        }
    }

    impl Element for f16 {
        #[inline(always)]
        unsafe fn load16(p: *const f16, mask: __mmask16) -> __m512 {
            _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p.cast()))
        }
    }

    pub(crate) fn supports(head_dim: usize) -> bool {
        matches!(head_dim, 32 | 64 | 128)
    }

    /// `out` (`nq x head_dim`) = softmax(q k^T) v for every query of the tile.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VL, FMA and F16C; the tile's block
    /// table, caches and limits must be consistent (as `paged_attention`
    /// validates them).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    pub(crate) unsafe fn attend<E: Element + portable::Element>(tile: &Tile<E>, out: &mut [f32]) {
        match tile.head_dim {
            32 => by_chunks::<E, 2, 4>(tile, out),
            64 => by_chunks::<E, 4, 4>(tile, out),
            128 => by_chunks::<E, 8, 2>(tile, out),
            _ => portable::attend(tile, out),
        }
    }

    #[inline(always)]
    unsafe fn by_chunks<E: Element, const NV: usize, const QMAX: usize>(
        tile: &Tile<E>,
        out: &mut [f32],
    ) {
        let nq = tile.limits.len();
        let mut q0 = 0;
        while q0 < nq {
            let c = QMAX.min(nq - q0);
            match c {
                4 => chunk::<E, NV, 4>(tile, q0, out),
                3 => chunk::<E, NV, 3>(tile, q0, out),
                2 => chunk::<E, NV, 2>(tile, q0, out),
                _ => chunk::<E, NV, 1>(tile, q0, out),
            }
            q0 += c;
        }
    }

    #[inline(always)]
    fn lane_mask(n: usize) -> __mmask16 {
        if n >= 16 {
            0xFFFF
        } else {
            (1u16 << n) - 1
        }
    }

    /// Queries `q0..q0 + QC` of the tile over their whole context.
    #[inline(always)]
    unsafe fn chunk<E: Element, const NV: usize, const QC: usize>(
        tile: &Tile<E>,
        q0: usize,
        out: &mut [f32],
    ) {
        let d = NV * 16;
        let bs = tile.block_size;
        let q = tile.queries.as_ptr().add(q0 * d);
        let mut limits = [0usize; QC];
        limits.copy_from_slice(&tile.limits[q0..q0 + QC]);
        let last = limits.iter().copied().max().unwrap_or(0);
        let mut acc = [[_mm512_setzero_ps(); NV]; QC];
        let mut max = [f32::NEG_INFINITY; QC];
        let mut denom = [0f32; QC];
        let mut probs = [[0f32; 16]; QC];
        let mut pos = 0;
        while pos <= last {
            let slot = pos % bs;
            let n = 16.min(bs - slot).min(last + 1 - pos);
            let base = tile.base(pos);
            let keys = tile.k.as_ptr().add(base + slot);
            let mask = lane_mask(n);
            // Four partial sums per query (dimensions mod 4) keep four
            // independent FMA chains in flight instead of one long one.
            let mut partial = [[_mm512_setzero_ps(); 4]; QC];
            for dim in (0..d).step_by(4) {
                for (lane, kt) in (0..4).map(|i| (i, E::load16(keys.add((dim + i) * bs), mask))) {
                    for c in 0..QC {
                        partial[c][lane] = _mm512_fmadd_ps(
                            _mm512_set1_ps(*q.add(c * d + dim + lane)),
                            kt,
                            partial[c][lane],
                        );
                    }
                }
            }
            let mut scores = [_mm512_setzero_ps(); QC];
            for c in 0..QC {
                let [a, b, e, f] = partial[c];
                scores[c] = _mm512_add_ps(_mm512_add_ps(a, b), _mm512_add_ps(e, f));
            }
            let mut valid = [0usize; QC];
            for c in 0..QC {
                let nv = (limits[c] + 1).saturating_sub(pos).min(n);
                valid[c] = nv;
                if nv == 0 {
                    continue;
                }
                let s = _mm512_mask_blend_ps(
                    lane_mask(nv),
                    _mm512_set1_ps(f32::NEG_INFINITY),
                    scores[c],
                );
                let run_max = _mm512_reduce_max_ps(s);
                if run_max > max[c] {
                    let corr = _mm512_set1_ps((max[c] - run_max).exp());
                    denom[c] *= (max[c] - run_max).exp();
                    for a in acc[c].iter_mut() {
                        *a = _mm512_mul_ps(*a, corr);
                    }
                    max[c] = run_max;
                }
                let p = exp_avx512(_mm512_sub_ps(s, _mm512_set1_ps(max[c])));
                denom[c] += _mm512_reduce_add_ps(p);
                _mm512_storeu_ps(probs[c].as_mut_ptr(), p);
            }
            let values = tile.v.as_ptr().add(base + slot * d);
            let rows = valid.iter().copied().max().unwrap_or(0);
            for j in 0..rows {
                let mut row = [_mm512_setzero_ps(); NV];
                for (v, r) in row.iter_mut().enumerate() {
                    *r = E::load16(values.add(j * d + v * 16), 0xFFFF);
                }
                for c in 0..QC {
                    if j < valid[c] {
                        let p = _mm512_set1_ps(probs[c][j]);
                        for v in 0..NV {
                            acc[c][v] = _mm512_fmadd_ps(p, row[v], acc[c][v]);
                        }
                    }
                }
            }
            pos += n;
        }
        let dst = out.as_mut_ptr().add(q0 * d);
        for c in 0..QC {
            let inv = _mm512_set1_ps(1.0 / denom[c]);
            for v in 0..NV {
                _mm512_storeu_ps(dst.add(c * d + v * 16), _mm512_mul_ps(acc[c][v], inv));
            }
        }
    }
}
