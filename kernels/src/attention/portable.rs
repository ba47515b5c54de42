//! The portable attention kernel: one query at a time, plain loops that the
//! compiler vectorizes where the CPU allows. Used for head sizes the SIMD
//! kernel does not cover and on CPUs without AVX-512.

use super::Tile;
use half::f16;

/// Keys scored per online-softmax update.
const RUN: usize = 16;

/// A cache element type, read as f32.
pub(crate) trait Element: Copy {
    fn to_f32(self) -> f32;
}

impl Element for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Element for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

/// `out` (`nq x head_dim`) = softmax(q k^T) v for every query of the tile.
pub(super) fn attend<E: Element>(tile: &Tile<E>, out: &mut [f32]) {
    attend_impl(tile, out)
}

/// The same code compiled with AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn attend_avx2<E: Element>(tile: &Tile<E>, out: &mut [f32]) {
    attend_impl(tile, out)
}

#[inline(always)]
fn attend_impl<E: Element>(tile: &Tile<E>, out: &mut [f32]) {
    let (d, bs) = (tile.head_dim, tile.block_size);
    let mut scores = [0f32; RUN];
    for (qi, (q, o)) in tile
        .queries
        .chunks_exact(d)
        .zip(out.chunks_exact_mut(d))
        .enumerate()
    {
        let limit = tile.limits[qi];
        let mut max = f32::NEG_INFINITY;
        let mut denom = 0f32;
        o.fill(0.0);
        let mut pos = 0;
        while pos <= limit {
            let slot = pos % bs;
            let n = RUN.min(bs - slot).min(limit + 1 - pos);
            let base = tile.base(pos);
            let scores = &mut scores[..n];
            scores.fill(0.0);
            for (dim, &qd) in q.iter().enumerate() {
                let keys = &tile.k[base + dim * bs + slot..][..n];
                for (s, k) in scores.iter_mut().zip(keys) {
                    *s = qd.mul_add(k.to_f32(), *s);
                }
            }
            let run_max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            if run_max > max {
                let corr = (max - run_max).exp();
                denom *= corr;
                o.iter_mut().for_each(|x| *x *= corr);
                max = run_max;
            }
            for (j, &s) in scores.iter().enumerate() {
                let p = (s - max).exp();
                denom += p;
                let values = &tile.v[base + (slot + j) * d..][..d];
                for (x, v) in o.iter_mut().zip(values) {
                    *x = p.mul_add(v.to_f32(), *x);
                }
            }
            pos += n;
        }
        let inv = 1.0 / denom;
        o.iter_mut().for_each(|x| *x *= inv);
    }
}
