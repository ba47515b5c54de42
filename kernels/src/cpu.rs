//! Run-time CPU feature detection.
//!
//! The shipped binary targets baseline x86-64; the hot kernels have AVX2 and
//! AVX-512 variants that are picked once, here, from what the CPU reports.

use std::sync::OnceLock;

/// The widest SIMD level the kernels may use on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// Portable code only.
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX2 level plus AVX-512 F/BW/VL and VNNI.
    Avx512,
}

impl SimdLevel {
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }
}

fn detect() -> SimdLevel {
    if let Ok(forced) = std::env::var("LLM_SERVE_SIMD") {
        match forced.as_str() {
            "scalar" => return SimdLevel::Scalar,
            "avx2" => return detect_hw().min(SimdLevel::Avx2),
            _ => {}
        }
    }
    detect_hw()
}

#[cfg(target_arch = "x86_64")]
fn detect_hw() -> SimdLevel {
    let avx2 = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    let avx512 = avx2
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni");
    if avx512 {
        SimdLevel::Avx512
    } else if avx2 {
        SimdLevel::Avx2
    } else {
        SimdLevel::Scalar
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect_hw() -> SimdLevel {
    SimdLevel::Scalar
}

/// The SIMD level in use (detected once; `LLM_SERVE_SIMD=scalar|avx2` caps it).
pub fn simd_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(detect)
}
