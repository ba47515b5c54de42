//! Throughput of the decode GEMV on one thread: a matrix that fits in L2 and
//! one that does not. `cargo run --release -p llm-serve-kernels --example gemv_speed`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]
use llm_serve_kernels::{QMatrix, WeightType};
use std::time::Instant;

fn main() {
    llm_serve_kernels::threads::init(1);
    for (rows, cols, reps) in [
        (512usize, 768usize, 4000usize),
        (49152, 768, 30),
        (3072, 768, 300),
    ] {
        for wtype in [
            WeightType::Q4_1,
            WeightType::Q8_0,
            WeightType::Q4_0,
            WeightType::Q4K,
            WeightType::Q6K,
        ] {
            let vals: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
                .collect();
            let t = candle_core::Tensor::from_slice(&vals, (rows, cols), &candle_core::Device::Cpu)
                .unwrap();
            let q = candle_core::quantized::QTensor::quantize(&t, wtype.to_ggml()).unwrap();
            let m = QMatrix::from_bytes(wtype, rows, cols, &q.data().unwrap()).unwrap();
            let x: Vec<f32> = (0..cols).map(|i| (i as f32).sin()).collect();
            let mut out = vec![0f32; rows];
            m.matmul_dot(&x, 1, &mut out);
            let start = Instant::now();
            for _ in 0..reps {
                m.matmul_dot(&x, 1, &mut out);
            }
            let secs = start.elapsed().as_secs_f64();
            let elems = (rows * cols * reps) as f64;
            println!(
                "{wtype:>5} {rows:>6}x{cols}: {:.2} Gelem/s, {:.2} GB/s, {:.1} ns/block",
                elems / secs / 1e9,
                (m.storage_bytes() * reps) as f64 / secs / 1e9,
                secs / (elems / 32.0) * 1e9
            );
        }
    }
}
