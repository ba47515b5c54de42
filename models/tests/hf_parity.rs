//! Numerical parity with Hugging Face transformers: tiny random llama and
//! qwen2 checkpoints (fixtures/tiny-models, made by
//! scripts/make_tiny_models.py) give transformers' full-sequence logits.
//! Also checks that chunked prefill, ragged batches and block layout do not
//! change a sequence's logits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

use candle_core::Tensor;
use llm_serve_models::{
    CacheDtype, KvCache, LogitsWanted, Model, ModelFiles, SeqInput, StepInputs,
};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::PathBuf;

/// The model's forward over sequences given one by one (flattened here as
/// the engine's runner flattens a step).
trait ForwardSeqs {
    fn forward_seqs(
        &self,
        seqs: &[SeqInput],
        cache: &mut KvCache,
    ) -> llm_serve_models::Result<Tensor>;
}

impl ForwardSeqs for Model {
    fn forward_seqs(
        &self,
        seqs: &[SeqInput],
        cache: &mut KvCache,
    ) -> llm_serve_models::Result<Tensor> {
        self.forward(&StepInputs::new(cache.block_size(), seqs)?, cache, &[])
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/tiny-models")
        .join(name)
}

struct Case {
    ids: Vec<u32>,
    logits: Vec<f32>,
}

fn cases(dir: &std::path::Path) -> Vec<Case> {
    let bytes = std::fs::read(dir.join("expected_logits.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out = Vec::new();
    for i in 0.. {
        let Ok(ids) = st.tensor(&format!("input_ids_{i}")) else {
            break;
        };
        let ids: Vec<u32> = ids
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect();
        let lg = st.tensor(&format!("logits_{i}")).unwrap();
        let logits = lg
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        out.push(Case { ids, logits });
    }
    assert!(
        out.len() >= 3,
        "{}: expected at least 3 cases",
        dir.display()
    );
    out
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn load(name: &str) -> Model {
    let files = ModelFiles::resolve(fixture(name).to_str().unwrap()).unwrap();
    Model::load(&files, None).unwrap()
}

fn rows(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// One sequence alone, whole prompt in one step.
fn check_alone(name: &str, block_size: usize) {
    let model = load(name);
    for (i, case) in cases(&fixture(name)).iter().enumerate() {
        let blocks = case.ids.len().div_ceil(block_size);
        let mut cache = KvCache::new(
            model.config(),
            blocks + 2,
            block_size,
            CacheDtype::F32,
            model.device(),
        )
        .unwrap();
        let table: Vec<u32> = (0..blocks as u32).rev().collect();
        let out = model
            .forward_seqs(
                &[SeqInput {
                    tokens: &case.ids,
                    start_pos: 0,
                    block_table: &table,
                    logits: LogitsWanted::All,
                    adapter: None,
                }],
                &mut cache,
            )
            .unwrap();
        let d = max_diff(&rows(&out), &case.logits);
        eprintln!(
            "{name} case {i}: max diff {d}, max logit {}",
            case.logits.iter().fold(0f32, |m, v| m.max(v.abs()))
        );
        assert!(
            d < 1e-4,
            "{name} case {i} (bs {block_size}): max |diff| {d}"
        );
    }
}

#[test]
fn tiny_llama_matches_transformers() {
    check_alone("tiny-llama", 16);
}

#[test]
fn tiny_llama_sharded_checkpoint_matches_transformers() {
    check_alone("tiny-llama-sharded", 16);
}

#[test]
fn tiny_llama3_rope_scaling_matches_transformers() {
    check_alone("tiny-llama3", 16);
    check_alone("tiny-llama3-smooth", 16);
}

#[test]
fn tiny_qwen2_with_biases_and_tied_embeddings_matches_transformers() {
    check_alone("tiny-qwen2", 16);
}

#[test]
fn half_precision_checkpoints_match_transformers() {
    check_alone("tiny-llama-f16", 16);
    check_alone("tiny-llama-bf16", 16);
}

#[test]
fn block_size_does_not_change_logits() {
    for bs in [1, 3, 8, 32] {
        check_alone("tiny-llama", bs);
    }
}

/// All cases together: prefilled in chunks, interleaved in ragged batches
/// with shuffled block tables; every chunk's logits must equal the
/// reference rows.
#[test]
fn chunked_ragged_batches_equal_each_sequence_alone() {
    for name in ["tiny-llama", "tiny-qwen2"] {
        let model = load(name);
        let cases = cases(&fixture(name));
        let bs = 4;
        let total_blocks: usize = cases.iter().map(|c| c.ids.len().div_ceil(bs)).sum();
        let mut cache = KvCache::new(
            model.config(),
            total_blocks,
            bs,
            CacheDtype::F32,
            model.device(),
        )
        .unwrap();
        let mut ids: Vec<u32> = (0..total_blocks as u32).collect();
        ids.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7));
        let mut tables = Vec::new();
        let mut next = 0;
        for c in &cases {
            let n = c.ids.len().div_ceil(bs);
            tables.push(ids[next..next + n].to_vec());
            next += n;
        }
        let vocab = model.config().vocab_size;
        let mut done = vec![0usize; cases.len()];
        let chunk_sizes = [5usize, 1, 9, 2];
        let mut step = 0;
        while done.iter().zip(&cases).any(|(d, c)| *d < c.ids.len()) {
            let mut inputs = Vec::new();
            let mut spans = Vec::new();
            for (i, c) in cases.iter().enumerate() {
                if done[i] == c.ids.len() {
                    continue;
                }
                let n = chunk_sizes[(step + i) % chunk_sizes.len()].min(c.ids.len() - done[i]);
                inputs.push(SeqInput {
                    tokens: &c.ids[done[i]..done[i] + n],
                    start_pos: done[i],
                    block_table: &tables[i],
                    logits: LogitsWanted::All,
                    adapter: None,
                });
                spans.push((i, done[i], n));
            }
            let out = rows(&model.forward_seqs(&inputs, &mut cache).unwrap());
            let mut row = 0;
            for &(i, start, n) in &spans {
                let got = &out[row * vocab..(row + n) * vocab];
                let want = &cases[i].logits[start * vocab..(start + n) * vocab];
                let d = max_diff(got, want);
                assert!(
                    d < 1e-4,
                    "{name} seq {i} tokens {start}..{}: {d}",
                    start + n
                );
                row += n;
                done[i] += n;
            }
            step += 1;
        }
    }
}

#[test]
fn last_and_no_logits_select_rows() {
    let model = load("tiny-llama");
    let cases = cases(&fixture("tiny-llama"));
    let c = &cases[1];
    let vocab = model.config().vocab_size;
    let mut cache = KvCache::new(model.config(), 16, 16, CacheDtype::F32, model.device()).unwrap();
    let table: Vec<u32> = (0..16).collect();
    let n = c.ids.len();
    let none = model
        .forward_seqs(
            &[SeqInput {
                tokens: &c.ids[..n - 1],
                start_pos: 0,
                block_table: &table,
                logits: LogitsWanted::None,
                adapter: None,
            }],
            &mut cache,
        )
        .unwrap();
    assert_eq!(none.dims(), &[0, vocab]);
    let last = model
        .forward_seqs(
            &[SeqInput {
                tokens: &c.ids[n - 1..],
                start_pos: n - 1,
                block_table: &table,
                logits: LogitsWanted::Last,
                adapter: None,
            }],
            &mut cache,
        )
        .unwrap();
    let d = max_diff(&rows(&last), &c.logits[(n - 1) * vocab..]);
    assert!(d < 1e-4, "{d}");
}

#[test]
fn invalid_batches_are_errors() {
    let model = load("tiny-llama");
    let mut cache = KvCache::new(model.config(), 2, 16, CacheDtype::F32, model.device()).unwrap();
    let table = [0u32, 1];
    let fwd = |tokens: &[u32], start: usize, table: &[u32], cache: &mut KvCache| {
        model.forward_seqs(
            &[SeqInput {
                tokens,
                start_pos: start,
                block_table: table,
                logits: LogitsWanted::Last,
                adapter: None,
            }],
            cache,
        )
    };
    assert!(fwd(&[], 0, &table, &mut cache).is_err(), "empty sequence");
    assert!(
        fwd(&[999_999], 0, &table, &mut cache).is_err(),
        "token outside the vocabulary"
    );
    assert!(
        fwd(&[1; 40], 0, &table, &mut cache).is_err(),
        "more tokens than the block table covers"
    );
    assert!(
        fwd(&[1], 300, &table, &mut cache).is_err(),
        "beyond the maximum context"
    );
    assert!(
        fwd(&[1], 0, &[7], &mut cache).is_err(),
        "block outside the cache"
    );
}
