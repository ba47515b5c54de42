//! Time of one layer's decode attention for a batch of sequences (the
//! default model's shape: 9 query heads, 3 KV heads of 64), f16 and f32
//! caches, against the bytes of K/V it must read.
//! `cargo run --release -p llm-serve-kernels --example attention_speed`
#![allow(clippy::unwrap_used, clippy::expect_used)]
use llm_serve_kernels::attention::{
    paged_attention, write_cache, KvGeometry, KvRole, KvSlice, KvSliceMut, SeqSpan,
};
use std::time::Instant;

fn main() {
    let threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    llm_serve_kernels::threads::init(threads);
    let (heads, kv_heads, d, bs) = (9usize, 3usize, 64usize, 16usize);
    for (seqs, ctx) in [(1usize, 192usize), (16, 192), (64, 192), (16, 1024)] {
        let blocks_per_seq = ctx.div_ceil(bs);
        // Many layers' worth of caches so the K/V come from memory, as in
        // a forward pass over 30 layers.
        let layers = 30;
        let geom = KvGeometry {
            num_blocks: seqs * blocks_per_seq,
            block_size: bs,
            num_kv_heads: kv_heads,
            head_dim: d,
        };
        let tables: Vec<Vec<u32>> = (0..seqs)
            .map(|s| ((s * blocks_per_seq) as u32..((s + 1) * blocks_per_seq) as u32).collect())
            .collect();
        let spans: Vec<SeqSpan> = tables
            .iter()
            .enumerate()
            .map(|(i, t)| SeqSpan {
                start: i,
                len: 1,
                context_len: ctx,
                block_table: t,
            })
            .collect();
        let fill: Vec<SeqSpan> = tables
            .iter()
            .map(|t| SeqSpan {
                start: 0,
                len: ctx,
                context_len: ctx,
                block_table: t,
            })
            .collect();
        let kv: Vec<f32> = (0..ctx * kv_heads * d)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let q: Vec<f32> = (0..seqs * heads * d)
            .map(|i| (i as f32 * 0.11).cos())
            .collect();
        let mut out = vec![0f32; q.len()];
        for f16 in [true, false] {
            let caches: Vec<LayerCache> = (0..layers)
                .map(|_| {
                    let mut c = LayerCache::zeros(geom.layer_len(), f16);
                    for s in &fill {
                        c.write(&geom, &kv, *s);
                    }
                    c
                })
                .collect();
            let reps = 20;
            let start = Instant::now();
            for _ in 0..reps {
                for c in &caches {
                    let (k, v) = c.slices();
                    paged_attention(&geom, &q, k, v, heads, &spans, 0.125, &mut out).unwrap();
                }
            }
            let per_layer = start.elapsed().as_secs_f64() / (reps * layers) as f64;
            let bytes = 2 * seqs * ctx * kv_heads * d * if f16 { 2 } else { 4 };
            println!(
                "{seqs:>3} seqs x {ctx:>4} ctx, {}: {:>7.1} us/layer, {:>5.1} GB/s of K/V",
                if f16 { "f16" } else { "f32" },
                per_layer * 1e6,
                bytes as f64 / per_layer / 1e9
            );
        }
    }
}

/// One layer's K and V caches.
enum LayerCache {
    F32(Vec<f32>, Vec<f32>),
    F16(Vec<half::f16>, Vec<half::f16>),
}

impl LayerCache {
    fn zeros(len: usize, f16: bool) -> LayerCache {
        if f16 {
            LayerCache::F16(vec![half::f16::ZERO; len], vec![half::f16::ZERO; len])
        } else {
            LayerCache::F32(vec![0.0; len], vec![0.0; len])
        }
    }

    fn write(&mut self, geom: &KvGeometry, kv: &[f32], span: SeqSpan) {
        let spans = [span];
        let (k, v) = match self {
            LayerCache::F32(k, v) => (KvSliceMut::F32(k), KvSliceMut::F32(v)),
            LayerCache::F16(k, v) => (KvSliceMut::F16(k), KvSliceMut::F16(v)),
        };
        write_cache(geom, k, kv, &spans, KvRole::Key).unwrap();
        write_cache(geom, v, kv, &spans, KvRole::Value).unwrap();
    }

    fn slices(&self) -> (KvSlice<'_>, KvSlice<'_>) {
        match self {
            LayerCache::F32(k, v) => (KvSlice::F32(k), KvSlice::F32(v)),
            LayerCache::F16(k, v) => (KvSlice::F16(k), KvSlice::F16(v)),
        }
    }
}
