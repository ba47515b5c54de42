//! The AVX-512 VNNI product of interleaved weights (see `packed`) with
//! quantized activation rows: one `vpdpbusd` per four elements of 16 rows
//! against a broadcast group of four activation bytes.
//!
//! A group's weights are unpacked once per block for a tile of up to four
//! activation rows, and each (row, activation) output is computed by the
//! same operations in the same order whatever the tile, so results are
//! batch-invariant and equal `packed::dot_reference` bit for bit.

#![cfg(target_arch = "x86_64")]
// Every statement here is an intrinsic or pointer arithmetic; the safety
// contract is the function-level one (CPU features and bounds checked by
// the caller).
#![allow(unsafe_op_in_unsafe_fn)]

use super::packed::{ActView, PackedFormat, PackedShape, GROUP};
use std::arch::x86_64::*;

/// Broadcast of the four activation bytes at `p`.
#[inline(always)]
unsafe fn bcast4(p: *const u8) -> __m512i {
    _mm512_set1_epi32(std::ptr::read_unaligned(p.cast::<i32>()))
}

/// 16 f16 values at `p` as f32.
#[inline(always)]
unsafe fn f16x16(p: *const u8) -> __m512 {
    _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
}

/// Outputs of one group for `M` activation rows; `out[t]` receives the 16
/// values of activation `t` (lanes outside `mask` untouched).
#[inline(always)]
unsafe fn group_tile<const F: u8, const M: usize>(
    shape: &PackedShape,
    group: *const u8,
    acts: &[ActView; M],
    out: [*mut f32; M],
    mask: __mmask16,
) {
    let format = format_of(F);
    let min = format == PackedFormat::Q4_1;
    let q8 = format == PackedFormat::Q8_0;
    let (act_block, act_qs) = if min { (36usize, 4usize) } else { (34, 2) };
    let record = format.record_bytes();
    let nibble_mask = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); M];
    let mut macc = [_mm512_setzero_ps(); M];
    for b in 0..shape.blocks {
        let rec = group.add(b * record);
        let dw = f16x16(rec);
        let mw = if min {
            f16x16(rec.add(2 * GROUP))
        } else {
            _mm512_setzero_ps()
        };
        let quants = rec.add(format.scale_bytes());
        // Q4: lo[j] / hi[j] are elements 4j.. and 16+4j.. of every row;
        // Q8: w[j] are elements 4j.. (w = lo ++ hi).
        let mut lo = [_mm512_setzero_si512(); 4];
        let mut hi = [_mm512_setzero_si512(); 4];
        for j in 0..4 {
            if q8 {
                lo[j] = _mm512_loadu_si512(quants.add(64 * j).cast());
                hi[j] = _mm512_loadu_si512(quants.add(64 * (4 + j)).cast());
            } else {
                let raw = _mm512_loadu_si512(quants.add(64 * j).cast());
                lo[j] = _mm512_and_si512(raw, nibble_mask);
                hi[j] = _mm512_and_si512(_mm512_srli_epi16::<4>(raw), nibble_mask);
            }
        }
        for t in 0..M {
            let a = acts[t].blocks.as_ptr().add(b * act_block + act_qs);
            let mut i0 = _mm512_setzero_si512();
            let mut i1 = _mm512_setzero_si512();
            for j in 0..4 {
                i0 = _mm512_dpbusd_epi32(i0, lo[j], bcast4(a.add(4 * j)));
                i1 = _mm512_dpbusd_epi32(i1, hi[j], bcast4(a.add(16 + 4 * j)));
            }
            let mut isum = _mm512_add_epi32(i0, i1);
            if !min {
                let offset = if q8 { 128 } else { 8 };
                isum = _mm512_sub_epi32(
                    isum,
                    _mm512_set1_epi32(offset * *acts[t].sums.get_unchecked(b)),
                );
            }
            let da = *acts[t].scales.get_unchecked(2 * b);
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(da));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc[t]);
            if min {
                let sa = *acts[t].scales.get_unchecked(2 * b + 1);
                macc[t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(sa), macc[t]);
            }
        }
    }
    for t in 0..M {
        let v = if min {
            _mm512_add_ps(acc[t], macc[t])
        } else {
            acc[t]
        };
        _mm512_mask_storeu_ps(out[t], mask, v);
    }
}

const fn format_of(f: u8) -> PackedFormat {
    match f {
        0 => PackedFormat::Q4_0,
        1 => PackedFormat::Q4_1,
        _ => PackedFormat::Q8_0,
    }
}

/// Groups `g0..g1` of the matrix against every activation row:
/// `out[t * shape.rows + r]` for rows `r` of those groups.
#[inline(always)]
unsafe fn groups<const F: u8>(
    shape: &PackedShape,
    packed: &[u8],
    g0: usize,
    g1: usize,
    acts: &[ActView],
    out: *mut f32,
) {
    let n = shape.rows;
    for g in g0..g1 {
        let group = packed.as_ptr().add(g * shape.group_bytes());
        let r0 = g * GROUP;
        let live = (n - r0).min(GROUP);
        let mask: __mmask16 = if live == GROUP {
            0xFFFF
        } else {
            (1u16 << live) - 1
        };
        let at = |t: usize| out.add(t * n + r0);
        let mut t = 0;
        while t + 4 <= acts.len() {
            group_tile::<F, 4>(
                shape,
                group,
                &[acts[t], acts[t + 1], acts[t + 2], acts[t + 3]],
                [at(t), at(t + 1), at(t + 2), at(t + 3)],
                mask,
            );
            t += 4;
        }
        match acts.len() - t {
            3 => group_tile::<F, 3>(
                shape,
                group,
                &[acts[t], acts[t + 1], acts[t + 2]],
                [at(t), at(t + 1), at(t + 2)],
                mask,
            ),
            2 => group_tile::<F, 2>(
                shape,
                group,
                &[acts[t], acts[t + 1]],
                [at(t), at(t + 1)],
                mask,
            ),
            1 => group_tile::<F, 1>(shape, group, &[acts[t]], [at(t)], mask),
            _ => {}
        }
    }
}

/// Writes `out[t * shape.rows + r]` for every row `r` in groups `g0..g1`
/// and every activation row `t`.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL and VNNI; `packed` must hold
/// `shape`'s layout, each activation row `shape.blocks` blocks of the
/// format's activation type (with scales, and sums for Q4_0 / Q8_0), and
/// `out` must be valid for `acts.len() * shape.rows` f32 writes.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn matmul_groups(
    shape: &PackedShape,
    packed: &[u8],
    g0: usize,
    g1: usize,
    acts: &[ActView],
    out: *mut f32,
) {
    match shape.format {
        PackedFormat::Q4_0 => groups::<0>(shape, packed, g0, g1, acts, out),
        PackedFormat::Q4_1 => groups::<1>(shape, packed, g0, g1, acts, out),
        PackedFormat::Q8_0 => groups::<2>(shape, packed, g0, g1, acts, out),
    }
}
