//! LoRA shrink/expand against the formula in f64, every SIMD level against
//! the portable one, and the shape checks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod common;
use common::*;
use half::f16;
use llm_serve_kernels::cpu::{simd_level, SimdLevel};
use llm_serve_kernels::lora::{
    lora_apply, lora_apply_at, LoraMatrix, LoraPart, LoraSegment, LoraValues,
};

fn matrix(rows: usize, cols: usize, values: Vec<f32>, half: bool) -> LoraMatrix {
    let v = if half {
        LoraValues::F16(values.iter().map(|&x| f16::from_f32(x)).collect())
    } else {
        LoraValues::F32(values)
    };
    LoraMatrix::new(rows, cols, v).unwrap()
}

fn values(m: &LoraMatrix) -> Vec<f64> {
    match m.values() {
        LoraValues::F32(v) => v.iter().map(|&x| x as f64).collect(),
        LoraValues::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
    }
}

/// `y[rows, col..col+out] += scale (x A^T) Bt` in f64.
fn reference(x: &[f32], inf: usize, y: &mut [f64], outf: usize, segs: &[LoraSegment]) {
    for s in segs {
        for r in s.rows.clone() {
            for p in &s.parts {
                let (a, bt) = (values(p.a), values(p.bt));
                let rank = p.a.rows();
                let out = p.bt.cols();
                for k in 0..rank {
                    let t: f64 = p.scale as f64
                        * (0..inf)
                            .map(|i| a[k * inf + i] * x[r * inf + i] as f64)
                            .sum::<f64>();
                    for j in 0..out {
                        y[r * outf + p.col + j] += t * bt[k * out + j];
                    }
                }
            }
        }
    }
}

struct Case {
    inf: usize,
    rows: usize,
    /// (rank, out columns, first column) of each part of the two adapters.
    parts: Vec<(usize, usize, usize)>,
    half: bool,
}

fn run_case(c: &Case, seed: u64) {
    let mut r = rng(seed);
    let outf = c.parts.iter().map(|p| p.2 + p.1).max().unwrap() + 3;
    let make = |r: &mut _| -> Vec<(LoraMatrix, LoraMatrix, usize)> {
        c.parts
            .iter()
            .map(|&(rank, out, col)| {
                (
                    matrix(rank, c.inf, randn(r, rank * c.inf, 0.5), c.half),
                    matrix(rank, out, randn(r, rank * out, 0.5), c.half),
                    col,
                )
            })
            .collect()
    };
    let scale = 0.75;
    let (m1, m2) = (make(&mut r), make(&mut r));
    fn parts(m: &[(LoraMatrix, LoraMatrix, usize)], scale: f32) -> Vec<LoraPart<'_>> {
        m.iter()
            .map(|(a, bt, col)| LoraPart {
                a,
                bt,
                scale,
                col: *col,
            })
            .collect()
    }
    // Rows 0..2 base (untouched), then adapter 1, a base row, adapter 2,
    // adapter 1 again: segments out of order and with gaps.
    let n = c.rows;
    let segs = vec![
        LoraSegment {
            rows: n - 1..n,
            parts: parts(&m1, scale),
        },
        LoraSegment {
            rows: 2..2 + (n - 4) / 2,
            parts: parts(&m1, scale),
        },
        LoraSegment {
            rows: 3 + (n - 4) / 2..n - 1,
            parts: parts(&m2, scale),
        },
    ];
    let x = randn(&mut r, n * c.inf, 1.0);
    let y0 = randn(&mut r, n * outf, 1.0);
    let mut expect: Vec<f64> = y0.iter().map(|&v| v as f64).collect();
    reference(&x, c.inf, &mut expect, outf, &segs);
    let expect: Vec<f32> = expect.iter().map(|&v| v as f32).collect();

    let mut y = y0.clone();
    lora_apply(&x, c.inf, &mut y, outf, &segs).unwrap();
    let tol = 1e-4 * max_abs(&expect).max(1.0);
    assert!(
        max_abs_diff(&y, &expect) < tol,
        "in {} half {}: {}",
        c.inf,
        c.half,
        max_abs_diff(&y, &expect)
    );
    // Base rows stay bit for bit.
    for row in [0, 1, 2 + (n - 4) / 2] {
        assert_eq!(
            y[row * outf..(row + 1) * outf],
            y0[row * outf..(row + 1) * outf]
        );
    }
    let mut levels = vec![SimdLevel::Scalar];
    for l in [SimdLevel::Avx2, SimdLevel::Avx512] {
        if simd_level() >= l {
            levels.push(l);
        }
    }
    for level in levels {
        let mut y_level = y0.clone();
        lora_apply_at(level, &x, c.inf, &mut y_level, outf, &segs).unwrap();
        assert!(
            max_abs_diff(&y_level, &expect) < tol,
            "{level:?}: {}",
            max_abs_diff(&y_level, &expect)
        );
        if level == simd_level() {
            // The threaded path runs the same row kernels.
            assert_eq!(y_level, y, "{level:?}");
        }
    }
}

#[test]
fn lora_update_matches_the_formula_at_every_simd_level() {
    let cases = [
        // A fused q/k/v-like projection: three parts, odd sizes (tails).
        Case {
            inf: 37,
            rows: 12,
            parts: vec![(8, 37, 0), (8, 13, 37), (8, 13, 50)],
            half: false,
        },
        Case {
            inf: 64,
            rows: 9,
            parts: vec![(16, 64, 0)],
            half: true,
        },
        // Mixed ranks (rank_pattern) and wide outputs.
        Case {
            inf: 96,
            rows: 11,
            parts: vec![(4, 160, 0), (32, 160, 160)],
            half: false,
        },
        Case {
            inf: 17,
            rows: 6,
            parts: vec![(1, 5, 2)],
            half: true,
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        run_case(c, 40 + i as u64);
    }
}

#[test]
fn bad_shapes_and_overlapping_segments_are_errors() {
    let a = matrix(4, 8, vec![0.1; 32], false);
    let bt = matrix(4, 6, vec![0.1; 24], false);
    let x = vec![1.0; 3 * 8];
    let mut y = vec![0.0; 3 * 6];
    let part = LoraPart {
        a: &a,
        bt: &bt,
        scale: 2.0,
        col: 0,
    };
    let seg = |rows| LoraSegment {
        rows,
        parts: vec![part],
    };
    assert!(lora_apply(&x, 8, &mut y, 6, &[seg(0..2), seg(1..3)]).is_err());
    assert!(lora_apply(&x, 8, &mut y, 6, &[seg(0..4)]).is_err());
    assert!(lora_apply(&x, 7, &mut y, 6, &[seg(0..1)]).is_err());
    let shifted = LoraPart { col: 1, ..part };
    let s = LoraSegment {
        rows: 0..1,
        parts: vec![shifted],
    };
    assert!(lora_apply(&x, 8, &mut y, 6, &[s]).is_err());
    let b3 = matrix(3, 6, vec![0.1; 18], false);
    let s = LoraSegment {
        rows: 0..1,
        parts: vec![LoraPart {
            a: &a,
            bt: &b3,
            scale: 1.0,
            col: 0,
        }],
    };
    assert!(lora_apply(&x, 8, &mut y, 6, &[s]).is_err());
    assert!(LoraMatrix::new(2, 3, LoraValues::F32(vec![0.0; 5])).is_err());
    // Nothing was written by the refused calls.
    assert!(y.iter().all(|&v| v == 0.0));
    lora_apply(&x, 8, &mut y, 6, &[seg(1..3)]).unwrap();
    assert!(y[..6].iter().all(|&v| v == 0.0));
    assert!((y[6] - 2.0 * 4.0 * 0.8 * 0.1).abs() < 1e-6);
}
