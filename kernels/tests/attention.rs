//! Paged attention against dense causal attention on random inputs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod common;
use common::*;
use llm_serve_kernels::attention::{
    paged_attention, write_cache, KvGeometry, KvPrecision, SeqSpan,
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

/// Runs several sequences through the cache in chunks (prefill chunks then
/// single decode tokens, batched raggedly) and checks every step's output.
fn check(
    block_size: usize,
    heads: usize,
    kv_heads: usize,
    d: usize,
    lens: &[usize],
    chunk: usize,
    seed: u64,
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
    let mut k_cache = vec![f32::NAN; geom.layer_len()];
    let mut v_cache = vec![f32::NAN; geom.layer_len()];
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
        write_cache(&geom, &mut k_cache, &k_all, &spans, KvPrecision::F32).unwrap();
        write_cache(&geom, &mut v_cache, &v_all, &spans, KvPrecision::F32).unwrap();
        let mut out = vec![0f32; q_all.len()];
        paged_attention(
            &geom, &q_all, &k_cache, &v_cache, heads, &spans, scale, &mut out,
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
                "bs={block_size} h={heads}/{kv_heads} d={d} seq {i} at {first}+{n}: {err}"
            );
        }
    }
}

#[test]
fn paged_equals_dense_across_block_sizes_gqa_and_lengths() {
    let mut seed = 100;
    for &bs in &[1usize, 4, 16, 32] {
        for &(h, kvh) in &[(4usize, 4usize), (4, 2), (8, 1), (9, 3)] {
            for &d in &[16usize, 64, 24] {
                seed += 1;
                check(bs, h, kvh, d, &[1, 17, 40, 33], 7, seed);
            }
        }
    }
}

#[test]
fn long_prefill_in_one_chunk() {
    check(16, 9, 3, 64, &[300], 300, 7);
}

#[test]
fn bad_block_tables_are_errors_not_panics() {
    let geom = KvGeometry {
        num_blocks: 2,
        block_size: 4,
        num_kv_heads: 1,
        head_dim: 4,
    };
    let cache = vec![0f32; geom.layer_len()];
    let q = vec![0f32; 4];
    let mut out = vec![0f32; 4];
    let short = [0u32];
    let span = SeqSpan {
        start: 0,
        len: 1,
        context_len: 6,
        block_table: &short,
    };
    assert!(paged_attention(&geom, &q, &cache, &cache, 1, &[span], 1.0, &mut out).is_err());
    let outside = [0u32, 9];
    let span = SeqSpan {
        start: 0,
        len: 1,
        context_len: 6,
        block_table: &outside,
    };
    assert!(paged_attention(&geom, &q, &cache, &cache, 1, &[span], 1.0, &mut out).is_err());
    let span = SeqSpan {
        start: 1,
        len: 1,
        context_len: 1,
        block_table: &short,
    };
    assert!(paged_attention(&geom, &q, &cache, &cache, 1, &[span], 1.0, &mut out).is_err());
}
