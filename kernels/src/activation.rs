//! The SwiGLU activation of llama-family MLPs, fused with the split of the
//! gate/up projection: `out = silu(gate) * up`.

use crate::cpu::{simd_level, SimdLevel};
use crate::{shape_err, Result};

/// Below this many outputs the activation stays on the calling thread.
const PARALLEL_MIN: usize = 16 * 1024;

/// `gate_up` holds rows `[gate (inter), up (inter)]`; `out` rows of `inter`.
pub fn silu_mul(gate_up: &[f32], inter: usize, out: &mut [f32]) -> Result<()> {
    if inter == 0 || !gate_up.len().is_multiple_of(2 * inter) || out.len() * 2 != gate_up.len() {
        return Err(shape_err(
            "silu_mul",
            format!(
                "gate_up {} / inter {inter} / out {}",
                gate_up.len(),
                out.len()
            ),
        ));
    }
    let simd = cfg!(target_arch = "x86_64") && simd_level() >= SimdLevel::Avx512;
    let row = |r: usize, o: &mut [f32]| {
        let (g, u) = gate_up[r * 2 * inter..(r + 1) * 2 * inter].split_at(inter);
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: the CPU reported AVX-512F and FMA.
            return unsafe { silu_mul_avx512(g, u, o) };
        }
        let _ = simd;
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    };
    if out.len() >= PARALLEL_MIN && out.len() > inter {
        crate::threads::parallel_chunks_mut(out, inter, row);
    } else {
        for (r, o) in out.chunks_exact_mut(inter).enumerate() {
            row(r, o);
        }
    }
    Ok(())
}

/// One row with the vector `exp`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn silu_mul_avx512(g: &[f32], u: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let one = _mm512_set1_ps(1.0);
    let mut i = 0;
    while i < out.len() {
        let n = (out.len() - i).min(16);
        let mask: __mmask16 = if n == 16 { 0xFFFF } else { (1u16 << n) - 1 };
        // SAFETY: lanes past `n` are masked off, so every access is inside
        // the three slices (of equal length, checked by the caller).
        unsafe {
            let gv = _mm512_maskz_loadu_ps(mask, g.as_ptr().add(i));
            let uv = _mm512_maskz_loadu_ps(mask, u.as_ptr().add(i));
            let e = crate::exp::exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), gv));
            let silu = _mm512_div_ps(gv, _mm512_add_ps(one, e));
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), mask, _mm512_mul_ps(silu, uv));
        }
        i += n;
    }
}
