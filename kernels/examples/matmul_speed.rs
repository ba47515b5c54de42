//! Throughput of the quantized matmul at several batch sizes (activation
//! rows: 1 is the decode GEMV) in multiply-accumulates per second, for the
//! shapes of the default model's layers and its output projection (which
//! does not fit in L2). `THREADS=n` sets the pool size (default 1).
//! `cargo run --release -p llm-serve-kernels --example matmul_speed`
#![allow(clippy::unwrap_used, clippy::expect_used)]
use llm_serve_kernels::{QMatrix, WeightType};
use std::time::Instant;

fn main() {
    let threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    llm_serve_kernels::threads::init(threads);
    for (rows, cols) in [(3072usize, 576usize), (576, 1536), (960, 576), (49152, 576)] {
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
            let mut line = format!("{wtype:>5} {rows:>6}x{cols:<5}");
            for batch in [1usize, 4, 16, 64, 256] {
                let x: Vec<f32> = (0..cols * batch).map(|i| (i as f32).sin()).collect();
                let mut out = vec![0f32; rows * batch];
                m.matmul_dot(&x, batch, &mut out);
                let reps = (2e9 / (rows * cols * batch) as f64).ceil() as usize;
                let start = Instant::now();
                for _ in 0..reps {
                    m.matmul_dot(&x, batch, &mut out);
                }
                let secs = start.elapsed().as_secs_f64();
                let macs = (rows * cols * batch * reps) as f64;
                line += &format!("  m={batch}: {:>5.1} GMAC/s", macs / secs / 1e9);
            }
            println!("{line}");
        }
    }
}
