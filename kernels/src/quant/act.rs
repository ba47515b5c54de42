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
    /// stored in the blocks; `s` is 0 for Q8_0), so kernels need no
    /// conversions.
    scales: Vec<f32>,
    /// Q8_0 only: the sum of each block's quantized values.
    sums: Vec<i32>,
    blocks_per_row: usize,
}

/// Below this many activation values quantization stays on the calling
/// thread (a parallel region costs more than it saves).
const PARALLEL_MIN_VALUES: usize = 16 * 1024;

impl QuantizedActs {
    /// Quantizes `x` (`rows` rows of `cols` f32) into `format`, reusing this
    /// buffer's allocation; large batches are quantized across the pool.
    pub fn quantize(&mut self, format: ActFormat, x: &[f32], rows: usize, cols: usize) {
        debug_assert_eq!(x.len(), rows * cols);
        self.row_bytes = format.row_bytes(cols);
        self.rows = rows;
        self.blocks_per_row = cols / QK;
        self.buf.resize(self.row_bytes * rows);
        let bpr = self.blocks_per_row;
        let (scales_per_row, sums_per_row) = match format {
            ActFormat::Q8_0 => (2 * bpr, bpr),
            ActFormat::Q8_1 => (2 * bpr, 0),
            ActFormat::F32 | ActFormat::Q8K => (0, 0),
        };
        self.scales.resize(scales_per_row * rows, 0.0);
        self.sums.resize(sums_per_row * rows, 0);
        let sink = RowSink {
            buf: self.buf.as_mut_slice().as_mut_ptr(),
            scales: self.scales.as_mut_ptr(),
            sums: self.sums.as_mut_ptr(),
        };
        let row_bytes = self.row_bytes;
        let one_row = |r: usize| {
            // SAFETY: each row's parts are disjoint from every other row's
            // and inside the buffers sized above; no other reference to them
            // exists while `quantize` runs.
            let (dst, scales, sums) =
                unsafe { sink.row(r, row_bytes, scales_per_row, sums_per_row) };
            quantize_row_with_sides(format, &x[r * cols..(r + 1) * cols], dst, scales, sums);
        };
        if rows > 1 && rows * cols >= PARALLEL_MIN_VALUES {
            crate::threads::parallel_for(rows, one_row);
        } else {
            (0..rows).for_each(one_row);
        }
    }

    /// Q8_0 / Q8_1 rows: `[d, s]` per block, as f32.
    pub fn scales(&self, r: usize) -> &[f32] {
        let n = 2 * self.blocks_per_row;
        &self.scales[r * n..(r + 1) * n]
    }

    /// Q8_0 rows: the sum of each block's quantized values.
    pub fn sums(&self, r: usize) -> &[i32] {
        if self.sums.is_empty() {
            return &[];
        }
        let n = self.blocks_per_row;
        &self.sums[r * n..(r + 1) * n]
    }

    pub fn row(&self, r: usize) -> &[u8] {
        &self.buf.as_slice()[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// The three outputs of a quantization, shared by the pool's tasks (each
/// writes only its own rows).
#[derive(Clone, Copy)]
struct RowSink {
    buf: *mut u8,
    scales: *mut f32,
    sums: *mut i32,
}
// SAFETY: tasks write disjoint rows (see `QuantizedActs::quantize`).
unsafe impl Send for RowSink {}
unsafe impl Sync for RowSink {}

impl RowSink {
    /// Row `r`'s bytes, scales and sums.
    ///
    /// # Safety
    /// The buffers must hold row `r` at these strides, and no other
    /// reference to that row's parts may exist while the slices live.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(
        &self,
        r: usize,
        row_bytes: usize,
        scales_per_row: usize,
        sums_per_row: usize,
    ) -> (&mut [u8], &mut [f32], &mut [i32]) {
        // SAFETY: as the caller promises.
        unsafe {
            (
                std::slice::from_raw_parts_mut(self.buf.add(r * row_bytes), row_bytes),
                std::slice::from_raw_parts_mut(self.scales.add(r * scales_per_row), scales_per_row),
                std::slice::from_raw_parts_mut(self.sums.add(r * sums_per_row), sums_per_row),
            )
        }
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
    quantize_row_with_sides(format, src, dst, &mut [], &mut [])
}

/// Quantizes one row into `dst` and, where they are not empty, each
/// block's `[d, s]` as f32 into `scales` and its value sum into `sums`.
fn quantize_row_with_sides(
    format: ActFormat,
    src: &[f32],
    dst: &mut [u8],
    scales: &mut [f32],
    sums: &mut [i32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        let level = crate::cpu::simd_level();
        if level >= crate::cpu::SimdLevel::Avx512
            && matches!(format, ActFormat::Q8_0 | ActFormat::Q8_1)
        {
            // SAFETY: the CPU reported AVX-512 F/BW/VL, FMA and F16C.
            unsafe { quantize_q8_avx512(format, src, dst, scales, sums) };
            return;
        }
        if level >= crate::cpu::SimdLevel::Avx2 {
            // SAFETY: the CPU reported AVX2 and FMA.
            unsafe { quantize_row_avx2(format, src, dst, scales, sums) };
            return;
        }
    }
    quantize_row_impl(format, src, dst, scales, sums)
}

/// Q8_0 / Q8_1 blocks with AVX-512: the same arithmetic as `q8_block`
/// (max |x|, scale 127 / max, round to nearest even), two registers per
/// block, so the results are identical to the portable code's.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn quantize_q8_avx512(
    format: ActFormat,
    src: &[f32],
    dst: &mut [u8],
    scales: &mut [f32],
    sums: &mut [i32],
) {
    use std::arch::x86_64::*;
    let q8_1 = format == ActFormat::Q8_1;
    let block_bytes = if q8_1 {
        std::mem::size_of::<BlockQ8_1>()
    } else {
        std::mem::size_of::<BlockQ8_0>()
    };
    let qs_offset = block_bytes - QK;
    for (i, (x, b)) in src
        .chunks_exact(QK)
        .zip(dst.chunks_exact_mut(block_bytes))
        .enumerate()
    {
        // SAFETY: `x` holds 32 values and `b` one whole block.
        unsafe {
            let lo = _mm512_loadu_ps(x.as_ptr());
            let hi = _mm512_loadu_ps(x.as_ptr().add(16));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
            let d = amax / 127.0;
            let id = _mm512_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
            // The default rounding mode: nearest, ties to even.
            let qlo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, id));
            let qhi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, id));
            let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(qlo, qhi));
            let qs = b.as_mut_ptr().add(qs_offset);
            _mm_storeu_si128(qs.cast(), _mm512_cvtepi32_epi8(qlo));
            _mm_storeu_si128(qs.add(16).cast(), _mm512_cvtepi32_epi8(qhi));
            let dh = half::f16::from_f32(d);
            b[0..2].copy_from_slice(&dh.to_bits().to_le_bytes());
            let sh = half::f16::from_f32(d * sum as f32);
            if q8_1 {
                b[2..4].copy_from_slice(&sh.to_bits().to_le_bytes());
            }
            if !scales.is_empty() {
                scales[2 * i] = dh.to_f32();
                scales[2 * i + 1] = if q8_1 { sh.to_f32() } else { 0.0 };
            }
            if !sums.is_empty() {
                sums[i] = sum;
            }
        }
    }
}

/// The same code compiled with AVX2 (rounding becomes one instruction
/// instead of a libm call).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(
    format: ActFormat,
    src: &[f32],
    dst: &mut [u8],
    scales: &mut [f32],
    sums: &mut [i32],
) {
    quantize_row_impl(format, src, dst, scales, sums)
}

#[inline(always)]
fn quantize_row_impl(
    format: ActFormat,
    src: &[f32],
    dst: &mut [u8],
    scales: &mut [f32],
    sums: &mut [i32],
) {
    let f16_round = |v: f32| half::f16::from_f32(v);
    match format {
        ActFormat::F32 => {
            for (d, s) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&s.to_le_bytes());
            }
        }
        ActFormat::Q8_0 => {
            for (i, (b, x)) in view_mut::<BlockQ8_0>(dst)
                .iter_mut()
                .zip(src.chunks_exact(QK))
                .enumerate()
            {
                let (d, qs, sum) = q8_block(x);
                let d = f16_round(d);
                b.d = d.to_bits();
                b.qs = qs;
                if !scales.is_empty() {
                    scales[2 * i] = d.to_f32();
                    scales[2 * i + 1] = 0.0;
                }
                if !sums.is_empty() {
                    sums[i] = sum;
                }
            }
        }
        ActFormat::Q8_1 => {
            for (i, (b, x)) in view_mut::<BlockQ8_1>(dst)
                .iter_mut()
                .zip(src.chunks_exact(QK))
                .enumerate()
            {
                let (d, qs, sum) = q8_block(x);
                let (dh, sh) = (f16_round(d), f16_round(d * sum as f32));
                b.d = dh.to_bits();
                b.s = sh.to_bits();
                b.qs = qs;
                if !scales.is_empty() {
                    scales[2 * i] = dh.to_f32();
                    scales[2 * i + 1] = sh.to_f32();
                }
                if !sums.is_empty() {
                    sums[i] = sum;
                }
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

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The AVX-512 quantizer writes the same bytes, scales and sums as the
    /// portable one, ties and all-zero blocks included.
    #[test]
    fn avx512_quantization_equals_portable() {
        if crate::cpu::simd_level() < crate::cpu::SimdLevel::Avx512 {
            return;
        }
        let blocks = 64;
        let mut x: Vec<f32> = (0..blocks * QK)
            .map(|i| ((i as f32 * 0.731).sin() * (1 + i % 7) as f32) * 3.1)
            .collect();
        // A block of zeros, and one whose values land exactly on .5 steps.
        x[..QK].fill(0.0);
        for (j, v) in x[QK..2 * QK].iter_mut().enumerate() {
            *v = (j as f32 - 16.0) * 0.5 + if j == 0 { 0.0 } else { 0.25 };
        }
        x[QK] = 127.0 / 8.0;
        for format in [ActFormat::Q8_0, ActFormat::Q8_1] {
            let bytes = format.row_bytes(x.len());
            let (mut a, mut b) = (vec![0u8; bytes], vec![0u8; bytes]);
            let (mut sa, mut sb) = (vec![0f32; 2 * blocks], vec![0f32; 2 * blocks]);
            let (mut ua, mut ub) = (vec![0i32; blocks], vec![0i32; blocks]);
            quantize_row_impl(format, &x, &mut a, &mut sa, &mut ua);
            // SAFETY: the CPU has AVX-512 (checked above).
            unsafe { quantize_q8_avx512(format, &x, &mut b, &mut sb, &mut ub) };
            assert_eq!(a, b, "{format:?} blocks");
            assert_eq!(sa, sb, "{format:?} scales");
            assert_eq!(ua, ub, "{format:?} sums");
        }
    }
}
