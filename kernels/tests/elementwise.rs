//! RMSNorm, rotary embeddings and SwiGLU against their formulas.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod common;
use common::*;
use llm_serve_kernels::activation::silu_mul;
use llm_serve_kernels::norm::rms_norm;
use llm_serve_kernels::rope::{RopeStyle, RopeTable};

#[test]
fn rms_norm_matches_formula() {
    let mut r = rng(20);
    let d = 37;
    let x = randn(&mut r, 3 * d, 2.0);
    let w = randn(&mut r, d, 1.0);
    let mut out = vec![0f32; x.len()];
    rms_norm(&x, &w, 1e-5, &mut out).unwrap();
    for t in 0..3 {
        let row = &x[t * d..(t + 1) * d];
        let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / d as f64;
        let s = 1.0 / (ms + 1e-5).sqrt();
        for i in 0..d {
            let e = (row[i] as f64 * s * w[i] as f64) as f32;
            assert!((out[t * d + i] - e).abs() < 1e-5);
        }
    }
    assert!(rms_norm(&x, &w[..5], 1e-5, &mut out).is_err());
}

#[test]
fn rope_rotates_pairs_by_position_times_frequency() {
    let mut r = rng(21);
    let (heads, d) = (3, 8);
    let inv_freq: Vec<f32> = (0..d / 2)
        .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / d as f32))
        .collect();
    let positions = [0usize, 5, 17];
    for style in [RopeStyle::Interleaved, RopeStyle::HalfSplit] {
        let table = RopeTable::new(&inv_freq, 32, style, 1.0);
        let x = randn(&mut r, positions.len() * heads * d, 1.0);
        let mut y = x.clone();
        table.apply(&mut y, &positions, heads, d).unwrap();
        for (t, &p) in positions.iter().enumerate() {
            for h in 0..heads {
                let base = (t * heads + h) * d;
                for i in 0..d / 2 {
                    let (ia, ib) = match style {
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                        RopeStyle::HalfSplit => (i, i + d / 2),
                    };
                    let ang = p as f64 * inv_freq[i] as f64;
                    let (a, b) = (x[base + ia] as f64, x[base + ib] as f64);
                    assert!((y[base + ia] as f64 - (a * ang.cos() - b * ang.sin())).abs() < 1e-5);
                    assert!((y[base + ib] as f64 - (a * ang.sin() + b * ang.cos())).abs() < 1e-5);
                }
            }
        }
        let mut z = x.clone();
        assert!(
            table.apply(&mut z, &[0, 5, 32], heads, d).is_err(),
            "position past the table"
        );
    }
}

/// Short rows (a partial SIMD register) and a batch large enough to be
/// split across threads.
#[test]
fn silu_mul_matches_formula() {
    let mut r = rng(22);
    for (inter, rows) in [(5usize, 2usize), (1536, 12)] {
        let gu = randn(&mut r, rows * 2 * inter, 6.0);
        let mut out = vec![0f32; rows * inter];
        silu_mul(&gu, inter, &mut out).unwrap();
        for t in 0..rows {
            for i in 0..inter {
                let g = gu[t * 2 * inter + i] as f64;
                let u = gu[t * 2 * inter + inter + i] as f64;
                let e = g / (1.0 + (-g).exp()) * u;
                let got = out[t * inter + i] as f64;
                assert!(
                    (got - e).abs() < 1e-5 * e.abs().max(1.0),
                    "inter {inter} row {t} col {i}: {got} vs {e}"
                );
            }
        }
    }
}
