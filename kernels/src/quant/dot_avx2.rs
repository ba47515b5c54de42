//! AVX2 + FMA dot products (one weight row against one activation row).
//!
//! Each kernel mirrors the integer arithmetic of `dot_ref`: unsigned weight
//! nibbles times signed activation bytes via `maddubs`, widened with `madd`,
//! scaled per block in f32.

#![cfg(target_arch = "x86_64")]
// Every statement here is an intrinsic; the safety contract is the
// function-level one (CPU features checked by the caller).
#![allow(unsafe_op_in_unsafe_fn)]

use super::blocks::*;
use std::arch::x86_64::*;

#[inline(always)]
unsafe fn f16_to_f32(bits: u16) -> f32 {
    // A broadcast, not an insert: inserting into a live register would
    // chain every block's conversion to the previous block.
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(bits as i16)))
}

#[inline(always)]
pub(super) unsafe fn hsum_ps(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline(always)]
unsafe fn hsum_ps128(s: __m128) -> f32 {
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// 32 nibbles of 16 bytes: low nibbles in the low lane, high in the high lane.
#[inline(always)]
pub(super) unsafe fn nibbles_32(p: *const u8) -> __m256i {
    let tmp = _mm_loadu_si128(p.cast());
    let both = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
    _mm256_and_si256(both, _mm256_set1_epi8(0xF))
}

/// Expands 32 bits to 32 bytes: 0xFF where the bit is set.
#[inline(always)]
pub(super) unsafe fn bytes_from_bits_32(bits: u32) -> __m256i {
    let shuf = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0x0000_0000_0000_0000,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuf);
    let bit_mask = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64);
    _mm256_cmpeq_epi8(_mm256_or_si256(bytes, bit_mask), _mm256_set1_epi64x(-1))
}

/// u8 x i8 products summed to 8 i32 lanes.
#[inline(always)]
pub(super) unsafe fn madd_us8(ax: __m256i, sy: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
}

/// i8 x i8 products summed to 8 f32 lanes.
#[inline(always)]
unsafe fn mul_sum_i8_ps(x: __m256i, y: __m256i) -> __m256 {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    _mm256_cvtepi32_ps(madd_us8(ax, sy))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_0(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        let d = _mm256_set1_ps(f16_to_f32(x.d) * f16_to_f32(y.d));
        let qx = _mm256_sub_epi8(nibbles_32(x.qs.as_ptr()), _mm256_set1_epi8(8));
        let qy = _mm256_loadu_si256(y.qs.as_ptr().cast());
        acc = _mm256_fmadd_ps(d, mul_sum_i8_ps(qx, qy), acc);
    }
    hsum_ps(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0f32;
    for (x, y) in w.iter().zip(a) {
        summs += f16_to_f32(x.m) * f16_to_f32(y.s);
        let d = _mm256_set1_ps(f16_to_f32(x.d) * f16_to_f32(y.d));
        let qx = nibbles_32(x.qs.as_ptr());
        let qy = _mm256_loadu_si256(y.qs.as_ptr().cast());
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(madd_us8(qx, qy)), acc);
    }
    hsum_ps(acc) + summs
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q5_0(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        let d = _mm256_set1_ps(f16_to_f32(x.d) * f16_to_f32(y.d));
        let hi = bytes_from_bits_32(u32::from_le_bytes(x.qh));
        // value - 16: set the top nibble to 0xF0 where the fifth bit is clear.
        let hi = _mm256_andnot_si256(hi, _mm256_set1_epi8(0xF0u8 as i8));
        let qx = _mm256_or_si256(nibbles_32(x.qs.as_ptr()), hi);
        let qy = _mm256_loadu_si256(y.qs.as_ptr().cast());
        acc = _mm256_fmadd_ps(d, mul_sum_i8_ps(qx, qy), acc);
    }
    hsum_ps(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q5_1(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0f32;
    for (x, y) in w.iter().zip(a) {
        summs += f16_to_f32(x.m) * f16_to_f32(y.s);
        let d = _mm256_set1_ps(f16_to_f32(x.d) * f16_to_f32(y.d));
        let hi = bytes_from_bits_32(u32::from_le_bytes(x.qh));
        let hi = _mm256_and_si256(hi, _mm256_set1_epi8(0x10));
        let qx = _mm256_or_si256(nibbles_32(x.qs.as_ptr()), hi);
        let qy = _mm256_loadu_si256(y.qs.as_ptr().cast());
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(madd_us8(qx, qy)), acc);
    }
    hsum_ps(acc) + summs
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        let d = _mm256_set1_ps(f16_to_f32(x.d) * f16_to_f32(y.d));
        let qx = _mm256_loadu_si256(x.qs.as_ptr().cast());
        let qy = _mm256_loadu_si256(y.qs.as_ptr().cast());
        acc = _mm256_fmadd_ps(d, mul_sum_i8_ps(qx, qy), acc);
    }
    hsum_ps(acc)
}

/// Scales (low 8 words) and mins (high 8 words) of a Q4_K / Q5_K block.
#[inline(always)]
unsafe fn k4_scales_mins(raw: &[u8; 12]) -> __m256i {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let mut u = [
        u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]),
        u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]),
        u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]),
        0,
    ];
    u[3] = ((u[2] >> 4) & KMASK2) | (((u[1] >> 6) & KMASK3) << 4);
    let uaux = u[1] & KMASK1;
    u[1] = (u[2] & KMASK2) | (((u[0] >> 6) & KMASK3) << 4);
    u[2] = uaux;
    u[0] &= KMASK1;
    _mm256_cvtepu8_epi16(_mm_set_epi32(
        u[3] as i32,
        u[2] as i32,
        u[1] as i32,
        u[0] as i32,
    ))
}

/// Broadcasts 16-bit word `i` of `v` (same index in both lanes).
#[inline(always)]
unsafe fn bcast_word(v: __m256i, i: i32) -> __m256i {
    let lo = (2 * i) as i16;
    _mm256_shuffle_epi8(v, _mm256_set1_epi16(lo | ((lo + 1) << 8)))
}

/// Min correction of a Q4_K / Q5_K block: sum_j min_j * (sum of q8 in j).
#[inline(always)]
unsafe fn k4_min_term(mins_scales: __m256i, bsums: &[i16; 16]) -> __m128i {
    let q8sums = _mm256_loadu_si256(bsums.as_ptr().cast());
    let q8s = _mm_hadd_epi16(
        _mm256_castsi256_si128(q8sums),
        _mm256_extracti128_si256(q8sums, 1),
    );
    _mm_madd_epi16(_mm256_extracti128_si256(mins_scales, 1), q8s)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4k(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    let m4 = _mm256_set1_epi8(0xF);
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = _mm_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        let d = y.d * f16_to_f32(x.d);
        let dmin = -y.d * f16_to_f32(x.dmin);
        let ms = k4_scales_mins(&x.scales);
        let prod = k4_min_term(ms, &y.bsums);
        acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m);
        let sc128 = _mm256_castsi256_si128(ms);
        let scales = _mm256_set_m128i(sc128, sc128);
        let mut sumi = _mm256_setzero_si256();
        let mut q4 = x.qs.as_ptr();
        let mut q8 = y.qs.as_ptr();
        for j in 0..4 {
            let scale_l = bcast_word(scales, 2 * j);
            let scale_h = bcast_word(scales, 2 * j + 1);
            let q4bits = _mm256_loadu_si256(q4.cast());
            q4 = q4.add(32);
            let q4l = _mm256_and_si256(q4bits, m4);
            let q4h = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4);
            let q8l = _mm256_loadu_si256(q8.cast());
            let q8h = _mm256_loadu_si256(q8.add(32).cast());
            q8 = q8.add(64);
            let pl = _mm256_madd_epi16(scale_l, _mm256_maddubs_epi16(q4l, q8l));
            let ph = _mm256_madd_epi16(scale_h, _mm256_maddubs_epi16(q4h, q8h));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) + hsum_ps128(acc_m)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q5k(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    let m4 = _mm256_set1_epi8(0xF);
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = _mm_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        let d = y.d * f16_to_f32(x.d);
        let dmin = -y.d * f16_to_f32(x.dmin);
        let ms = k4_scales_mins(&x.scales);
        let prod = k4_min_term(ms, &y.bsums);
        acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m);
        let sc128 = _mm256_castsi256_si128(ms);
        let scales = _mm256_set_m128i(sc128, sc128);
        let hbits = _mm256_loadu_si256(x.qh.as_ptr().cast());
        let mut hmask = _mm256_set1_epi8(1);
        let mut sumi = _mm256_setzero_si256();
        let mut q5 = x.qs.as_ptr();
        let mut q8 = y.qs.as_ptr();
        for j in 0..4 {
            let scale_l = bcast_word(scales, 2 * j);
            let scale_h = bcast_word(scales, 2 * j + 1);
            let q5bits = _mm256_loadu_si256(q5.cast());
            q5 = q5.add(32);
            // The fifth bit: (hbits & hmask) != 0 -> 16.
            let h0 = _mm256_and_si256(
                _mm256_cmpeq_epi8(_mm256_and_si256(hbits, hmask), hmask),
                _mm256_set1_epi8(16),
            );
            hmask = _mm256_slli_epi16(hmask, 1);
            let h1 = _mm256_and_si256(
                _mm256_cmpeq_epi8(_mm256_and_si256(hbits, hmask), hmask),
                _mm256_set1_epi8(16),
            );
            hmask = _mm256_slli_epi16(hmask, 1);
            let q5l = _mm256_add_epi8(_mm256_and_si256(q5bits, m4), h0);
            let q5h = _mm256_add_epi8(_mm256_and_si256(_mm256_srli_epi16(q5bits, 4), m4), h1);
            let q8l = _mm256_loadu_si256(q8.cast());
            let q8h = _mm256_loadu_si256(q8.add(32).cast());
            q8 = q8.add(64);
            let pl = _mm256_madd_epi16(scale_l, _mm256_maddubs_epi16(q5l, q8l));
            let ph = _mm256_madd_epi16(scale_h, _mm256_maddubs_epi16(q5h, q8h));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) + hsum_ps128(acc_m)
}

/// Sixteen bytes: eight copies of scale byte `i`, then eight of `i + 1`.
#[inline(always)]
unsafe fn scale_pair(scales: __m128i, i: i8) -> __m256i {
    let mask = _mm_set_epi8(
        i + 1,
        i + 1,
        i + 1,
        i + 1,
        i + 1,
        i + 1,
        i + 1,
        i + 1,
        i,
        i,
        i,
        i,
        i,
        i,
        i,
        i,
    );
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, mask))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q6k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    let m4 = _mm256_set1_epi8(0xF);
    let m2 = _mm256_set1_epi8(3);
    let m32s = _mm256_set1_epi8(32);
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        let d = y.d * f16_to_f32(x.d);
        let scales = _mm_loadu_si128(x.scales.as_ptr().cast());
        let mut sumi = _mm256_setzero_si256();
        let mut ql = x.ql.as_ptr();
        let mut qh = x.qh.as_ptr();
        let mut q8 = y.qs.as_ptr();
        for j in 0..2i8 {
            let is = 8 * j;
            let b1 = _mm256_loadu_si256(ql.cast());
            let b2 = _mm256_loadu_si256(ql.add(32).cast());
            let bh = _mm256_loadu_si256(qh.cast());
            ql = ql.add(64);
            qh = qh.add(32);
            let h0 = _mm256_slli_epi16(_mm256_and_si256(bh, m2), 4);
            let h1 = _mm256_slli_epi16(_mm256_and_si256(bh, _mm256_slli_epi16(m2, 2)), 2);
            let h2 = _mm256_and_si256(bh, _mm256_slli_epi16(m2, 4));
            let h3 = _mm256_srli_epi16(_mm256_and_si256(bh, _mm256_slli_epi16(m2, 6)), 2);
            let q = [
                _mm256_or_si256(_mm256_and_si256(b1, m4), h0),
                _mm256_or_si256(_mm256_and_si256(b2, m4), h1),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b1, 4), m4), h2),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b2, 4), m4), h3),
            ];
            for (k, qk) in q.iter().enumerate() {
                let a8 = _mm256_loadu_si256(q8.add(32 * k).cast());
                let p = _mm256_sub_epi16(
                    _mm256_maddubs_epi16(*qk, a8),
                    _mm256_maddubs_epi16(m32s, a8),
                );
                let sc = scale_pair(scales, is + 2 * k as i8);
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(sc, p));
            }
            q8 = q8.add(128);
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f32_f32(w: &[f32], a: &[f32]) -> f32 {
    let n = w.len().min(a.len());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        acc0 = _mm256_fmadd_ps(
            _mm256_loadu_ps(w.as_ptr().add(i)),
            _mm256_loadu_ps(a.as_ptr().add(i)),
            acc0,
        );
        acc1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(w.as_ptr().add(i + 8)),
            _mm256_loadu_ps(a.as_ptr().add(i + 8)),
            acc1,
        );
        i += 16;
    }
    let mut s = hsum_ps(_mm256_add_ps(acc0, acc1));
    while i < n {
        s += w[i] * a[i];
        i += 1;
    }
    s
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_f32(w: &[u16], a: &[f32]) -> f32 {
    let n = w.len().min(a.len());
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        let wv = _mm256_cvtph_ps(_mm_loadu_si128(w.as_ptr().add(i).cast()));
        acc = _mm256_fmadd_ps(wv, _mm256_loadu_ps(a.as_ptr().add(i)), acc);
        i += 8;
    }
    let mut s = hsum_ps(acc);
    while i < n {
        s += f16_to_f32(w[i]) * a[i];
        i += 1;
    }
    s
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn bf16_f32(w: &[u16], a: &[f32]) -> f32 {
    let n = w.len().min(a.len());
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(w.as_ptr().add(i).cast()));
        let wv = _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
        acc = _mm256_fmadd_ps(wv, _mm256_loadu_ps(a.as_ptr().add(i)), acc);
        i += 8;
    }
    let mut s = hsum_ps(acc);
    while i < n {
        s += f32::from_bits((w[i] as u32) << 16) * a[i];
        i += 1;
    }
    s
}
