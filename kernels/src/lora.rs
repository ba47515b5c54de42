//! LoRA shrink and expand: the low-rank update `y += B (A x)` of a
//! projection, applied per segment of rows that share one adapter, after
//! the base matrix product ran once for every row (Punica's SGMV idea).
//!
//! Adapter matrices are small (rank × features) and stay in f32 or f16;
//! `A` is stored as PEFT has it (`rank x in`, rows dotted with `x`), `B`
//! transposed (`rank x out`, rows added to `y` scaled by `A x`). The
//! adapter's scaling multiplies `A x` (r values a row), so f16 weights are
//! exactly the file's values. Rows are split across the kernel
//! threads; a row's update is computed by the same operations whatever the
//! other rows are, so batching does not change a sequence's numbers.

use crate::cpu::{simd_level, SimdLevel};
use crate::threads::parallel_for;
use crate::{shape_err, Error, Result};
use half::f16;
use std::ops::Range;

/// The largest rank the kernels take (vLLM's largest `max_lora_rank`).
pub const MAX_RANK: usize = 512;

/// Rows one pool task updates.
const ROWS_PER_TASK: usize = 4;

/// The values of a row-major adapter matrix.
#[derive(Clone, Debug, PartialEq)]
pub enum LoraValues {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

/// A row-major `rows x cols` adapter matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraMatrix {
    rows: usize,
    cols: usize,
    values: LoraValues,
}

impl LoraMatrix {
    pub fn new(rows: usize, cols: usize, values: LoraValues) -> Result<Self> {
        let len = match &values {
            LoraValues::F32(v) => v.len(),
            LoraValues::F16(v) => v.len(),
        };
        if rows.checked_mul(cols) != Some(len) {
            return Err(shape_err(
                "LoraMatrix::new",
                format!("{rows} x {cols} from {len} values"),
            ));
        }
        Ok(LoraMatrix { rows, cols, values })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn values(&self) -> &LoraValues {
        &self.values
    }

    /// Bytes of storage.
    pub fn bytes(&self) -> usize {
        match &self.values {
            LoraValues::F32(v) => v.len() * 4,
            LoraValues::F16(v) => v.len() * 2,
        }
    }

    fn row(&self, r: usize) -> Row<'_> {
        let span = r * self.cols..(r + 1) * self.cols;
        match &self.values {
            LoraValues::F32(v) => Row::F32(&v[span]),
            LoraValues::F16(v) => Row::F16(&v[span]),
        }
    }
}

#[derive(Clone, Copy)]
enum Row<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

/// One low-rank update of a column range of a projection's output:
/// `y[:, col..col + out] += scale · (x A^T) Bt`.
#[derive(Clone, Copy, Debug)]
pub struct LoraPart<'a> {
    /// `rank x in`.
    pub a: &'a LoraMatrix,
    /// `rank x out`.
    pub bt: &'a LoraMatrix,
    pub scale: f32,
    /// The first output column it updates.
    pub col: usize,
}

/// Rows of a step that share one adapter, and that adapter's parts for
/// this projection.
#[derive(Clone, Debug)]
pub struct LoraSegment<'a> {
    pub rows: Range<usize>,
    pub parts: Vec<LoraPart<'a>>,
}

/// Applies every segment's update to `y [T, out]` from `x [T, in]`.
/// Segments must not overlap; rows outside every segment are untouched.
pub fn lora_apply(
    x: &[f32],
    in_features: usize,
    y: &mut [f32],
    out_features: usize,
    segments: &[LoraSegment],
) -> Result<()> {
    check(x, in_features, y, out_features, segments)?;
    let kernels = Kernels::for_level(simd_level());
    let tasks: Vec<(usize, Range<usize>)> = segments
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.rows
                .clone()
                .step_by(ROWS_PER_TASK)
                .map(move |r| (i, r..(r + ROWS_PER_TASK).min(s.rows.end)))
        })
        .collect();
    let y_len = y.len();
    let base = YPtr(y.as_mut_ptr());
    parallel_for(tasks.len(), |t| {
        let (seg, rows) = &tasks[t];
        for r in rows.clone() {
            // SAFETY: `check` proved the segments disjoint and inside `y`,
            // and tasks split segments into disjoint row ranges, so no two
            // tasks touch the same row; `y` stays borrowed until all end.
            let y_row = unsafe {
                debug_assert!((r + 1) * out_features <= y_len);
                std::slice::from_raw_parts_mut(base.get().add(r * out_features), out_features)
            };
            let x_row = &x[r * in_features..(r + 1) * in_features];
            for p in &segments[*seg].parts {
                update_row(&kernels, p, x_row, y_row);
            }
        }
    });
    Ok(())
}

fn check(
    x: &[f32],
    in_features: usize,
    y: &[f32],
    out_features: usize,
    segments: &[LoraSegment],
) -> Result<()> {
    if in_features == 0 || out_features == 0 || !x.len().is_multiple_of(in_features) {
        return Err(shape_err(
            "lora_apply",
            format!("x of {} values, {in_features} features", x.len()),
        ));
    }
    let rows = x.len() / in_features;
    if y.len() != rows * out_features {
        return Err(shape_err(
            "lora_apply",
            format!("y of {} values for {rows} rows of {out_features}", y.len()),
        ));
    }
    let mut spans: Vec<&Range<usize>> = segments.iter().map(|s| &s.rows).collect();
    spans.sort_by_key(|r| r.start);
    let mut end = 0;
    for s in spans {
        if s.start < end || s.end > rows || s.start > s.end {
            return Err(shape_err(
                "lora_apply",
                format!("segment rows {s:?} overlap another or pass the {rows} rows"),
            ));
        }
        end = s.end;
    }
    for p in segments.iter().flat_map(|s| &s.parts) {
        let rank = p.a.rows;
        if rank == 0 || rank > MAX_RANK || p.bt.rows != rank {
            return Err(Error::Invalid(format!(
                "LoRA ranks: A has {} rows, B^T {} (1..={MAX_RANK} and equal)",
                p.a.rows, p.bt.rows
            )));
        }
        if p.a.cols != in_features || p.col + p.bt.cols > out_features {
            return Err(shape_err(
                "lora_apply",
                format!(
                    "A is {} x {} for {in_features} inputs; B^T is {} x {} at column {} of {out_features}",
                    p.a.rows, p.a.cols, p.bt.rows, p.bt.cols, p.col
                ),
            ));
        }
    }
    Ok(())
}

/// One row, one part: `t = scale · A x`, then `y[col..] += t Bt`.
fn update_row(k: &Kernels, p: &LoraPart, x: &[f32], y: &mut [f32]) {
    let rank = p.a.rows;
    let mut t = [0f32; MAX_RANK];
    for (i, ti) in t[..rank].iter_mut().enumerate() {
        *ti = p.scale
            * match p.a.row(i) {
                Row::F32(a) => (k.dot_f32)(a, x),
                Row::F16(a) => (k.dot_f16)(a, x),
            };
    }
    let y = &mut y[p.col..p.col + p.bt.cols];
    for (i, &ti) in t[..rank].iter().enumerate() {
        match p.bt.row(i) {
            Row::F32(b) => (k.axpy_f32)(ti, b, y),
            Row::F16(b) => (k.axpy_f16)(ti, b, y),
        }
    }
}

struct YPtr(*mut f32);
// SAFETY: hands disjoint rows of one slice to pool tasks (see lora_apply).
unsafe impl Send for YPtr {}
unsafe impl Sync for YPtr {}
impl YPtr {
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// The row kernels for one SIMD level.
struct Kernels {
    dot_f32: fn(&[f32], &[f32]) -> f32,
    dot_f16: fn(&[f16], &[f32]) -> f32,
    axpy_f32: fn(f32, &[f32], &mut [f32]),
    axpy_f16: fn(f32, &[f16], &mut [f32]),
}

impl Kernels {
    fn for_level(level: SimdLevel) -> Kernels {
        #[cfg(target_arch = "x86_64")]
        match level {
            SimdLevel::Avx512 => return x86::AVX512,
            SimdLevel::Avx2 => return x86::AVX2,
            SimdLevel::Scalar => {}
        }
        let _ = level;
        Kernels {
            dot_f32: scalar::dot_f32,
            dot_f16: scalar::dot_f16,
            axpy_f32: scalar::axpy_f32,
            axpy_f16: scalar::axpy_f16,
        }
    }
}

/// The same update on the calling thread with the kernels of `level` (at
/// most the CPU's): `SimdLevel::Scalar` is the portable reference the
/// vector paths are tested against.
pub fn lora_apply_at(
    level: SimdLevel,
    x: &[f32],
    in_features: usize,
    y: &mut [f32],
    out_features: usize,
    segments: &[LoraSegment],
) -> Result<()> {
    check(x, in_features, y, out_features, segments)?;
    let level = level.min(simd_level());
    let kernels = Kernels::for_level(level);
    for s in segments {
        for r in s.rows.clone() {
            let x_row = &x[r * in_features..(r + 1) * in_features];
            let y_row = &mut y[r * out_features..(r + 1) * out_features];
            for p in &s.parts {
                update_row(&kernels, p, x_row, y_row);
            }
        }
    }
    Ok(())
}

mod scalar {
    use half::f16;

    pub fn dot_f32(a: &[f32], x: &[f32]) -> f32 {
        a.iter().zip(x).map(|(a, x)| a * x).sum()
    }

    pub fn dot_f16(a: &[f16], x: &[f32]) -> f32 {
        a.iter().zip(x).map(|(a, x)| a.to_f32() * x).sum()
    }

    pub fn axpy_f32(alpha: f32, b: &[f32], y: &mut [f32]) {
        for (y, b) in y.iter_mut().zip(b) {
            *y += alpha * b;
        }
    }

    pub fn axpy_f16(alpha: f32, b: &[f16], y: &mut [f32]) {
        for (y, b) in y.iter_mut().zip(b) {
            *y += alpha * b.to_f32();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX2 (8 lanes, F16C) and AVX-512 (16 lanes) row kernels. The safe
    //! wrappers are only handed out by `Kernels::for_level` for a level the
    //! CPU reported.

    use super::Kernels;
    use half::f16;
    use std::arch::x86_64::*;

    // SAFETY (each wrapper): the target features match the level these
    // tables stand for, which `Kernels::for_level` hands out only when the
    // CPU reported it.
    pub const AVX2: Kernels = Kernels {
        dot_f32: |a, x| unsafe { dot_f32_avx2(a, x) },
        dot_f16: |a, x| unsafe { dot_f16_avx2(a, x) },
        axpy_f32: |s, b, y| unsafe { axpy_f32_avx2(s, b, y) },
        axpy_f16: |s, b, y| unsafe { axpy_f16_avx2(s, b, y) },
    };

    pub const AVX512: Kernels = Kernels {
        dot_f32: |a, x| unsafe { dot_f32_avx512(a, x) },
        dot_f16: |a, x| unsafe { dot_f16_avx512(a, x) },
        axpy_f32: |s, b, y| unsafe { axpy_f32_avx512(s, b, y) },
        axpy_f16: |s, b, y| unsafe { axpy_f16_avx512(s, b, y) },
    };

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum256(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_f32_avx2(a: &[f32], x: &[f32]) -> f32 {
        let n = a.len().min(x.len());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        // SAFETY (every load below): `i + width <= n` and both slices hold `n`.
        while i + 16 <= n {
            unsafe {
                s0 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(x.as_ptr().add(i)),
                    s0,
                );
                s1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i + 8)),
                    _mm256_loadu_ps(x.as_ptr().add(i + 8)),
                    s1,
                );
            }
            i += 16;
        }
        while i + 8 <= n {
            unsafe {
                s0 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(x.as_ptr().add(i)),
                    s0,
                );
            }
            i += 8;
        }
        let mut sum = unsafe { hsum256(_mm256_add_ps(s0, s1)) };
        for j in i..n {
            sum += a[j] * x[j];
        }
        sum
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_f16_avx2(a: &[f16], x: &[f32]) -> f32 {
        let n = a.len().min(x.len());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        // SAFETY (every load below): `i + width <= n` and both slices hold
        // `n`; f16 is 2 bytes, 8 of them one 128-bit load.
        while i + 16 <= n {
            unsafe {
                let a0 = _mm256_cvtph_ps(_mm_loadu_si128(a.as_ptr().add(i) as *const __m128i));
                let a1 = _mm256_cvtph_ps(_mm_loadu_si128(a.as_ptr().add(i + 8) as *const __m128i));
                s0 = _mm256_fmadd_ps(a0, _mm256_loadu_ps(x.as_ptr().add(i)), s0);
                s1 = _mm256_fmadd_ps(a1, _mm256_loadu_ps(x.as_ptr().add(i + 8)), s1);
            }
            i += 16;
        }
        while i + 8 <= n {
            unsafe {
                let av = _mm256_cvtph_ps(_mm_loadu_si128(a.as_ptr().add(i) as *const __m128i));
                s0 = _mm256_fmadd_ps(av, _mm256_loadu_ps(x.as_ptr().add(i)), s0);
            }
            i += 8;
        }
        let mut sum = unsafe { hsum256(_mm256_add_ps(s0, s1)) };
        for j in i..n {
            sum += a[j].to_f32() * x[j];
        }
        sum
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn axpy_f32_avx2(alpha: f32, b: &[f32], y: &mut [f32]) {
        let n = b.len().min(y.len());
        let av = _mm256_set1_ps(alpha);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n`, inside both slices.
            unsafe {
                let p = y.as_mut_ptr().add(i);
                let r = _mm256_fmadd_ps(av, _mm256_loadu_ps(b.as_ptr().add(i)), _mm256_loadu_ps(p));
                _mm256_storeu_ps(p, r);
            }
            i += 8;
        }
        for j in i..n {
            y[j] += alpha * b[j];
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn axpy_f16_avx2(alpha: f32, b: &[f16], y: &mut [f32]) {
        let n = b.len().min(y.len());
        let av = _mm256_set1_ps(alpha);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n`, inside both slices.
            unsafe {
                let p = y.as_mut_ptr().add(i);
                let bv = _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().add(i) as *const __m128i));
                _mm256_storeu_ps(p, _mm256_fmadd_ps(av, bv, _mm256_loadu_ps(p)));
            }
            i += 8;
        }
        for j in i..n {
            y[j] += alpha * b[j].to_f32();
        }
    }

    fn mask(n: usize) -> __mmask16 {
        if n >= 16 {
            0xFFFF
        } else {
            (1u16 << n) - 1
        }
    }

    #[target_feature(enable = "avx512f,fma")]
    unsafe fn dot_f32_avx512(a: &[f32], x: &[f32]) -> f32 {
        let n = a.len().min(x.len());
        let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: `i + 32 <= n`, inside both slices.
            unsafe {
                s0 = _mm512_fmadd_ps(
                    _mm512_loadu_ps(a.as_ptr().add(i)),
                    _mm512_loadu_ps(x.as_ptr().add(i)),
                    s0,
                );
                s1 = _mm512_fmadd_ps(
                    _mm512_loadu_ps(a.as_ptr().add(i + 16)),
                    _mm512_loadu_ps(x.as_ptr().add(i + 16)),
                    s1,
                );
            }
            i += 32;
        }
        while i < n {
            let m = mask(n - i);
            // SAFETY: lanes past `n` are masked off.
            unsafe {
                s0 = _mm512_fmadd_ps(
                    _mm512_maskz_loadu_ps(m, a.as_ptr().add(i)),
                    _mm512_maskz_loadu_ps(m, x.as_ptr().add(i)),
                    s0,
                );
            }
            i += 16;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(s0, s1))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    unsafe fn dot_f16_avx512(a: &[f16], x: &[f32]) -> f32 {
        let n = a.len().min(x.len());
        let mut s = _mm512_setzero_ps();
        let mut i = 0;
        while i < n {
            let m = mask(n - i);
            // SAFETY: lanes past `n` are masked off (16-bit lanes for the
            // f16 load, 32-bit lanes for x).
            unsafe {
                let raw = _mm256_maskz_loadu_epi16(m, a.as_ptr().add(i) as *const i16);
                let av = _mm512_cvtph_ps(raw);
                s = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, x.as_ptr().add(i)), s);
            }
            i += 16;
        }
        _mm512_reduce_add_ps(s)
    }

    #[target_feature(enable = "avx512f,fma")]
    unsafe fn axpy_f32_avx512(alpha: f32, b: &[f32], y: &mut [f32]) {
        let n = b.len().min(y.len());
        let av = _mm512_set1_ps(alpha);
        let mut i = 0;
        while i < n {
            let m = mask(n - i);
            // SAFETY: lanes past `n` are masked off.
            unsafe {
                let p = y.as_mut_ptr().add(i);
                let r = _mm512_fmadd_ps(
                    av,
                    _mm512_maskz_loadu_ps(m, b.as_ptr().add(i)),
                    _mm512_maskz_loadu_ps(m, p),
                );
                _mm512_mask_storeu_ps(p, m, r);
            }
            i += 16;
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    unsafe fn axpy_f16_avx512(alpha: f32, b: &[f16], y: &mut [f32]) {
        let n = b.len().min(y.len());
        let av = _mm512_set1_ps(alpha);
        let mut i = 0;
        while i < n {
            let m = mask(n - i);
            // SAFETY: lanes past `n` are masked off.
            unsafe {
                let p = y.as_mut_ptr().add(i);
                let raw = _mm256_maskz_loadu_epi16(m, b.as_ptr().add(i) as *const i16);
                let r = _mm512_fmadd_ps(av, _mm512_cvtph_ps(raw), _mm512_maskz_loadu_ps(m, p));
                _mm512_mask_storeu_ps(p, m, r);
            }
            i += 16;
        }
    }
}
