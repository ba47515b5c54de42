//! A vectorized `exp` for the kernels' softmax: Cephes' single-precision
//! polynomial (within 2 ulp of the true value over the normal range), so
//! that a softmax over 16 scores costs a handful of instructions instead of
//! 16 calls into libm.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Below this the result is flushed to 0 (it would be denormal).
const MIN_INPUT: f32 = -87.336_55;
/// Above this the result would overflow; inputs are clamped to it.
const MAX_INPUT: f32 = 88.0;

/// `exp` of each lane; `-inf` gives exactly 0.
///
/// # Safety
/// The CPU must support AVX-512F and FMA.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(unsafe_op_in_unsafe_fn)]
pub(crate) unsafe fn exp_avx512(x: __m512) -> __m512 {
    let in_range = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_set1_ps(MIN_INPUT));
    let x = _mm512_min_ps(x, _mm512_set1_ps(MAX_INPUT));
    let x = _mm512_max_ps(x, _mm512_set1_ps(MIN_INPUT));
    // x = n ln2 + r, |r| <= ln2 / 2, with ln2 split in two for precision.
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut y = _mm512_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(c));
    }
    let y = _mm512_add_ps(
        _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), r),
        _mm512_set1_ps(1.0),
    );
    let pow2n = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
        _mm512_cvtps_epi32(n),
        _mm512_set1_epi32(127),
    )));
    _mm512_maskz_mul_ps(in_range, y, pow2n)
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::cpu::{simd_level, SimdLevel};

    #[target_feature(enable = "avx512f,fma")]
    unsafe fn exp16(xs: &[f32; 16]) -> [f32; 16] {
        let mut out = [0f32; 16];
        // SAFETY: 16 values in and out.
        unsafe {
            _mm512_storeu_ps(out.as_mut_ptr(), exp_avx512(_mm512_loadu_ps(xs.as_ptr())));
        }
        out
    }

    #[test]
    fn matches_libm_within_two_ulp() {
        if simd_level() < SimdLevel::Avx512 {
            return;
        }
        let mut worst = 0u32;
        let mut x = -87.3f32;
        while x + 16.0 * 0.0037 < MAX_INPUT {
            let xs: [f32; 16] = std::array::from_fn(|i| x + i as f32 * 0.0037);
            // SAFETY: the CPU has AVX-512 (checked above).
            let got = unsafe { exp16(&xs) };
            for (g, &xi) in got.iter().zip(&xs) {
                let want = (xi as f64).exp() as f32;
                let ulps = (g.to_bits() as i64 - want.to_bits() as i64).unsigned_abs() as u32;
                worst = worst.max(ulps);
            }
            x += 0.0591;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        let edge = [
            f32::NEG_INFINITY,
            -1000.0,
            -88.0,
            -87.4,
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            1.0,
            88.0,
            88.5,
            1000.0,
            -87.33,
            2.0,
            -2.0,
            0.5,
        ];
        // SAFETY: as above.
        let got = unsafe { exp16(&edge) };
        assert_eq!(&got[..4], &[0.0; 4]);
        assert_eq!(got[4], 1.0);
        assert_eq!(got[5], 1.0);
        assert!(got[10].is_finite() && got[11].is_finite());
        assert!(got[12] > 0.0);
    }
}
