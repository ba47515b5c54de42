//! Weight-matrix products: both paths against f32 arithmetic, row fusion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod common;
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use common::*;
use llm_serve_kernels::{QMatrix, WeightType};

fn matrix(wtype: WeightType, rows: usize, cols: usize, values: &[f32]) -> QMatrix {
    if wtype == WeightType::F32 {
        return QMatrix::from_f32(rows, cols, values).unwrap();
    }
    let t = Tensor::from_slice(values, (rows, cols), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, wtype.to_ggml()).unwrap();
    QMatrix::from_bytes(wtype, rows, cols, &q.data().unwrap()).unwrap()
}

fn naive(w: &[f32], x: &[f32], m: usize, rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * rows];
    for t in 0..m {
        for r in 0..rows {
            out[t * rows + r] = (0..cols)
                .map(|k| x[t * cols + k] as f64 * w[r * cols + k] as f64)
                .sum::<f64>() as f32;
        }
    }
    out
}

#[test]
fn gemm_path_is_exact_f32_on_the_dequantized_weights() {
    let mut r = rng(10);
    let (rows, cols) = (150, 512);
    for wtype in WeightType::ALL {
        let w = randn(&mut r, rows * cols, 1.0);
        let q = matrix(wtype, rows, cols, &w);
        let wd = q.to_f32();
        for m in [9usize, 33] {
            let x = randn(&mut r, m * cols, 1.0);
            let mut out = vec![0f32; m * rows];
            q.matmul_gemm(&x, m, &mut out);
            let expected = naive(&wd, &x, m, rows, cols);
            let err = max_abs_diff(&out, &expected);
            assert!(
                err <= 1e-3 * max_abs(&expected).max(1.0),
                "{wtype} m={m}: {err}"
            );
        }
    }
}

#[test]
fn dot_path_tracks_f32_within_activation_quantization_error() {
    let mut r = rng(11);
    let (rows, cols) = (70, 768);
    for wtype in WeightType::ALL {
        let w = randn(&mut r, rows * cols, 1.0);
        let q = matrix(wtype, rows, cols, &w);
        let wd = q.to_f32();
        for m in [1usize, 3, 8] {
            let x = randn(&mut r, m * cols, 1.0);
            let mut out = vec![0f32; m * rows];
            q.matmul(&x, m, &mut out).unwrap();
            let expected = naive(&wd, &x, m, rows, cols);
            // 8-bit activations: error ~ |w| |x| / 127 * sqrt(cols).
            let err = max_abs_diff(&out, &expected);
            let bound = if matches!(
                wtype,
                WeightType::F32
                    | WeightType::F16
                    | WeightType::BF16
                    | WeightType::Q2K
                    | WeightType::Q3K
            ) {
                1e-3 * max_abs(&expected).max(1.0)
            } else {
                0.05 * max_abs(&expected).max(1.0)
            };
            assert!(err <= bound, "{wtype} m={m}: {err} > {bound}");
        }
    }
}

#[test]
fn both_paths_agree_around_the_switch() {
    let mut r = rng(12);
    let (rows, cols) = (300, 576);
    let w = randn(&mut r, rows * cols, 1.0);
    let q = matrix(WeightType::Q4_1, rows, cols, &w);
    let m = llm_serve_kernels::matmul::GEMV_MAX_ROWS;
    let x = randn(&mut r, m * cols, 1.0);
    let mut a = vec![0f32; m * rows];
    let mut b = vec![0f32; m * rows];
    q.matmul_dot(&x, m, &mut a);
    q.matmul_gemm(&x, m, &mut b);
    assert!(max_abs_diff(&a, &b) <= 0.05 * max_abs(&b));
}

#[test]
fn concat_rows_stacks_and_rejects_mismatches() {
    let mut r = rng(13);
    let a = matrix(WeightType::Q8_0, 4, 64, &randn(&mut r, 256, 1.0));
    let b = matrix(WeightType::Q8_0, 6, 64, &randn(&mut r, 384, 1.0));
    let c = QMatrix::concat_rows(&[&a, &b]).unwrap();
    assert_eq!((c.rows(), c.cols()), (10, 64));
    assert_eq!(c.row(7), b.row(3));
    let other = matrix(WeightType::Q4_0, 2, 64, &randn(&mut r, 128, 1.0));
    assert!(QMatrix::concat_rows(&[&a, &other]).is_err());
}

#[test]
fn bad_shapes_are_errors() {
    assert!(QMatrix::from_bytes(WeightType::Q4_0, 2, 33, &[0u8; 36]).is_err());
    assert!(QMatrix::from_bytes(WeightType::Q4_0, 2, 32, &[0u8; 35]).is_err());
    let q = QMatrix::from_f32(2, 4, &[0.0; 8]).unwrap();
    let mut out = vec![0f32; 2];
    assert!(q.matmul(&[0.0; 3], 1, &mut out).is_err());
}

/// The decode path (tiled SIMD kernels where they exist) computes exactly
/// the portable integer dot products, for every activation-row count.
#[test]
fn dot_path_equals_portable_dots() {
    use llm_serve_kernels::quant::act::{quantize_row, ActFormat};
    use llm_serve_kernels::quant::dot_ref;
    let mut r = rng(14);
    let (rows, cols) = (37, 512);
    for wtype in WeightType::ALL {
        let q = matrix(wtype, rows, cols, &randn(&mut r, rows * cols, 1.0));
        let format = ActFormat::for_weight(wtype);
        for m in 1..=llm_serve_kernels::matmul::GEMV_MAX_ROWS {
            let x = randn(&mut r, m * cols, 2.0);
            let mut out = vec![0f32; m * rows];
            q.matmul_dot(&x, m, &mut out);
            for t in 0..m {
                let mut a = llm_serve_kernels::buffer::AlignedBytes::zeroed(format.row_bytes(cols));
                quantize_row(format, &x[t * cols..(t + 1) * cols], a.as_mut_slice());
                for row in 0..rows {
                    let want = dot_ref::dot(wtype, &q.row(row), a.as_slice());
                    let got = out[t * rows + row];
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "{wtype} m={m} act {t} row {row}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

/// Each SIMD level's tiled kernel (AVX2, and AVX-512 VNNI where the CPU has
/// it) equals the portable dot products for every tile shape.
#[cfg(target_arch = "x86_64")]
#[test]
fn every_tiled_kernel_level_equals_portable_dots() {
    use llm_serve_kernels::cpu::{simd_level, SimdLevel};
    use llm_serve_kernels::quant::act::{ActFormat, QuantizedActs};
    use llm_serve_kernels::quant::dot_ref;
    use llm_serve_kernels::quant::gemv_avx2::{kernel, ActRow};
    let mut r = rng(15);
    let (rows, cols) = (11, 512);
    let levels: Vec<SimdLevel> = [SimdLevel::Avx2, SimdLevel::Avx512]
        .into_iter()
        .filter(|&l| l <= simd_level())
        .collect();
    for wtype in WeightType::ALL {
        let q = matrix(wtype, rows, cols, &randn(&mut r, rows * cols, 1.0));
        let format = ActFormat::for_weight(wtype);
        for &level in &levels {
            let Some(k) = kernel(wtype, level) else {
                continue;
            };
            for m in 1..=6 {
                let x = randn(&mut r, m * cols, 1.5);
                let mut acts = QuantizedActs::default();
                acts.quantize(format, &x, m, cols);
                let act_rows: Vec<ActRow> = (0..m)
                    .map(|t| ActRow {
                        blocks: acts.row(t),
                        scales: acts.scales(t),
                    })
                    .collect();
                let bytes: Vec<u8> = (0..rows).flat_map(|i| q.row(i).to_vec()).collect();
                let aligned = llm_serve_kernels::buffer::AlignedBytes::from_slice(&bytes);
                let mut out = vec![0f32; rows * m];
                // SAFETY: `level` is at most what this CPU supports.
                unsafe {
                    k(
                        aligned.as_slice(),
                        q.row(0).len(),
                        rows,
                        &act_rows,
                        &mut out,
                    )
                };
                for row in 0..rows {
                    for t in 0..m {
                        let want = dot_ref::dot(wtype, &q.row(row), acts.row(t));
                        let got = out[row * m + t];
                        assert!(
                            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                            "{wtype} {level:?} m={m} row {row} act {t}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

/// Quantized weights give every activation row the same product, bit for
/// bit, whatever rows it is batched with (what makes greedy decoding
/// batch-invariant).
#[test]
fn quantized_matmul_rows_are_batch_invariant() {
    let mut r = rng(16);
    let (rows, cols) = (45, 512);
    for wtype in WeightType::ALL {
        let q = matrix(wtype, rows, cols, &randn(&mut r, rows * cols, 1.0));
        if !q.is_batch_invariant() {
            continue;
        }
        let m = 37;
        let x = randn(&mut r, m * cols, 1.5);
        let mut batched = vec![0f32; m * rows];
        q.matmul(&x, m, &mut batched).unwrap();
        for t in 0..m {
            let mut alone = vec![0f32; rows];
            q.matmul(&x[t * cols..(t + 1) * cols], 1, &mut alone)
                .unwrap();
            assert_eq!(
                &batched[t * rows..(t + 1) * rows],
                &alone[..],
                "{wtype}: row {t} differs when batched"
            );
        }
    }
}

/// The interleaved layout round-trips every row, and the AVX-512 kernel
/// over it equals its scalar reference bit for bit, for row counts that
/// leave a partial last group and every activation tile shape.
#[cfg(target_arch = "x86_64")]
#[test]
fn packed_kernel_equals_its_reference_bit_for_bit() {
    use llm_serve_kernels::cpu::{simd_level, SimdLevel};
    use llm_serve_kernels::quant::act::{ActFormat, QuantizedActs};
    use llm_serve_kernels::quant::packed::{
        dot_reference, pack, unpack_rows, ActView, PackedFormat, PackedShape,
    };
    let mut r = rng(17);
    let cols = 256;
    for wtype in [WeightType::Q4_0, WeightType::Q4_1, WeightType::Q8_0] {
        for rows in [5usize, 16, 37] {
            let values = randn(&mut r, rows * cols, 1.0);
            let t = Tensor::from_slice(&values, (rows, cols), &Device::Cpu).unwrap();
            let raw = QTensor::quantize(&t, wtype.to_ggml())
                .unwrap()
                .data()
                .unwrap()
                .to_vec();
            let format = PackedFormat::for_weight(wtype).unwrap();
            let shape = PackedShape::new(format, rows, cols);
            let packed = pack(shape, &raw);
            assert_eq!(unpack_rows(shape, packed.as_slice(), 0, rows), raw);
            if simd_level() < SimdLevel::Avx512 {
                continue;
            }
            for m in [1usize, 2, 3, 4, 7] {
                let x = randn(&mut r, m * cols, 1.5);
                let mut acts = QuantizedActs::default();
                acts.quantize(ActFormat::for_weight(wtype), &x, m, cols);
                let views: Vec<ActView> = (0..m)
                    .map(|t| ActView {
                        blocks: acts.row(t),
                        scales: acts.scales(t),
                        sums: acts.sums(t),
                    })
                    .collect();
                let mut out = vec![f32::NAN; m * rows];
                // SAFETY: the CPU has AVX-512 VNNI (checked above); the
                // views and output are sized for `shape`.
                unsafe {
                    llm_serve_kernels::quant::packed_avx512::matmul_groups(
                        &shape,
                        packed.as_slice(),
                        0,
                        shape.groups(),
                        &views,
                        out.as_mut_ptr(),
                    )
                };
                for t in 0..m {
                    for row in 0..rows {
                        let want = dot_reference(shape, packed.as_slice(), row, views[t]);
                        let got = out[t * rows + row];
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{wtype} rows={rows} m={m} act {t} row {row}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
