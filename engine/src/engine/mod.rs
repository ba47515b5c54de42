//! The serving engine: many requests at once over one model, batched
//! continuously over a paged KV cache with automatic prefix caching.
//!
//! [`Engine::start`] spawns the engine thread, which loops: take new
//! requests and aborts, schedule (`scheduler`), execute the step on the
//! model runner (`runner`: inputs, one ragged forward pass, sampling), and
//! stream each request's events. It sleeps while there is no work.
//! [`Engine::submit`] validates a request and returns its
//! [`RequestStream`]; dropping the stream aborts the request.
//! [`Engine::generate`] is the blocking facade over it (`llm-serve
//! generate`, `llm-serve bench`, model-level tests): every driver of the
//! model goes through this one path.

pub mod blocks;
mod config;
mod generate;
mod histograms;
mod request;
pub mod runner;
pub mod scheduler;
mod stats;
mod worker;

pub use config::{
    available_memory_bytes, os_available_memory_bytes, EngineConfig, MEMORY_LIMIT_ENV,
};
pub use generate::Generation;
pub use histograms::{EngineHistograms, Histogram};
pub use request::{
    check_prompt_length, AdapterRef, EngineEvent, EngineRequest, RequestTimes, TokenDelta, Usage,
};
pub use scheduler::SchedulingPolicy;
pub use stats::EngineStats;

use crate::error::{invalid, EngineError, Result};
use crate::structured::Grammars;
use crate::tokenizer::Tokenizer;
use llm_serve_models::{KvCache, Model};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// A request's id inside one engine.
pub type RequestId = u64;

/// A request on its way to the engine thread.
pub(crate) struct Submission {
    pub(crate) id: RequestId,
    pub(crate) request: EngineRequest,
    pub(crate) arrival: Instant,
    pub(crate) events: UnboundedSender<EngineEvent>,
}

pub(crate) enum Command {
    /// Requests admitted together, before the next step.
    Submit(Vec<Submission>),
    Abort(RequestId),
    Shutdown,
}

/// What the engine thread publishes after each step.
pub(crate) struct Published {
    pub(crate) stats: EngineStats,
    pub(crate) histograms: EngineHistograms,
    pub(crate) adapters: AdapterActivity,
}

/// The LoRA adapters of the running and of the waiting sequences (vLLM's
/// `lora_requests_info`), each sorted, without repeats.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdapterActivity {
    pub running: Vec<String>,
    pub waiting: Vec<String>,
}

/// Fixed facts about a running engine.
#[derive(Clone, Copy, Debug)]
pub struct EngineInfo {
    pub max_model_len: usize,
    pub vocab_size: usize,
    pub block_size: usize,
    pub num_blocks: usize,
    /// Sequences run at once; also the most samples one request may ask
    /// for (every sample of a request is admitted together).
    pub max_num_seqs: usize,
}

/// The handle to an engine thread. Dropping it stops the engine.
pub struct Engine {
    commands: mpsc::Sender<Command>,
    stats: Arc<Mutex<Published>>,
    next_id: AtomicU64,
    info: EngineInfo,
    tokenizer: Arc<Tokenizer>,
    /// The grammar compiler, built on the first constrained request.
    grammars: std::sync::OnceLock<std::result::Result<Arc<Grammars>, String>>,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Sizes the KV cache, then starts the engine thread.
    pub fn start(model: Arc<Model>, tokenizer: Arc<Tokenizer>, cfg: EngineConfig) -> Result<Self> {
        let max_model_len = cfg
            .max_model_len
            .unwrap_or(model.max_model_len())
            .min(model.max_model_len());
        cfg.validate(max_model_len)?;
        let cache_dtype = model.default_cache_dtype();
        let bytes_per_block = KvCache::bytes_per_block(model.config(), cfg.block_size, cache_dtype);
        let num_blocks = cfg.num_blocks(bytes_per_block, available_memory_bytes())?;
        if num_blocks * cfg.block_size < max_model_len {
            return Err(EngineError::InvalidParam {
                param: "kv_cache_memory_bytes",
                message: format!(
                    "the KV cache holds {} tokens ({num_blocks} blocks of {}), fewer than max_model_len ({max_model_len}): one long request could never run. Raise kv_cache_memory_bytes or kv_cache_memory_fraction, or lower max_model_len.",
                    num_blocks * cfg.block_size,
                    cfg.block_size
                ),
            });
        }
        let cache = KvCache::new(
            model.config(),
            num_blocks,
            cfg.block_size,
            cache_dtype,
            model.device(),
        )?;
        tracing::info!(
            num_blocks,
            block_size = cfg.block_size,
            kv_cache_bytes = num_blocks * bytes_per_block,
            max_model_len,
            max_num_seqs = cfg.max_num_seqs,
            max_num_batched_tokens = cfg.max_num_batched_tokens,
            "KV cache: {num_blocks} blocks of {} tokens ({} tokens, {:.1} MiB)",
            cfg.block_size,
            num_blocks * cfg.block_size,
            (num_blocks * bytes_per_block) as f64 / (1024.0 * 1024.0)
        );
        let info = EngineInfo {
            max_model_len,
            vocab_size: model.config().vocab_size,
            block_size: cfg.block_size,
            num_blocks,
            max_num_seqs: cfg.max_num_seqs,
        };
        let stats = Arc::new(Mutex::new(Published {
            stats: EngineStats {
                kv_blocks_total: num_blocks,
                ..EngineStats::default()
            },
            histograms: EngineHistograms::new(max_model_len),
            adapters: AdapterActivity::default(),
        }));
        let (tx, rx) = mpsc::channel();
        let runner = runner::ModelRunner::new(model, cache);
        let worker = worker::Worker::new(runner, tokenizer.clone(), &cfg, info, stats.clone());
        let thread = std::thread::Builder::new()
            .name("llm-serve-engine".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| EngineError::Internal(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine {
            commands: tx,
            stats,
            next_id: AtomicU64::new(0),
            info,
            tokenizer,
            grammars: std::sync::OnceLock::new(),
            thread: Some(thread),
        })
    }

    /// The grammar compiler for this model's vocabulary (its token trie is
    /// built once, on first use).
    pub fn grammars(&self) -> Result<Arc<Grammars>> {
        self.grammars
            .get_or_init(|| {
                Grammars::new(
                    self.tokenizer.clone(),
                    self.info.vocab_size,
                    self.tokenizer.eos_token_ids(),
                )
                .map(Arc::new)
                .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(EngineError::Tokenizer)
    }

    pub fn info(&self) -> EngineInfo {
        self.info
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// The latest counters.
    pub fn stats(&self) -> EngineStats {
        self.published(|p| p.stats)
    }

    /// The adapters of the running and the waiting sequences.
    pub fn adapter_activity(&self) -> AdapterActivity {
        self.published(|p| p.adapters.clone())
    }

    /// The latest request histograms.
    pub fn histograms(&self) -> EngineHistograms {
        self.published(|p| p.histograms.clone())
    }

    fn published<T>(&self, f: impl FnOnce(&Published) -> T) -> T {
        match self.stats.lock() {
            Ok(p) => f(&p),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// Checks a request and queues it. Errors are the caller's (a 400).
    pub fn submit(&self, request: EngineRequest) -> Result<RequestStream> {
        let mut streams = self.submit_all(vec![request])?;
        streams
            .pop()
            .ok_or_else(|| EngineError::Internal("no stream for the request".into()))
    }

    /// Checks requests and queues them together: the engine admits all of
    /// them before its next step (a batch arriving at once, as benchmarks
    /// want). Nothing is queued when any of them is refused.
    pub fn submit_all(&self, requests: Vec<EngineRequest>) -> Result<Vec<RequestStream>> {
        let arrival = Instant::now();
        for r in &requests {
            self.validate(r)?;
        }
        let mut submissions = Vec::with_capacity(requests.len());
        let mut streams = Vec::with_capacity(requests.len());
        for request in requests {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (events_tx, events_rx) = unbounded_channel();
            submissions.push(Submission {
                id,
                request,
                arrival,
                events: events_tx,
            });
            streams.push(RequestStream {
                id,
                events: events_rx,
                commands: self.commands.clone(),
                ended: false,
            });
        }
        self.commands
            .send(Command::Submit(submissions))
            .map_err(|_| EngineError::Internal("the engine has stopped".into()))?;
        Ok(streams)
    }

    /// Aborts a request: its samples finish with reason `abort`.
    pub fn abort(&self, id: RequestId) {
        let _ = self.commands.send(Command::Abort(id));
    }

    fn validate(&self, r: &EngineRequest) -> Result<()> {
        r.params.validate(self.info.vocab_size)?;
        if r.params.n > self.info.max_num_seqs {
            return Err(invalid(
                "n",
                format!(
                    "n must be at most {} (the engine's max_num_seqs), got {}.",
                    self.info.max_num_seqs, r.params.n
                ),
            ));
        }
        check_prompt_length(r.prompt.len(), r.params.max_tokens, self.info.max_model_len)?;
        if let Some(&t) = r
            .prompt
            .iter()
            .find(|&&t| t as usize >= self.info.vocab_size)
        {
            return Err(EngineError::InvalidPrompt {
                param: "prompt",
                message: format!(
                    "token id {t} is out of vocabulary (the vocabulary has {} tokens)",
                    self.info.vocab_size
                ),
            });
        }
        Ok(())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A request's events. Dropping it before the last event aborts the
/// request.
pub struct RequestStream {
    id: RequestId,
    events: UnboundedReceiver<EngineEvent>,
    commands: mpsc::Sender<Command>,
    ended: bool,
}

impl RequestStream {
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The next event; `None` after the last.
    pub async fn next(&mut self) -> Option<EngineEvent> {
        if self.ended {
            return None;
        }
        let e = self.events.recv().await;
        self.note(&e);
        e
    }

    /// The next event, blocking the thread (not for async contexts).
    pub fn blocking_next(&mut self) -> Option<EngineEvent> {
        if self.ended {
            return None;
        }
        let e = self.events.blocking_recv();
        self.note(&e);
        e
    }

    /// The next event if one is ready.
    pub fn try_next(&mut self) -> Option<EngineEvent> {
        if self.ended {
            return None;
        }
        let e = self.events.try_recv().ok();
        if e.is_some() {
            self.note(&e);
        }
        e
    }

    fn note(&mut self, e: &Option<EngineEvent>) {
        if matches!(
            e,
            None | Some(EngineEvent::Finished { .. }) | Some(EngineEvent::Error(_))
        ) {
            self.ended = true;
        }
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.commands.send(Command::Abort(self.id));
        }
    }
}
