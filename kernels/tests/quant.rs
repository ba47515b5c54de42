//! Block formats: dequantization against candle's reference, SIMD dot
//! products against the portable ones, and both against f32 arithmetic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod common;
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use common::*;
use llm_serve_kernels::cpu::SimdLevel;
use llm_serve_kernels::quant::act::{quantize_row, ActFormat};
use llm_serve_kernels::quant::dequant::dequantize;
use llm_serve_kernels::quant::dot::dot_fn_for;
use llm_serve_kernels::quant::dot_ref;
use llm_serve_kernels::WeightType;

/// Quantizes `values` with candle and returns the raw blocks.
fn candle_blocks(wtype: WeightType, values: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let t = Tensor::from_slice(values, values.len(), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, wtype.to_ggml()).unwrap();
    let bytes = q.data().unwrap().to_vec();
    let reference = q
        .dequantize(&Device::Cpu)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    (bytes, reference)
}

#[test]
fn dequantize_matches_candle_for_every_format() {
    let mut r = rng(1);
    let n = 4 * 256;
    for wtype in WeightType::ALL {
        let values = randn(&mut r, n, 2.0);
        let (bytes, reference) = candle_blocks(wtype, &values);
        assert_eq!(
            bytes.len(),
            n / wtype.block_elems() * wtype.block_bytes(),
            "{wtype}"
        );
        // The bytes must be viewable in place: copy into an aligned buffer.
        let aligned = llm_serve_kernels::buffer::AlignedBytes::from_slice(&bytes);
        let mut ours = vec![0f32; n];
        dequantize(wtype, aligned.as_slice(), &mut ours);
        assert_eq!(
            max_abs_diff(&ours, &reference),
            0.0,
            "{wtype}: dequantization differs from candle's"
        );
    }
}

fn quantized_acts(format: ActFormat, values: &[f32]) -> llm_serve_kernels::buffer::AlignedBytes {
    let mut buf = llm_serve_kernels::buffer::AlignedBytes::zeroed(format.row_bytes(values.len()));
    quantize_row(format, values, buf.as_mut_slice());
    buf
}

/// Dequantized value of quantized activations, computed independently.
fn act_values(format: ActFormat, bytes: &[u8], n: usize) -> Vec<f32> {
    match format {
        ActFormat::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        ActFormat::Q8_0 => {
            let mut out = vec![0f32; n];
            dequantize(WeightType::Q8_0, bytes, &mut out);
            out
        }
        ActFormat::Q8_1 => bytes
            .chunks_exact(36)
            .flat_map(|b| {
                let d = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                b[4..]
                    .iter()
                    .map(move |&q| q as i8 as f32 * d)
                    .collect::<Vec<_>>()
            })
            .collect(),
        ActFormat::Q8K => bytes
            .chunks_exact(292)
            .flat_map(|b| {
                let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                b[4..260]
                    .iter()
                    .map(move |&q| q as i8 as f32 * d)
                    .collect::<Vec<_>>()
            })
            .collect(),
    }
}

#[test]
fn activation_quantization_is_close_and_q8_1_sum_is_consistent() {
    let mut r = rng(2);
    let n = 512;
    let x = randn(&mut r, n, 3.0);
    for format in [ActFormat::Q8_0, ActFormat::Q8_1, ActFormat::Q8K] {
        let q = quantized_acts(format, &x);
        let back = act_values(format, q.as_slice(), n);
        let tol = max_abs(&x) / 127.0;
        assert!(max_abs_diff(&x, &back) <= tol * 0.51 + 1e-3, "{format:?}");
    }
    // Q8_1's `s` is d * sum(qs).
    let q = quantized_acts(ActFormat::Q8_1, &x);
    for b in q.as_slice().chunks_exact(36) {
        let d = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
        let s = half::f16::from_bits(u16::from_le_bytes([b[2], b[3]])).to_f32();
        let sum: i32 = b[4..].iter().map(|&q| q as i8 as i32).sum();
        assert!((s - d * sum as f32).abs() <= 1e-2 * s.abs().max(1.0));
    }
}

#[test]
fn portable_dot_equals_f32_arithmetic_on_the_quantized_values() {
    let mut r = rng(3);
    let n = 2 * 256;
    for wtype in WeightType::ALL {
        let w = randn(&mut r, n, 1.0);
        let a = randn(&mut r, n, 1.0);
        let (wb, wvals) = candle_blocks(wtype, &w);
        let wb = llm_serve_kernels::buffer::AlignedBytes::from_slice(&wb);
        let format = ActFormat::for_weight(wtype);
        let ab = quantized_acts(format, &a);
        let avals = act_values(format, ab.as_slice(), n);
        let expected: f64 = wvals
            .iter()
            .zip(&avals)
            .map(|(x, y)| *x as f64 * *y as f64)
            .sum();
        let got = dot_ref::dot(wtype, wb.as_slice(), ab.as_slice()) as f64;
        let scale: f64 = wvals
            .iter()
            .zip(&avals)
            .map(|(x, y)| (*x as f64 * *y as f64).abs())
            .sum();
        assert!(
            (got - expected).abs() <= 1e-3 * scale.max(1.0),
            "{wtype}: portable dot {got} vs f32 arithmetic {expected}"
        );
    }
}

#[test]
fn simd_dots_match_portable_dots() {
    let level = llm_serve_kernels::cpu::simd_level();
    if level == SimdLevel::Scalar {
        eprintln!("no SIMD on this CPU; nothing to compare");
        return;
    }
    let mut r = rng(4);
    for &n in &[256usize, 768, 2048] {
        for wtype in WeightType::ALL {
            for trial in 0..5 {
                let w = randn(&mut r, n, 1.0 + trial as f32);
                let a = randn(&mut r, n, 0.5 + trial as f32);
                let (wb, _) = candle_blocks(wtype, &w);
                let wb = llm_serve_kernels::buffer::AlignedBytes::from_slice(&wb);
                let ab = quantized_acts(ActFormat::for_weight(wtype), &a);
                let reference = dot_ref::dot(wtype, wb.as_slice(), ab.as_slice());
                let simd = dot_fn_for(wtype, level)(wb.as_slice(), ab.as_slice());
                let tol = 1e-5 * reference.abs().max(1.0) * (n as f32).sqrt();
                assert!(
                    (simd - reference).abs() <= tol,
                    "{wtype} n={n}: simd {simd} vs portable {reference}"
                );
            }
        }
    }
}
