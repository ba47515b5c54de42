//! LoRA parity with transformers + PEFT: every adapter in fixtures/lora
//! (made by scripts/make_lora_fixtures.py: several ranks and target sets,
//! rsLoRA, rank_pattern/alpha_pattern, f16 weights, an untrained adapter)
//! gives PEFT's full-sequence logits on the tiny llama and qwen2 models,
//! and on tiny-llama converted to GGUF (q/k rows permuted); a batch mixing
//! the base model and several adapters gives each sequence its own logits;
//! bad adapters are refused with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use llm_serve_models::{
    CacheDtype, KvCache, LogitsWanted, LoraAdapter, LoraDtype, LoraOptions, Model, ModelError,
    ModelFiles, SeqInput, StepInputs,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn load_model(path: &Path) -> Model {
    let files = ModelFiles::resolve(path.to_str().unwrap()).unwrap();
    Model::load(&files, None).unwrap()
}

struct Case {
    ids: Vec<u32>,
    logits: Vec<f32>,
}

fn read_cases(path: &Path) -> Vec<Case> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out = Vec::new();
    for i in 0.. {
        let Ok(ids) = st.tensor(&format!("input_ids_{i}")) else {
            break;
        };
        let ids = ids
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect();
        let logits = st
            .tensor(&format!("logits_{i}"))
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        out.push(Case { ids, logits });
    }
    assert!(out.len() >= 2, "{}", path.display());
    out
}

/// The adapters of one tiny model: (name, directory, reference cases).
fn adapters(model: &str) -> Vec<(String, PathBuf, Vec<Case>)> {
    let dir = fixtures().join("lora").join(model);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 3, "{}: {names:?}", dir.display());
    names
        .into_iter()
        .map(|n| {
            let cases = read_cases(&dir.join(format!("{n}.logits.safetensors")));
            (n.clone(), dir.join(&n), cases)
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs `seqs` (ids, adapter slot) in one step and returns each one's
/// full-sequence logits.
fn run(
    model: &Model,
    seqs: &[(&[u32], Option<u16>)],
    adapters: &[Arc<LoraAdapter>],
) -> Vec<Vec<f32>> {
    let bs = 16;
    let mut next = 0u32;
    let tables: Vec<Vec<u32>> = seqs
        .iter()
        .map(|(ids, _)| {
            let n = ids.len().div_ceil(bs) as u32;
            next += n;
            (next - n..next).rev().collect()
        })
        .collect();
    let inputs: Vec<SeqInput> = seqs
        .iter()
        .zip(&tables)
        .map(|((ids, slot), table)| SeqInput {
            tokens: ids,
            start_pos: 0,
            block_table: table,
            logits: LogitsWanted::All,
            adapter: *slot,
        })
        .collect();
    let mut cache = KvCache::new(
        model.config(),
        next as usize,
        bs,
        CacheDtype::F32,
        model.device(),
    )
    .unwrap();
    let step = StepInputs::new(bs, &inputs).unwrap();
    let out = model.forward(&step, &mut cache, adapters).unwrap();
    let all = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let vocab = model.config().vocab_size;
    let mut at = 0;
    seqs.iter()
        .map(|(ids, _)| {
            let v = all[at..at + ids.len() * vocab].to_vec();
            at += ids.len() * vocab;
            v
        })
        .collect()
}

fn opts() -> LoraOptions {
    LoraOptions {
        max_rank: 16,
        dtype: LoraDtype::Auto,
    }
}

fn check_model(model_dir: &Path, adapters_of: &str) {
    let model = load_model(model_dir);
    for (name, dir, cases) in adapters(adapters_of) {
        let adapter = Arc::new(model.load_adapter(&dir, opts()).unwrap());
        for (i, c) in cases.iter().enumerate() {
            let got = run(&model, &[(&c.ids, Some(0))], std::slice::from_ref(&adapter));
            let d = max_diff(&got[0], &c.logits);
            eprintln!(
                "{} + {name} case {i}: max diff {d}",
                model_dir.file_name().unwrap().to_string_lossy()
            );
            assert!(d < 1e-4, "{adapters_of}/{name} case {i}: max |diff| {d}");
        }
    }
}

#[test]
fn tiny_llama_adapters_match_peft() {
    check_model(&fixtures().join("tiny-models/tiny-llama"), "tiny-llama");
}

#[test]
fn tiny_qwen2_adapters_match_peft() {
    check_model(&fixtures().join("tiny-models/tiny-qwen2"), "tiny-qwen2");
}

/// The same adapters on the GGUF conversion of tiny-llama, whose q/k rows
/// are permuted for interleaved rope: lora_B's q/k rows must follow.
#[test]
fn adapters_on_a_gguf_base_with_permuted_qk_match_peft() {
    check_model(
        &fixtures().join("lora/tiny-llama-gguf/tiny-llama.f32.gguf"),
        "tiny-llama",
    );
}

/// One step holding the base model and three adapters (two sequences on
/// one of them) gives each sequence the logits it gets alone.
#[test]
fn a_mixed_batch_gives_each_sequence_its_own_logits() {
    let model = load_model(&fixtures().join("tiny-models/tiny-llama"));
    let all = adapters("tiny-llama");
    let pick = |n: &str| all.iter().find(|a| a.0 == n).unwrap();
    let loaded: Vec<Arc<LoraAdapter>> = ["qv-r8", "all-r4", "rslora-r16"]
        .iter()
        .map(|n| Arc::new(model.load_adapter(&pick(n).1, opts()).unwrap()))
        .collect();
    let base = read_cases(&fixtures().join("tiny-models/tiny-llama/expected_logits.safetensors"));
    let (qv, all4, rs) = (&pick("qv-r8").2, &pick("all-r4").2, &pick("rslora-r16").2);
    let seqs: Vec<(&[u32], Option<u16>)> = vec![
        (&rs[1].ids, Some(2)),
        (&base[0].ids, None),
        (&qv[0].ids, Some(0)),
        (&all4[1].ids, Some(1)),
        (&qv[1].ids, Some(0)),
        (&base[1].ids, None),
    ];
    let want = [
        &rs[1].logits,
        &base[0].logits,
        &qv[0].logits,
        &all4[1].logits,
        &qv[1].logits,
        &base[1].logits,
    ];
    let got = run(&model, &seqs, &loaded);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = max_diff(g, w);
        assert!(d < 1e-4, "sequence {i}: max |diff| {d}");
    }
    // A slot past the step's adapters is an error, not a panic.
    let ids = [1u32, 2, 3];
    let table = [0u32];
    let step = StepInputs::new(
        16,
        &[SeqInput {
            tokens: &ids,
            start_pos: 0,
            block_table: &table,
            logits: LogitsWanted::Last,
            adapter: Some(3),
        }],
    )
    .unwrap();
    let mut cache = KvCache::new(model.config(), 1, 16, CacheDtype::F32, model.device()).unwrap();
    assert!(model.forward(&step, &mut cache, &loaded).is_err());
}

/// An adapter of another model is refused at load, and one smuggled into a
/// step is refused there.
#[test]
fn adapters_are_checked_against_the_model() {
    let llama = load_model(&fixtures().join("tiny-models/tiny-llama"));
    let spm = load_model(&fixtures().join("spm/tiny-spm.gguf"));
    let dir = fixtures().join("lora/tiny-llama/qv-r8");
    let e = spm.load_adapter(&dir, opts()).unwrap_err().to_string();
    assert!(e.contains("another model") || e.contains("layers"), "{e}");
    let e = llama
        .load_adapter(
            &dir,
            LoraOptions {
                max_rank: 4,
                dtype: LoraDtype::Auto,
            },
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("LoRA rank 8 is greater than max_lora_rank 4"),
        "{e}"
    );
    let missing = llama
        .load_adapter(&fixtures().join("lora/tiny-llama/nope"), opts())
        .unwrap_err();
    assert!(
        matches!(missing, ModelError::AdapterNotFound(_)),
        "{missing}"
    );
    assert!(missing.to_string().contains("adapter_config.json"));
}

/// Broken adapter directories, each refused with its reason.
#[test]
fn bad_adapter_files_are_refused_with_the_reason() {
    let model = load_model(&fixtures().join("tiny-models/tiny-llama"));
    let good = fixtures().join("lora/tiny-llama/qv-r8");
    let config = std::fs::read_to_string(good.join("adapter_config.json")).unwrap();
    let weights = std::fs::read(good.join("adapter_model.safetensors")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let case = |name: &str, config: &str, weights: Option<&[u8]>| -> String {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("adapter_config.json"), config).unwrap();
        if let Some(w) = weights {
            std::fs::write(d.join("adapter_model.safetensors"), w).unwrap();
        }
        model.load_adapter(&d, opts()).unwrap_err().to_string()
    };
    let e = case("no-weights", &config, None);
    assert!(e.contains("adapter_model.safetensors is missing"), "{e}");
    std::fs::create_dir_all(tmp.path().join("pickle")).unwrap();
    std::fs::write(tmp.path().join("pickle/adapter_model.bin"), b"pickle").unwrap();
    let e = case("pickle", &config, None);
    assert!(
        e.contains("adapter_model.bin") && e.contains("convert"),
        "{e}"
    );
    let dora = config.replace("\"use_dora\": false", "\"use_dora\": true");
    assert_ne!(dora, config);
    let e = case("dora", &dora, Some(&weights));
    assert!(e.contains("DoRA"), "{e}");
    let e = case("garbage", &config, Some(b"not safetensors"));
    assert!(e.contains("adapter_model.safetensors"), "{e}");
    let e = case("bad-json", "{", Some(&weights));
    assert!(e.contains("adapter_config.json"), "{e}");
    // A config whose rank disagrees with the tensors.
    let r4 = config.replace("\"r\": 8", "\"r\": 4");
    assert_ne!(r4, config);
    let e = case("rank-mismatch", &r4, Some(&weights));
    assert!(e.contains("rank 8") && e.contains("says 4"), "{e}");
}
