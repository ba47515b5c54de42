//! Paged attention against dense causal attention on random inputs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod common;
use common::*;
use llm_serve_kernels::attention::{
    paged_attention, write_cache, KvGeometry, KvRole, KvSlice, KvSliceMut, SeqSpan,
};
use rand::seq::SliceRandom;

#[allow(clippy::too_many_arguments)]
/// Dense causal attention of one sequence's new queries over its full K/V
/// (`[positions, kv_heads, d]`), in f64.
fn dense(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    heads: usize,
    kv_heads: usize,
    d: usize,
    first_pos: usize,
    scale: f32,
) -> Vec<f32> {
    let tokens = q.len() / (heads * d);
    let group = heads / kv_heads;
    let mut out = vec![0f32; q.len()];
    for t in 0..tokens {
        let pos = first_pos + t;
        for h in 0..heads {
            let g = h / group;
            let qv = &q[(t * heads + h) * d..(t * heads + h + 1) * d];
            let scores: Vec<f64> = (0..=pos)
                .map(|j| {
                    let kv = &k[(j * kv_heads + g) * d..(j * kv_heads + g + 1) * d];
                    qv.iter()
                        .zip(kv)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for i in 0..d {
                let acc: f64 = (0..=pos)
                    .map(|j| e[j] * v[(j * kv_heads + g) * d + i] as f64)
                    .sum();
                out[(t * heads + h) * d + i] = (acc / z) as f32;
            }
        }
    }
    out
}

struct Seq {
    k: Vec<f32>,
    v: Vec<f32>,
    table: Vec<u32>,
    total: usize,
}

/// A layer's K and V caches of one element type.
enum Caches {
    F32(Vec<f32>, Vec<f32>),
    F16(Vec<half::f16>, Vec<half::f16>),
}

impl Caches {
    fn new(len: usize, f16: bool) -> Caches {
        if f16 {
            Caches::F16(vec![half::f16::NAN; len], vec![half::f16::NAN; len])
        } else {
            Caches::F32(vec![f32::NAN; len], vec![f32::NAN; len])
        }
    }

    fn write(&mut self, geom: &KvGeometry, k: &[f32], v: &[f32], spans: &[SeqSpan]) {
        match self {
            Caches::F32(kc, vc) => {
                write_cache(geom, KvSliceMut::F32(kc), k, spans, KvRole::Key).unwrap();
                write_cache(geom, KvSliceMut::F32(vc), v, spans, KvRole::Value).unwrap();
            }
            Caches::F16(kc, vc) => {
                write_cache(geom, KvSliceMut::F16(kc), k, spans, KvRole::Key).unwrap();
                write_cache(geom, KvSliceMut::F16(vc), v, spans, KvRole::Value).unwrap();
            }
        }
    }

    fn slices(&self) -> (KvSlice<'_>, KvSlice<'_>) {
        match self {
            Caches::F32(k, v) => (KvSlice::F32(k), KvSlice::F32(v)),
            Caches::F16(k, v) => (KvSlice::F16(k), KvSlice::F16(v)),
        }
    }
}

/// Runs several sequences through the cache in chunks (prefill chunks then
/// single decode tokens, batched raggedly) and checks every step's output
/// against dense attention over the same (for an f16 cache, f16-rounded)
/// keys and values.
#[allow(clippy::too_many_arguments)]
fn check(
    block_size: usize,
    heads: usize,
    kv_heads: usize,
    d: usize,
    lens: &[usize],
    chunk: usize,
    seed: u64,
    f16: bool,
) {
    let mut r = rng(seed);
    let blocks_per_seq: Vec<usize> = lens.iter().map(|l| l.div_ceil(block_size)).collect();
    let num_blocks = blocks_per_seq.iter().sum::<usize>() + 3;
    let geom = KvGeometry {
        num_blocks,
        block_size,
        num_kv_heads: kv_heads,
        head_dim: d,
    };
    let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
    ids.shuffle(&mut r);
    let mut next = 0;
    let mut seqs: Vec<Seq> = lens
        .iter()
        .zip(&blocks_per_seq)
        .map(|(&total, &nb)| {
            let table = ids[next..next + nb].to_vec();
            next += nb;
            Seq {
                k: randn(&mut r, total * kv_heads * d, 1.0),
                v: randn(&mut r, total * kv_heads * d, 1.0),
                table,
                total,
            }
        })
        .collect();
    if f16 {
        for s in &mut seqs {
            for x in s.k.iter_mut().chain(s.v.iter_mut()) {
                *x = half::f16::from_f32(*x).to_f32();
            }
        }
    }
    let mut caches = Caches::new(geom.layer_len(), f16);
    let scale = 1.0 / (d as f32).sqrt();
    let mut done = vec![0usize; lens.len()];
    while done.iter().zip(lens).any(|(d, l)| d < l) {
        // This step: each unfinished sequence contributes up to `chunk`
        // tokens while in "prefill" (first half), then 1 token.
        let mut spans = Vec::new();
        let mut q_all = Vec::new();
        let mut k_all = Vec::new();
        let mut v_all = Vec::new();
        let mut start = 0;
        let mut firsts = Vec::new();
        for (i, s) in seqs.iter_mut().enumerate() {
            if done[i] == s.total {
                continue;
            }
            let n = if done[i] < s.total / 2 {
                chunk.min(s.total - done[i])
            } else {
                1
            };
            let row = kv_heads * d;
            k_all.extend_from_slice(&s.k[done[i] * row..(done[i] + n) * row]);
            v_all.extend_from_slice(&s.v[done[i] * row..(done[i] + n) * row]);
            q_all.extend(randn(&mut r, n * heads * d, 1.0));
            firsts.push((i, done[i], n, start));
            done[i] += n;
            start += n;
        }
        for &(i, _, n, st) in &firsts {
            spans.push(SeqSpan {
                start: st,
                len: n,
                context_len: done[i],
                block_table: &seqs[i].table,
            });
        }
        caches.write(&geom, &k_all, &v_all, &spans);
        let (k_cache, v_cache) = caches.slices();
        let mut out = vec![0f32; q_all.len()];
        paged_attention(
            &geom, &q_all, k_cache, v_cache, heads, &spans, scale, &mut out,
        )
        .unwrap();
        for &(i, first, n, st) in &firsts {
            let s = &seqs[i];
            let row = kv_heads * d;
            let q = &q_all[st * heads * d..(st + n) * heads * d];
            let expected = dense(
                q,
                &s.k[..(first + n) * row],
                &s.v[..(first + n) * row],
                heads,
                kv_heads,
                d,
                first,
                scale,
            );
            let got = &out[st * heads * d..(st + n) * heads * d];
            let err = max_abs_diff(got, &expected);
            assert!(
                err < 1e-5,
                "bs={block_size} h={heads}/{kv_heads} d={d} f16={f16} seq {i} at {first}+{n}: {err}"
            );
        }
    }
}

/// Head sizes of the SIMD kernel (32, 64, 128) and of the portable one
/// (16, 24), f32 and f16 caches, block sizes that split and do not split
/// 16-key runs, GQA group sizes of 1 to 8 (chunks of 1 to 4 queries).
#[test]
fn paged_equals_dense_across_block_sizes_gqa_and_lengths() {
    let mut seed = 100;
    for &bs in &[1usize, 4, 16, 32, 24] {
        for &(h, kvh) in &[(4usize, 4usize), (4, 2), (8, 1), (9, 3)] {
            for &d in &[16usize, 64, 24, 32, 128] {
                for f16 in [false, true] {
                    seed += 1;
                    check(bs, h, kvh, d, &[1, 17, 40, 33], 7, seed, f16);
                }
            }
        }
    }
}

#[test]
fn long_prefill_in_one_chunk() {
    check(16, 9, 3, 64, &[300], 300, 7, false);
    check(16, 9, 3, 64, &[300], 300, 8, true);
}

/// A query decoded alone and the same query inside a prefill chunk (other
/// queries in its tile and chunk) see the same keys and give the same bits.
#[test]
fn outputs_do_not_depend_on_the_query_tile() {
    let geom = KvGeometry {
        num_blocks: 8,
        block_size: 16,
        num_kv_heads: 3,
        head_dim: 64,
    };
    let mut r = rng(5);
    let total = 70;
    let row = 3 * 64;
    let k = randn(&mut r, total * row, 1.0);
    let v = randn(&mut r, total * row, 1.0);
    let q = randn(&mut r, total * 9 * 64, 1.0);
    let table: Vec<u32> = vec![3, 1, 7, 0, 5];
    let mut caches = Caches::new(geom.layer_len(), true);
    let all = SeqSpan {
        start: 0,
        len: total,
        context_len: total,
        block_table: &table,
    };
    caches.write(&geom, &k, &v, &[all]);
    let (kc, vc) = caches.slices();
    let mut full = vec![0f32; q.len()];
    paged_attention(&geom, &q, kc, vc, 9, &[all], 0.125, &mut full).unwrap();
    for last in [1usize, 17, 33, 69] {
        let one = SeqSpan {
            start: 0,
            len: 1,
            context_len: last + 1,
            block_table: &table,
        };
        let qrow = &q[last * 9 * 64..(last + 1) * 9 * 64];
        let mut out = vec![0f32; qrow.len()];
        paged_attention(&geom, qrow, kc, vc, 9, &[one], 0.125, &mut out).unwrap();
        assert_eq!(
            out,
            full[last * 9 * 64..(last + 1) * 9 * 64],
            "position {last}"
        );
    }
}

#[test]
fn bad_block_tables_are_errors_not_panics() {
    let geom = KvGeometry {
        num_blocks: 2,
        block_size: 4,
        num_kv_heads: 1,
        head_dim: 4,
    };
    let cache_values = vec![0f32; geom.layer_len()];
    let cache = KvSlice::F32(&cache_values);
    let q = vec![0f32; 4];
    let mut out = vec![0f32; 4];
    let short = [0u32];
    let span = SeqSpan {
        start: 0,
        len: 1,
        context_len: 6,
        block_table: &short,
    };
    assert!(paged_attention(&geom, &q, cache, cache, 1, &[span], 1.0, &mut out).is_err());
    let outside = [0u32, 9];
    let span = SeqSpan {
        start: 0,
        len: 1,
        context_len: 6,
        block_table: &outside,
    };
    assert!(paged_attention(&geom, &q, cache, cache, 1, &[span], 1.0, &mut out).is_err());
    let span = SeqSpan {
        start: 1,
        len: 1,
        context_len: 1,
        block_table: &short,
    };
    assert!(paged_attention(&geom, &q, cache, cache, 1, &[span], 1.0, &mut out).is_err());
}
