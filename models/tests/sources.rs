//! Model sources: local GGUF files, Hugging Face directories and hub ids
//! through hf-hub's cache; every missing or corrupt file is an error naming
//! the file and what is wrong, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

use llm_serve_models::{Model, ModelError, ModelFiles, WeightsFormat};
use std::path::{Path, PathBuf};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(rel)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn load(source: &str) -> Result<Model, ModelError> {
    Model::load(&ModelFiles::resolve(source)?, None)
}

fn err_text(r: Result<Model, ModelError>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn gguf_file_and_hf_directory_both_load() {
    let g = ModelFiles::resolve(fixture("spm/tiny-spm.gguf").to_str().unwrap()).unwrap();
    assert_eq!(g.format, WeightsFormat::Gguf);
    Model::load(&g, None).unwrap();
    let h = ModelFiles::resolve(fixture("tiny-models/tiny-llama").to_str().unwrap()).unwrap();
    assert_eq!(h.format, WeightsFormat::Safetensors);
    assert!(h.generation_config.is_some());
    let s =
        ModelFiles::resolve(fixture("tiny-models/tiny-llama-sharded").to_str().unwrap()).unwrap();
    assert_eq!(s.safetensors.len(), 3);
}

#[test]
fn a_missing_path_is_named() {
    let e = err_text(load("/no/such/dir/model.gguf"));
    assert!(e.contains("/no/such/dir/model.gguf"), "{e}");
}

#[test]
fn a_file_that_is_not_gguf_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("weights.bin");
    std::fs::write(&p, b"definitely not a model").unwrap();
    let e = err_text(load(p.to_str().unwrap()));
    assert!(e.contains("weights.bin") && e.contains("GGUF"), "{e}");
}

#[test]
fn corrupt_and_truncated_gguf_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture("spm/tiny-spm.gguf")).unwrap();
    // Truncated in the tensor data.
    let p = dir.path().join("truncated.gguf");
    std::fs::write(&p, &good[..good.len() * 3 / 4]).unwrap();
    let e = err_text(load(p.to_str().unwrap()));
    assert!(
        e.contains("truncated.gguf") && e.contains("truncated or corrupt"),
        "{e}"
    );
    // Truncated in the header.
    let p = dir.path().join("header.gguf");
    std::fs::write(&p, &good[..100]).unwrap();
    let e = err_text(load(p.to_str().unwrap()));
    assert!(e.contains("header.gguf"), "{e}");
    // Garbage after the magic.
    let p = dir.path().join("garbage.gguf");
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(std::iter::repeat_n(0xFFu8, 4096));
    std::fs::write(&p, &bytes).unwrap();
    let e = err_text(load(p.to_str().unwrap()));
    assert!(e.contains("garbage.gguf"), "{e}");
}

#[test]
fn hf_directory_problems_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // No config.json.
    let e = err_text(load(dir.path().to_str().unwrap()));
    assert!(e.contains("config.json"), "{e}");
    // A shard listed in the index is missing.
    let sharded = dir.path().join("sharded");
    copy_dir(&fixture("tiny-models/tiny-llama-sharded"), &sharded);
    std::fs::remove_file(sharded.join("model-00002-of-00003.safetensors")).unwrap();
    let e = err_text(load(sharded.to_str().unwrap()));
    assert!(e.contains("model-00002-of-00003.safetensors"), "{e}");
    // A corrupt safetensors file.
    let corrupt = dir.path().join("corrupt");
    copy_dir(&fixture("tiny-models/tiny-llama"), &corrupt);
    std::fs::write(
        corrupt.join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}",
    )
    .unwrap();
    let e = err_text(load(corrupt.to_str().unwrap()));
    assert!(e.contains("model.safetensors"), "{e}");
    // A config field of the wrong type.
    let badcfg = dir.path().join("badcfg");
    copy_dir(&fixture("tiny-models/tiny-llama"), &badcfg);
    let cfg = std::fs::read_to_string(badcfg.join("config.json")).unwrap();
    std::fs::write(
        badcfg.join("config.json"),
        cfg.replace("\"hidden_size\": 64", "\"hidden_size\": \"big\""),
    )
    .unwrap();
    let e = err_text(load(badcfg.to_str().unwrap()));
    assert!(
        e.contains("hidden_size") && e.contains("config.json"),
        "{e}"
    );
    // An unsupported architecture.
    std::fs::write(
        badcfg.join("config.json"),
        cfg.replace("\"model_type\": \"llama\"", "\"model_type\": \"gpt_neox\""),
    )
    .unwrap();
    let e = err_text(load(badcfg.to_str().unwrap()));
    assert!(e.contains("gpt_neox"), "{e}");
    // A weight with the wrong shape for the config.
    std::fs::write(
        badcfg.join("config.json"),
        cfg.replace("\"intermediate_size\": 160", "\"intermediate_size\": 128"),
    )
    .unwrap();
    let e = err_text(load(badcfg.to_str().unwrap()));
    assert!(e.contains("gate"), "{e}");
}

/// One test owns the hub environment variables (tests run in threads).
#[test]
fn hub_ids_resolve_through_the_cache_offline_and_name_missing_files() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--tiny-org--tiny-llama");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    copy_dir(
        &fixture("tiny-models/tiny-llama"),
        &repo.join("snapshots/0123abcd"),
    );
    // Safe in edition 2021; this test is the only one touching these.
    std::env::set_var("HF_HUB_CACHE", cache.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let files = ModelFiles::resolve("tiny-org/tiny-llama").unwrap();
    assert_eq!(files.format, WeightsFormat::Safetensors);
    let model = Model::load(&files, None).unwrap();
    assert_eq!(model.config().vocab_size, 512);
    let e = ModelFiles::resolve("tiny-org/not-cached")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tiny-org/not-cached")
            && e.contains("config.json")
            && e.contains("HF_HUB_OFFLINE"),
        "{e}"
    );
    let e = ModelFiles::resolve("tiny-org/not-cached/model-q4.gguf")
        .unwrap_err()
        .to_string();
    assert!(e.contains("model-q4.gguf"), "{e}");
    std::env::remove_var("HF_HUB_OFFLINE");
    std::env::remove_var("HF_HUB_CACHE");
}

#[test]
fn names_that_are_neither_paths_nor_repo_ids_are_rejected() {
    for bad in ["", "just-a-name", "a/b/c", "org/name with space"] {
        assert!(
            matches!(ModelFiles::resolve(bad), Err(ModelError::SourceNotFound(_))),
            "{bad:?}"
        );
    }
}
