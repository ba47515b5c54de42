//! Helpers shared by the engine tests: fixtures and the default model.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]
#![allow(dead_code)]

use llm_serve_engine::{Engine, EngineConfig, Tokenizer};
use llm_serve_models::{Model, ModelFiles};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

pub fn read_json(rel: &str) -> serde_json::Value {
    let p = fixtures().join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// The default model's GGUF (fetched by scripts/fetch-default-model.sh).
pub fn default_model_path() -> PathBuf {
    let p = llm_serve_models::default_model_path();
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-default-model.sh first",
        p.display()
    );
    p
}

pub struct Loaded {
    pub files: ModelFiles,
    pub model: Arc<Model>,
    pub tokenizer: Arc<Tokenizer>,
}

impl Loaded {
    /// An engine over the model, with a KV cache that holds its whole
    /// 4096-token context.
    pub fn engine(&self) -> Engine {
        let cfg = EngineConfig {
            kv_cache_memory_bytes: Some(128 * 1024 * 1024),
            ..EngineConfig::default()
        };
        Engine::start(self.model.clone(), self.tokenizer.clone(), cfg).unwrap()
    }
}

/// The default model, loaded once per test binary.
pub fn default_model() -> &'static Loaded {
    static M: OnceLock<Loaded> = OnceLock::new();
    M.get_or_init(|| {
        llm_serve_kernels::threads::init(2);
        let files = ModelFiles::resolve(default_model_path().to_str().unwrap()).unwrap();
        let model = Model::load(&files, Some(4096)).unwrap();
        let tokenizer = Tokenizer::load(&files, model.gguf_metadata()).unwrap();
        Loaded {
            files,
            model: Arc::new(model),
            tokenizer: Arc::new(tokenizer),
        }
    })
}

/// The default model and tokenizer behind `Arc`s, for engines (loaded once
/// per test binary, with a 1024-token context so small KV caches are
/// allowed).
pub fn default_model_shared() -> (Arc<Model>, Arc<Tokenizer>) {
    static M: OnceLock<(Arc<Model>, Arc<Tokenizer>)> = OnceLock::new();
    M.get_or_init(|| {
        llm_serve_kernels::threads::init(2);
        let files = ModelFiles::resolve(default_model_path().to_str().unwrap()).unwrap();
        let model = Model::load(&files, Some(1024)).unwrap();
        let tokenizer = Tokenizer::load(&files, model.gguf_metadata()).unwrap();
        (Arc::new(model), Arc::new(tokenizer))
    })
    .clone()
}
