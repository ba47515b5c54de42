//! AVX2 / AVX-512 VNNI products of weight rows in the 32-element block formats (Q4_0,
//! Q4_1, Q5_0, Q5_1, Q8_0) with a few quantized activation rows: the decode
//! path's hot loop.
//!
//! A tile of R weight rows x M activation rows is computed in one pass over
//! the blocks, so every activation block is loaded once per R rows and every
//! weight block is unpacked once per M activations, with R*M independent
//! accumulators to hide FMA latency. Activation scales arrive as f32 (see
//! `QuantizedActs::scales`); weight scales are converted with loads that
//! carry no dependency on earlier iterations.

#![cfg(target_arch = "x86_64")]
// Every statement here is an intrinsic or pointer arithmetic; the safety
// contract is the function-level one (CPU features and bounds checked by
// `gemv`).
#![allow(unsafe_op_in_unsafe_fn)]

use super::blocks::{BlockQ8_0, BlockQ8_1};
use super::dot_avx2::{bytes_from_bits_32, hsum_ps, madd_us8, nibbles_32};
use super::WeightType;
use crate::cpu::SimdLevel;
use std::arch::x86_64::*;

/// Bytes ahead of the current block to prefetch.
const PREFETCH_AHEAD: usize = 1024;

/// One activation row: raw Q8_0/Q8_1 blocks and their f32 `[d, s]` scales.
#[derive(Clone, Copy)]
pub struct ActRow<'a> {
    pub blocks: &'a [u8],
    pub scales: &'a [f32],
}

/// Lanes 0 and 1 of the two f16 values at `p` (`[d, m]`, or `[d, _]`).
#[inline(always)]
unsafe fn f16_pair(p: *const u8) -> (f32, f32) {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p.cast::<i32>())));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
}

/// Sums of four u8 x i8 products into i32 lanes.
trait DotOp {
    unsafe fn dot(ax: __m256i, sy: __m256i) -> __m256i;
}

/// AVX2: `maddubs` (pairs to i16) then `madd` (pairs to i32).
struct Avx2Dot;
impl DotOp for Avx2Dot {
    #[inline(always)]
    unsafe fn dot(ax: __m256i, sy: __m256i) -> __m256i {
        madd_us8(ax, sy)
    }
}

/// AVX-512 VNNI (on 256-bit registers): one `vpdpbusd`, same integers.
struct VnniDot;
impl DotOp for VnniDot {
    #[inline(always)]
    unsafe fn dot(ax: __m256i, sy: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy)
    }
}

/// A 32-element weight block format.
trait Block32 {
    const BYTES: usize;
    /// Weights are signed (the sign trick makes them unsigned for maddubs).
    const SIGNED: bool;
    /// Dequantized value is `d * q + m`; activations then are Q8_1.
    const MIN: bool;
    /// Quantized values, `d` and `m` of the block at `p`.
    unsafe fn unpack(p: *const u8) -> (__m256i, f32, f32);
}

struct Q4_0;
struct Q4_1;
struct Q5_0;
struct Q5_1;
struct Q8_0;

impl Block32 for Q4_0 {
    const BYTES: usize = 18;
    const SIGNED: bool = true;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> (__m256i, f32, f32) {
        let (d, _) = f16_pair(p);
        (
            _mm256_sub_epi8(nibbles_32(p.add(2)), _mm256_set1_epi8(8)),
            d,
            0.0,
        )
    }
}

impl Block32 for Q4_1 {
    const BYTES: usize = 20;
    const SIGNED: bool = false;
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> (__m256i, f32, f32) {
        let (d, m) = f16_pair(p);
        (nibbles_32(p.add(4)), d, m)
    }
}

impl Block32 for Q5_0 {
    const BYTES: usize = 22;
    const SIGNED: bool = true;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> (__m256i, f32, f32) {
        let (d, _) = f16_pair(p);
        let hi = _mm256_andnot_si256(
            bytes_from_bits_32(std::ptr::read_unaligned(p.add(2).cast::<u32>())),
            _mm256_set1_epi8(0xF0u8 as i8),
        );
        (_mm256_or_si256(nibbles_32(p.add(6)), hi), d, 0.0)
    }
}

impl Block32 for Q5_1 {
    const BYTES: usize = 24;
    const SIGNED: bool = false;
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> (__m256i, f32, f32) {
        let (d, m) = f16_pair(p);
        let hi = _mm256_and_si256(
            bytes_from_bits_32(std::ptr::read_unaligned(p.add(4).cast::<u32>())),
            _mm256_set1_epi8(0x10),
        );
        (_mm256_or_si256(nibbles_32(p.add(8)), hi), d, m)
    }
}

impl Block32 for Q8_0 {
    const BYTES: usize = 34;
    const SIGNED: bool = true;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> (__m256i, f32, f32) {
        let (d, _) = f16_pair(p);
        (_mm256_loadu_si256(p.add(2).cast()), d, 0.0)
    }
}

/// `out[r][t]` for a tile of R weight rows (starting at `w`, `row_bytes`
/// apart) and M activation rows.
#[inline(always)]
unsafe fn tile<K: Block32, D: DotOp, const R: usize, const M: usize>(
    w: *const u8,
    row_bytes: usize,
    nb: usize,
    acts: &[ActRow; M],
) -> [[f32; M]; R] {
    let (act_bytes, qs_off) = if K::MIN {
        (std::mem::size_of::<BlockQ8_1>(), 4)
    } else {
        (std::mem::size_of::<BlockQ8_0>(), 2)
    };
    let mut acc = [[_mm256_setzero_ps(); M]; R];
    let mut mins = [[0f32; M]; R];
    for b in 0..nb {
        let mut qy = [_mm256_setzero_si256(); M];
        let mut da = [0f32; M];
        let mut sa = [0f32; M];
        for t in 0..M {
            qy[t] = _mm256_loadu_si256(acts[t].blocks.as_ptr().add(b * act_bytes + qs_off).cast());
            da[t] = *acts[t].scales.get_unchecked(2 * b);
            sa[t] = *acts[t].scales.get_unchecked(2 * b + 1);
        }
        for r in 0..R {
            let p = w.add(r * row_bytes + b * K::BYTES);
            // The weights stream from memory once per token; ask for them
            // early enough to hide the latency the hardware prefetcher
            // leaves exposed.
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_AHEAD).cast());
            let (qx, dw, mw) = K::unpack(p);
            let ax = if K::SIGNED {
                _mm256_sign_epi8(qx, qx)
            } else {
                qx
            };
            for t in 0..M {
                let sy = if K::SIGNED {
                    _mm256_sign_epi8(qy[t], qx)
                } else {
                    qy[t]
                };
                let prod = D::dot(ax, sy);
                acc[r][t] = _mm256_fmadd_ps(
                    _mm256_set1_ps(dw * da[t]),
                    _mm256_cvtepi32_ps(prod),
                    acc[r][t],
                );
                if K::MIN {
                    mins[r][t] += mw * sa[t];
                }
            }
        }
    }
    let mut out = [[0f32; M]; R];
    for r in 0..R {
        for t in 0..M {
            out[r][t] = hsum_ps(acc[r][t]) + mins[r][t];
        }
    }
    out
}

/// `out[r * acts.len() + t] = dot(row r, act t)` for `nrows` rows at `w`.
#[inline(always)]
unsafe fn rows<K: Block32, D: DotOp>(
    w: &[u8],
    row_bytes: usize,
    nrows: usize,
    acts: &[ActRow],
    out: &mut [f32],
) {
    let nb = row_bytes / K::BYTES;
    let m = acts.len();
    let base = w.as_ptr();
    let mut r = 0;
    if m == 1 {
        let a = [acts[0]];
        while r + 2 <= nrows {
            let o = tile::<K, D, 2, 1>(base.add(r * row_bytes), row_bytes, nb, &a);
            out[r] = o[0][0];
            out[r + 1] = o[1][0];
            r += 2;
        }
        if r < nrows {
            out[r] = tile::<K, D, 1, 1>(base.add(r * row_bytes), row_bytes, nb, &a)[0][0];
        }
        return;
    }
    while r + 2 <= nrows {
        let p = base.add(r * row_bytes);
        let mut t = 0;
        while t + 4 <= m {
            let o = tile::<K, D, 2, 4>(
                p,
                row_bytes,
                nb,
                &[acts[t], acts[t + 1], acts[t + 2], acts[t + 3]],
            );
            out[r * m + t..r * m + t + 4].copy_from_slice(&o[0]);
            out[(r + 1) * m + t..(r + 1) * m + t + 4].copy_from_slice(&o[1]);
            t += 4;
        }
        while t < m {
            let o = tile::<K, D, 2, 1>(p, row_bytes, nb, &[acts[t]]);
            out[r * m + t] = o[0][0];
            out[(r + 1) * m + t] = o[1][0];
            t += 1;
        }
        r += 2;
    }
    for r in r..nrows {
        let p = base.add(r * row_bytes);
        let mut t = 0;
        while t < m {
            let left = m - t;
            let o = &mut out[r * m + t..];
            match left {
                1 => o[0] = tile::<K, D, 1, 1>(p, row_bytes, nb, &[acts[t]])[0][0],
                2 => o[..2].copy_from_slice(
                    &tile::<K, D, 1, 2>(p, row_bytes, nb, &[acts[t], acts[t + 1]])[0],
                ),
                3 => o[..3].copy_from_slice(
                    &tile::<K, D, 1, 3>(p, row_bytes, nb, &[acts[t], acts[t + 1], acts[t + 2]])[0],
                ),
                _ => o[..4].copy_from_slice(
                    &tile::<K, D, 1, 4>(
                        p,
                        row_bytes,
                        nb,
                        &[acts[t], acts[t + 1], acts[t + 2], acts[t + 3]],
                    )[0],
                ),
            }
            t += left.min(4);
        }
    }
}

/// A tiled kernel for `wtype`, if it has one.
pub type GemvFn = unsafe fn(&[u8], usize, usize, &[ActRow], &mut [f32]);

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_q4_0(w: &[u8], rb: usize, n: usize, a: &[ActRow], o: &mut [f32]) {
    rows::<Q4_0, Avx2Dot>(w, rb, n, a, o)
}
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn gemv_q4_0_vnni(w: &[u8], rb: usize, n: usize, a: &[ActRow], o: &mut [f32]) {
    rows::<Q4_0, VnniDot>(w, rb, n, a, o)
}
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_q4_1(w: &[u8], rb: usize, n: usize, a: &[ActRow], o: &mut [f32]) {
    rows::<Q4_1, Avx2Dot>(w, rb, n, a, o)
}
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn gemv_q4_1_vnni(w: &[u8], rb: usize, n: usize, a: &[ActRow], o: &mut [f32]) {
    rows::<Q4_1, VnniDot>(w, rb, n, a, o)
}
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_q5_0(w: &[u8], rb: usize, n: usize, a: &[ActRow], o: &mut [f32]) {
    rows::<Q5_0, Avx2Dot>(w, rb, n, a, o)
}
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn gemv_q5_0_vnni(w: &[u8], rb: usize, n: usize, a: &[ActRow], o: &mut [f32]) {
    rows::<Q5_0, VnniDot>(w, rb, n, a, o)
}
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_q5_1(w: &[u8], rb: usize, n: usize, a: &[ActRow], o: &mut [f32]) {
    rows::<Q5_1, Avx2Dot>(w, rb, n, a, o)
}
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn gemv_q5_1_vnni(w: &[u8], rb: usize, n: usize, a: &[ActRow], o: &mut [f32]) {
    rows::<Q5_1, VnniDot>(w, rb, n, a, o)
}
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_q8_0(w: &[u8], rb: usize, n: usize, a: &[ActRow], o: &mut [f32]) {
    rows::<Q8_0, Avx2Dot>(w, rb, n, a, o)
}
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn gemv_q8_0_vnni(w: &[u8], rb: usize, n: usize, a: &[ActRow], o: &mut [f32]) {
    rows::<Q8_0, VnniDot>(w, rb, n, a, o)
}

/// The tiled kernel for `wtype` at `level` (AVX2 or better; the caller
/// checks the CPU).
pub fn kernel(wtype: WeightType, level: SimdLevel) -> Option<GemvFn> {
    let vnni = level >= SimdLevel::Avx512;
    Some(match (wtype, vnni) {
        (WeightType::Q4_0, false) => gemv_q4_0,
        (WeightType::Q4_0, true) => gemv_q4_0_vnni,
        (WeightType::Q4_1, false) => gemv_q4_1,
        (WeightType::Q4_1, true) => gemv_q4_1_vnni,
        (WeightType::Q5_0, false) => gemv_q5_0,
        (WeightType::Q5_0, true) => gemv_q5_0_vnni,
        (WeightType::Q5_1, false) => gemv_q5_1,
        (WeightType::Q5_1, true) => gemv_q5_1_vnni,
        (WeightType::Q8_0, false) => gemv_q8_0,
        (WeightType::Q8_0, true) => gemv_q8_0_vnni,
        _ => return None,
    })
}
