//! Portable dot products between one weight row and one quantized
//! activation row. These define the arithmetic the SIMD kernels must match
//! (integer sums are exact, so SIMD results differ only in float rounding).

use super::act::ActFormat;
use super::blocks::*;
use super::dequant::dequantize;
use super::WeightType;

/// `w` is one row of `wtype` blocks, `a` the same row length quantized with
/// `ActFormat::for_weight(wtype)`.
pub fn dot(wtype: WeightType, w: &[u8], a: &[u8]) -> f32 {
    match wtype {
        WeightType::Q4_0 => q4_0(view(w), view(a)),
        WeightType::Q4_1 => q4_1(view(w), view(a)),
        WeightType::Q5_0 => q5_0(view(w), view(a)),
        WeightType::Q5_1 => q5_1(view(w), view(a)),
        WeightType::Q8_0 => q8_0(view(w), view(a)),
        WeightType::Q4K => q4k(view(w), view(a)),
        WeightType::Q5K => q5k(view(w), view(a)),
        WeightType::Q6K => q6k(view(w), view(a)),
        WeightType::F32
        | WeightType::F16
        | WeightType::BF16
        | WeightType::Q2K
        | WeightType::Q3K => {
            debug_assert_eq!(ActFormat::for_weight(wtype), ActFormat::F32);
            f32_dequant(wtype, w, view(a))
        }
    }
}

/// Dequantizes `w` in block-sized pieces and dots it with f32 activations.
fn f32_dequant(wtype: WeightType, w: &[u8], a: &[f32]) -> f32 {
    let be = wtype.block_elems().max(32);
    let bb = be / wtype.block_elems() * wtype.block_bytes();
    let mut tmp = [0f32; 256];
    let mut sum = 0f32;
    for (wb, ab) in w.chunks_exact(bb).zip(a.chunks_exact(be)) {
        let t = &mut tmp[..be];
        dequantize(wtype, wb, t);
        sum += t.iter().zip(ab).map(|(x, y)| x * y).sum::<f32>();
    }
    sum
}

#[inline(always)]
fn nibbles(qs: &[u8; 16]) -> [i32; 32] {
    let mut q = [0i32; 32];
    for j in 0..16 {
        q[j] = (qs[j] & 0xF) as i32;
        q[j + 16] = (qs[j] >> 4) as i32;
    }
    q
}

#[inline(always)]
fn five_bits(qs: &[u8; 16], qh: [u8; 4]) -> [i32; 32] {
    let qh = u32::from_le_bytes(qh);
    let mut q = nibbles(qs);
    for (j, v) in q.iter_mut().enumerate() {
        *v |= (((qh >> j) & 1) << 4) as i32;
    }
    q
}

#[inline(always)]
fn idot(q: &[i32; 32], a: &[i8; 32]) -> i32 {
    q.iter().zip(a).map(|(&x, &y)| x * y as i32).sum()
}

fn q4_0(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    w.iter()
        .zip(a)
        .map(|(x, y)| {
            let q = nibbles(&x.qs).map(|v| v - 8);
            f16_bits(x.d) * f16_bits(y.d) * idot(&q, &y.qs) as f32
        })
        .sum()
}

fn q4_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    w.iter()
        .zip(a)
        .map(|(x, y)| {
            let q = nibbles(&x.qs);
            f16_bits(x.d) * f16_bits(y.d) * idot(&q, &y.qs) as f32 + f16_bits(x.m) * f16_bits(y.s)
        })
        .sum()
}

fn q5_0(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
    w.iter()
        .zip(a)
        .map(|(x, y)| {
            let q = five_bits(&x.qs, x.qh).map(|v| v - 16);
            f16_bits(x.d) * f16_bits(y.d) * idot(&q, &y.qs) as f32
        })
        .sum()
}

fn q5_1(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    w.iter()
        .zip(a)
        .map(|(x, y)| {
            let q = five_bits(&x.qs, x.qh);
            f16_bits(x.d) * f16_bits(y.d) * idot(&q, &y.qs) as f32 + f16_bits(x.m) * f16_bits(y.s)
        })
        .sum()
}

fn q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    w.iter()
        .zip(a)
        .map(|(x, y)| {
            let s: i32 =
                x.qs.iter()
                    .zip(&y.qs)
                    .map(|(&p, &q)| p as i32 * q as i32)
                    .sum();
            f16_bits(x.d) * f16_bits(y.d) * s as f32
        })
        .sum()
}

fn q4k(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    let mut total = 0f32;
    for (x, y) in w.iter().zip(a) {
        let mut isum = 0i32;
        let mut msum = 0i32;
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &x.scales);
            let qs = &x.qs[32 * (j / 2)..32 * (j / 2) + 32];
            let q8 = &y.qs[32 * j..32 * j + 32];
            let s: i32 = qs
                .iter()
                .zip(q8)
                .map(|(&q, &a)| {
                    let v = if j % 2 == 0 { q & 0xF } else { q >> 4 };
                    v as i32 * a as i32
                })
                .sum();
            isum += sc as i32 * s;
            msum += m as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
        }
        total += f16_bits(x.d) * y.d * isum as f32 - f16_bits(x.dmin) * y.d * msum as f32;
    }
    total
}

fn q5k(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    let mut total = 0f32;
    for (x, y) in w.iter().zip(a) {
        let mut isum = 0i32;
        let mut msum = 0i32;
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &x.scales);
            let qs = &x.qs[32 * (j / 2)..32 * (j / 2) + 32];
            let q8 = &y.qs[32 * j..32 * j + 32];
            let mut s = 0i32;
            for l in 0..32 {
                let low = if j % 2 == 0 { qs[l] & 0xF } else { qs[l] >> 4 };
                let high = ((x.qh[l] >> j) & 1) << 4;
                s += (low | high) as i32 * q8[l] as i32;
            }
            isum += sc as i32 * s;
            msum += m as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
        }
        total += f16_bits(x.d) * y.d * isum as f32 - f16_bits(x.dmin) * y.d * msum as f32;
    }
    total
}

fn q6k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    let mut total = 0f32;
    for (x, y) in w.iter().zip(a) {
        let mut isum = 0i32;
        for n in 0..2 {
            let ql = &x.ql[64 * n..64 * n + 64];
            let qh = &x.qh[32 * n..32 * n + 32];
            let sc = &x.scales[8 * n..8 * n + 8];
            let q8 = &y.qs[128 * n..128 * n + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                isum += sc[is] as i32 * q1 * q8[l] as i32
                    + sc[is + 2] as i32 * q2 * q8[l + 32] as i32
                    + sc[is + 4] as i32 * q3 * q8[l + 64] as i32
                    + sc[is + 6] as i32 * q4 * q8[l + 96] as i32;
            }
        }
        total += f16_bits(x.d) * y.d * isum as f32;
    }
    total
}
