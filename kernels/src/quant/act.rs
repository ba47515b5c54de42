//! Quantization of activations (f32 rows) into the 8-bit block formats the
//! integer dot products consume, rounded the way ggml's SIMD paths round
//! (nearest, ties to even) so results track llama.cpp's closely.

use super::blocks::*;
use super::WeightType;
use crate::buffer::AlignedBytes;

/// The format a weight type's dot product wants its activations in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActFormat {
    F32,
    Q8_0,
    Q8_1,
    Q8K,
}

impl ActFormat {
    pub fn for_weight(w: WeightType) -> ActFormat {
        match w {
            // Q2_K / Q3_K are rare enough to take the dequantize-then-f32 path.
            WeightType::F32
            | WeightType::F16
            | WeightType::BF16
            | WeightType::Q2K
            | WeightType::Q3K => ActFormat::F32,
            WeightType::Q4_0 | WeightType::Q5_0 | WeightType::Q8_0 => ActFormat::Q8_0,
            WeightType::Q4_1 | WeightType::Q5_1 => ActFormat::Q8_1,
            WeightType::Q4K | WeightType::Q5K | WeightType::Q6K => ActFormat::Q8K,
        }
    }

    /// Bytes of one quantized row of `cols` elements.
    pub fn row_bytes(self, cols: usize) -> usize {
        match self {
            ActFormat::F32 => cols * 4,
            ActFormat::Q8_0 => cols / QK * std::mem::size_of::<BlockQ8_0>(),
            ActFormat::Q8_1 => cols / QK * std::mem::size_of::<BlockQ8_1>(),
            ActFormat::Q8K => cols / QK_K * std::mem::size_of::<BlockQ8K>(),
        }
    }
}

/// Rows of activations quantized for one weight type's dot product.
#[derive(Debug, Default)]
pub struct QuantizedActs {
    row_bytes: usize,
    rows: usize,
    buf: AlignedBytes,
    /// Q8_0 / Q8_1 only: per block `[d, s]` as f32 (the f16-rounded values
    /// stored in the blocks), so kernels need no conversions.
    scales: Vec<f32>,
    blocks_per_row: usize,
}

impl QuantizedActs {
    /// Quantizes `x` (`rows` rows of `cols` f32) into `format`, reusing this
    /// buffer's allocation.
    pub fn quantize(&mut self, format: ActFormat, x: &[f32], rows: usize, cols: usize) {
        debug_assert_eq!(x.len(), rows * cols);
        self.row_bytes = format.row_bytes(cols);
        self.rows = rows;
        self.buf.resize(self.row_bytes * rows);
        let row_bytes = self.row_bytes;
        for (r, src) in x.chunks_exact(cols).enumerate() {
            let dst = &mut self.buf.as_mut_slice()[r * row_bytes..(r + 1) * row_bytes];
            quantize_row(format, src, dst);
        }
        self.scales.clear();
        self.blocks_per_row = cols / QK;
        let f16 = |lo: u8, hi: u8| half::f16::from_bits(u16::from_le_bytes([lo, hi])).to_f32();
        match format {
            ActFormat::Q8_0 => {
                for b in self
                    .buf
                    .as_slice()
                    .chunks_exact(std::mem::size_of::<BlockQ8_0>())
                {
                    self.scales.extend([f16(b[0], b[1]), 0.0]);
                }
            }
            ActFormat::Q8_1 => {
                for b in self
                    .buf
                    .as_slice()
                    .chunks_exact(std::mem::size_of::<BlockQ8_1>())
                {
                    self.scales.extend([f16(b[0], b[1]), f16(b[2], b[3])]);
                }
            }
            ActFormat::F32 | ActFormat::Q8K => {}
        }
    }

    /// Q8_0 / Q8_1 rows: `[d, s]` per block, as f32.
    pub fn scales(&self, r: usize) -> &[f32] {
        let n = 2 * self.blocks_per_row;
        &self.scales[r * n..(r + 1) * n]
    }

    pub fn row(&self, r: usize) -> &[u8] {
        &self.buf.as_slice()[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
}

fn view_mut<B: Pod>(bytes: &mut [u8]) -> &mut [B] {
    let size = std::mem::size_of::<B>();
    assert!(
        bytes.len().is_multiple_of(size)
            && (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<B>())
    );
    // SAFETY: Pod block, aligned, whole blocks (checked above).
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<B>(), bytes.len() / size) }
}

/// Quantizes one row into `dst` (exactly `format.row_bytes(src.len())` bytes).
pub fn quantize_row(format: ActFormat, src: &[f32], dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::simd_level() >= crate::cpu::SimdLevel::Avx2 {
        // SAFETY: the CPU reported AVX2 and FMA.
        unsafe { quantize_row_avx2(format, src, dst) };
        return;
    }
    quantize_row_impl(format, src, dst)
}

/// The same code compiled with AVX2 (rounding becomes one instruction
/// instead of a libm call).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(format: ActFormat, src: &[f32], dst: &mut [u8]) {
    quantize_row_impl(format, src, dst)
}

#[inline(always)]
fn quantize_row_impl(format: ActFormat, src: &[f32], dst: &mut [u8]) {
    match format {
        ActFormat::F32 => {
            for (d, s) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&s.to_le_bytes());
            }
        }
        ActFormat::Q8_0 => {
            for (b, x) in view_mut::<BlockQ8_0>(dst)
                .iter_mut()
                .zip(src.chunks_exact(QK))
            {
                let (d, qs, _) = q8_block(x);
                b.d = half::f16::from_f32(d).to_bits();
                b.qs = qs;
            }
        }
        ActFormat::Q8_1 => {
            for (b, x) in view_mut::<BlockQ8_1>(dst)
                .iter_mut()
                .zip(src.chunks_exact(QK))
            {
                let (d, qs, sum) = q8_block(x);
                b.d = half::f16::from_f32(d).to_bits();
                b.s = half::f16::from_f32(d * sum as f32).to_bits();
                b.qs = qs;
            }
        }
        ActFormat::Q8K => {
            for (b, x) in view_mut::<BlockQ8K>(dst)
                .iter_mut()
                .zip(src.chunks_exact(QK_K))
            {
                q8k_block(x, b);
            }
        }
    }
}

#[inline(always)]
fn q8_block(x: &[f32]) -> (f32, [i8; QK], i32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; QK];
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        let r = (v * id).round_ties_even() as i32;
        *q = r as i8;
        sum += r;
    }
    (d, qs, sum)
}

#[inline(always)]
fn q8k_block(x: &[f32], b: &mut BlockQ8K) {
    let mut amax = 0f32;
    let mut max = 0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        b.d = 0.0;
        b.qs = [0; QK_K];
        b.bsums = [0; QK_K / 16];
        return;
    }
    let iscale = -127.0 / max;
    for (q, v) in b.qs.iter_mut().zip(x) {
        *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
    }
    for (j, s) in b.bsums.iter_mut().enumerate() {
        *s = b.qs[16 * j..16 * j + 16].iter().map(|&q| q as i16).sum();
    }
    b.d = 1.0 / iscale;
}
