//! Picks the dot-product kernel for a weight type on this CPU.

use super::act::ActFormat;
use super::blocks::view;
use super::dot_ref;
use super::WeightType;
use crate::cpu::{simd_level, SimdLevel};

/// Dot product of one weight row (raw blocks) with one activation row
/// quantized in `ActFormat::for_weight` of the weight type.
pub type DotFn = fn(w: &[u8], a: &[u8]) -> f32;

macro_rules! portable {
    ($t:expr) => {
        |w: &[u8], a: &[u8]| dot_ref::dot($t, w, a)
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::dot_avx2 as k;
    use super::view;

    // SAFETY (all below): only handed out when `simd_level()` reports AVX2,
    // FMA and F16C; slices are whole blocks viewed in place.
    pub fn q4_0(w: &[u8], a: &[u8]) -> f32 {
        unsafe { k::q4_0(view(w), view(a)) }
    }
    pub fn q4_1(w: &[u8], a: &[u8]) -> f32 {
        unsafe { k::q4_1(view(w), view(a)) }
    }
    pub fn q5_0(w: &[u8], a: &[u8]) -> f32 {
        unsafe { k::q5_0(view(w), view(a)) }
    }
    pub fn q5_1(w: &[u8], a: &[u8]) -> f32 {
        unsafe { k::q5_1(view(w), view(a)) }
    }
    pub fn q8_0(w: &[u8], a: &[u8]) -> f32 {
        unsafe { k::q8_0(view(w), view(a)) }
    }
    pub fn q4k(w: &[u8], a: &[u8]) -> f32 {
        unsafe { k::q4k(view(w), view(a)) }
    }
    pub fn q5k(w: &[u8], a: &[u8]) -> f32 {
        unsafe { k::q5k(view(w), view(a)) }
    }
    pub fn q6k(w: &[u8], a: &[u8]) -> f32 {
        unsafe { k::q6k(view(w), view(a)) }
    }
    pub fn f32(w: &[u8], a: &[u8]) -> f32 {
        unsafe { k::f32_f32(view(w), view(a)) }
    }
    pub fn f16(w: &[u8], a: &[u8]) -> f32 {
        unsafe { k::f16_f32(view(w), view(a)) }
    }
    pub fn bf16(w: &[u8], a: &[u8]) -> f32 {
        unsafe { k::bf16_f32(view(w), view(a)) }
    }
}

/// The fastest kernel for `wtype` at `level` (the portable one where no SIMD
/// kernel exists).
pub fn dot_fn_for(wtype: WeightType, level: SimdLevel) -> DotFn {
    #[cfg(target_arch = "x86_64")]
    if level >= SimdLevel::Avx2 {
        return match wtype {
            WeightType::Q4_0 => avx2::q4_0,
            WeightType::Q4_1 => avx2::q4_1,
            WeightType::Q5_0 => avx2::q5_0,
            WeightType::Q5_1 => avx2::q5_1,
            WeightType::Q8_0 => avx2::q8_0,
            WeightType::Q4K => avx2::q4k,
            WeightType::Q5K => avx2::q5k,
            WeightType::Q6K => avx2::q6k,
            WeightType::F32 => avx2::f32,
            WeightType::F16 => avx2::f16,
            WeightType::BF16 => avx2::bf16,
            WeightType::Q2K => portable!(WeightType::Q2K),
            WeightType::Q3K => portable!(WeightType::Q3K),
        };
    }
    let _ = level;
    match wtype {
        WeightType::F32 => portable!(WeightType::F32),
        WeightType::F16 => portable!(WeightType::F16),
        WeightType::BF16 => portable!(WeightType::BF16),
        WeightType::Q4_0 => portable!(WeightType::Q4_0),
        WeightType::Q4_1 => portable!(WeightType::Q4_1),
        WeightType::Q5_0 => portable!(WeightType::Q5_0),
        WeightType::Q5_1 => portable!(WeightType::Q5_1),
        WeightType::Q8_0 => portable!(WeightType::Q8_0),
        WeightType::Q2K => portable!(WeightType::Q2K),
        WeightType::Q3K => portable!(WeightType::Q3K),
        WeightType::Q4K => portable!(WeightType::Q4K),
        WeightType::Q5K => portable!(WeightType::Q5K),
        WeightType::Q6K => portable!(WeightType::Q6K),
    }
}

/// The kernel for `wtype` on this CPU.
pub fn dot_fn(wtype: WeightType) -> DotFn {
    dot_fn_for(wtype, simd_level())
}

/// Activation format for `wtype` (re-exported for callers of `dot_fn`).
pub fn act_format(wtype: WeightType) -> ActFormat {
    ActFormat::for_weight(wtype)
}
