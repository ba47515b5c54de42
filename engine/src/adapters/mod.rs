//! A replica's LoRA adapters: loaded on demand into an LRU bounded by
//! `max_num_adapters_per_replica` (Serve's model multiplexing), one load
//! per adapter however many requests ask for it at once, held by every
//! request that uses one (a held adapter is never evicted; a request whose
//! adapter has no place yet waits), with Serve's multiplex log lines and
//! counters.
//!
//! The policy is `table` (no model, no I/O); this module is the mechanism
//! around it: where an adapter comes from (`source`), loading it off the
//! async workers, and waking the requests that wait.

mod source;
mod table;

pub use source::{check_adapter_name, AdapterLocation, REMOTE_NOT_YET};
pub use table::{AdapterTable, Admit};

use crate::engine::{AdapterRef, Histogram};
use crate::error::{EngineError, Result};
use llm_serve_models::{LoraOptions, Model};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// Ray Serve's request-latency buckets (ms), its default for model load
/// and unload latencies.
pub const LATENCY_BUCKETS_MS: [f64; 20] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0, 1000.0, 2000.0, 5000.0,
    10000.0, 60000.0, 120000.0, 300000.0, 600000.0, 3600000.0,
];

/// How a replica serves adapters (Ray Serve LLM's `lora_config` and vLLM's
/// `max_lora_rank` / `lora_dtype`).
#[derive(Clone, Debug)]
pub struct LoraSettings {
    /// `max_num_adapters_per_replica`.
    pub max_loaded: usize,
    /// `dynamic_lora_loading_path`: one subdirectory (or prefix) per adapter.
    pub loading_path: Option<String>,
    /// Adapters known by name with their own source (vLLM's
    /// `--lora-modules`), loaded at start-up.
    pub modules: BTreeMap<String, String>,
    /// Per download attempt of a remote adapter.
    pub download_timeout: Option<Duration>,
    pub max_download_tries: u32,
    /// Where remote adapters are downloaded to.
    pub cache_dir: PathBuf,
    pub options: LoraOptions,
}

/// Serve's multiplex counters of one replica.
#[derive(Clone, Debug)]
pub struct MultiplexStats {
    pub loaded: Vec<String>,
    pub loading: Vec<String>,
    pub loads: u64,
    pub unloads: u64,
    /// Requests that asked for an adapter.
    pub requests: u64,
    pub load_latency_ms: Histogram,
    pub unload_latency_ms: Histogram,
}

/// The outcome of one load, shared with every request waiting for it.
type LoadResult = std::result::Result<AdapterRef, Arc<EngineError>>;

struct Inner {
    model: Arc<Model>,
    settings: LoraSettings,
    table: Mutex<AdapterTable<AdapterRef>>,
    /// Loads in progress, by entry id.
    loads: Mutex<HashMap<u64, watch::Receiver<Option<LoadResult>>>>,
    /// Woken when a place may have been freed.
    released: Notify,
    counters: Mutex<Counters>,
}

struct Counters {
    loads: u64,
    unloads: u64,
    requests: u64,
    load_latency_ms: Histogram,
    unload_latency_ms: Histogram,
}

/// The adapters of one replica. Cheap to clone.
#[derive(Clone)]
pub struct AdapterManager {
    inner: Arc<Inner>,
}

/// A request's hold on a loaded adapter: it stays loaded until every lease
/// on it is dropped.
pub struct AdapterLease {
    inner: Arc<Inner>,
    name: String,
    id: u64,
    adapter: AdapterRef,
}

impl AdapterLease {
    pub fn adapter(&self) -> &AdapterRef {
        &self.adapter
    }
}

impl Drop for AdapterLease {
    fn drop(&mut self) {
        let unloaded = self.inner.table().release(&self.name, self.id);
        if unloaded {
            self.inner.unloaded(&self.name, Instant::now());
        }
        self.inner.released.notify_waiters();
    }
}

/// Holds an entry for a request until it has a lease (or gives up).
struct Hold<'a> {
    inner: &'a Arc<Inner>,
    name: &'a str,
    id: u64,
}

impl Hold<'_> {
    fn into_lease(self, adapter: AdapterRef) -> AdapterLease {
        let lease = AdapterLease {
            inner: self.inner.clone(),
            name: self.name.to_string(),
            id: self.id,
            adapter,
        };
        std::mem::forget(self);
        lease
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.inner.table().release(self.name, self.id);
        self.inner.released.notify_waiters();
    }
}

impl Inner {
    fn table(&self) -> MutexGuard<'_, AdapterTable<AdapterRef>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn counters(&self) -> MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Logs and counts an adapter leaving the table.
    fn unloaded(&self, name: &str, started: Instant) {
        tracing::info!("Unloading model '{name}'.");
        let ms = started.elapsed().as_secs_f64() * 1e3;
        tracing::info!("Successfully unloaded model '{name}' in {ms:.1}ms.");
        let mut c = self.counters();
        c.unloads += 1;
        c.unload_latency_ms.observe(ms);
    }
}

impl AdapterManager {
    pub fn new(model: Arc<Model>, settings: LoraSettings) -> Self {
        let table = AdapterTable::new(settings.max_loaded);
        AdapterManager {
            inner: Arc::new(Inner {
                model,
                settings,
                table: Mutex::new(table),
                loads: Mutex::new(HashMap::new()),
                released: Notify::new(),
                counters: Mutex::new(Counters {
                    loads: 0,
                    unloads: 0,
                    requests: 0,
                    load_latency_ms: Histogram::new(&LATENCY_BUCKETS_MS),
                    unload_latency_ms: Histogram::new(&LATENCY_BUCKETS_MS),
                }),
            }),
        }
    }

    pub fn settings(&self) -> &LoraSettings {
        &self.inner.settings
    }

    /// Where adapter `name` comes from: `source` when the caller names one
    /// (an adapter registered at run time), else the adapter's
    /// `--lora-modules` entry, else `{dynamic_lora_loading_path}/{name}`.
    pub fn locate(&self, name: &str, source: Option<&str>) -> Result<AdapterLocation> {
        check_adapter_name(name)?;
        let s = &self.inner.settings;
        if let Some(src) = source.filter(|s| !s.is_empty()) {
            return AdapterLocation::parse(src);
        }
        if let Some(src) = s.modules.get(name) {
            return AdapterLocation::parse(src);
        }
        match &s.loading_path {
            Some(base) => AdapterLocation::parse(base)?.join(name),
            None => Err(EngineError::AdapterNotFound {
                name: name.to_string(),
                message: format!(
                    "The LoRA adapter '{name}' does not exist: it is not one of this model's lora_modules and the model's lora_config has no dynamic_lora_loading_path."
                ),
            }),
        }
    }

    /// The adapter `name` for a request: loaded, or loaded now (one load
    /// for every request asking at once), or, when every place is held by
    /// other requests, as soon as one is released. Errors say why it cannot
    /// be loaded (NOT_FOUND when it does not exist).
    pub async fn acquire(&self, name: &str, source: Option<&str>) -> Result<AdapterLease> {
        let location = self.locate(name, source)?;
        self.inner.counters().requests += 1;
        let inner = &self.inner;
        loop {
            let released = inner.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let (tx, rx) = watch::channel(None);
            // The entry and its load's channel appear together, so whoever
            // finds the entry loading finds the channel too.
            let (admitted, waiting) = {
                let mut table = inner.table();
                let admitted = table.admit(name);
                let mut loads = inner.loads.lock().unwrap_or_else(|p| p.into_inner());
                let waiting = match &admitted {
                    Admit::Load { id, .. } => {
                        loads.insert(*id, rx.clone());
                        Some(rx)
                    }
                    Admit::Loading { id } => loads.get(id).cloned(),
                    _ => None,
                };
                (admitted, waiting)
            };
            match admitted {
                Admit::Ready { id, value } => {
                    return Ok(Hold { inner, name, id }.into_lease(value));
                }
                Admit::Loading { id } | Admit::Load { id, .. } => {
                    let hold = Hold { inner, name, id };
                    if let Admit::Load { evicted, .. } = &admitted {
                        let now = Instant::now();
                        for n in evicted {
                            inner.unloaded(n, now);
                        }
                        self.spawn_load(name, id, location.clone(), tx);
                    }
                    let rx = waiting.ok_or_else(|| {
                        EngineError::Internal(format!("adapter '{name}' is loading with no loader"))
                    })?;
                    return match wait_load(rx).await {
                        Ok(a) => Ok(hold.into_lease(a)),
                        Err(e) => Err(copy_error(&e)),
                    };
                }
                Admit::Full => {
                    tracing::debug!(
                        adapter = name,
                        "every adapter place is held by running requests; waiting for one"
                    );
                    released.await;
                }
            }
        }
    }

    /// Loads entry `id` on a task of its own: it finishes even if the
    /// request that started it goes away, and tells every waiter on `tx`.
    fn spawn_load(
        &self,
        name: &str,
        id: u64,
        location: AdapterLocation,
        tx: watch::Sender<Option<LoadResult>>,
    ) {
        let inner = self.inner.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            tracing::info!("Loading model '{name}'.");
            let started = Instant::now();
            let result = load_adapter(&inner, &name, id, location)
                .await
                .map_err(Arc::new);
            let ms = started.elapsed().as_secs_f64() * 1e3;
            match &result {
                Ok(a) => {
                    tracing::info!(
                        rank = a.weights.max_rank(),
                        modules = a.weights.modules(),
                        bytes = a.weights.bytes(),
                        "Successfully loaded model '{name}' in {ms:.1}ms."
                    );
                    let mut c = inner.counters();
                    c.loads += 1;
                    c.load_latency_ms.observe(ms);
                }
                Err(e) => tracing::warn!("Failed to load model '{name}'. Error: {e}"),
            }
            inner
                .table()
                .finish_load(&name, id, result.as_ref().ok().cloned());
            let _ = tx.send(Some(result));
            inner
                .loads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            inner.released.notify_waiters();
        });
    }

    /// Loads `name` (again, with `replace`, even if it is loaded) and keeps
    /// it in the LRU without holding it.
    pub async fn load(&self, name: &str, source: Option<&str>, replace: bool) -> Result<()> {
        if replace && self.inner.table().forget(name) {
            self.inner.unloaded(name, Instant::now());
        }
        self.acquire(name, source).await.map(drop)
    }

    /// Unloads `name` (now, or when its last request ends); false when it
    /// is not loaded.
    pub fn unload(&self, name: &str) -> bool {
        let now = Instant::now();
        let done = self.inner.table().unload(name);
        if done == Some(true) {
            self.inner.unloaded(name, now);
            self.inner.released.notify_waiters();
        }
        done.is_some()
    }

    /// Loaded and loading adapters (what the router routes by).
    pub fn names(&self) -> Vec<String> {
        let t = self.inner.table();
        let mut v = t.loaded();
        v.extend(t.loading());
        v
    }

    pub fn stats(&self) -> MultiplexStats {
        let (loaded, loading) = {
            let t = self.inner.table();
            (t.loaded(), t.loading())
        };
        let c = self.inner.counters();
        MultiplexStats {
            loaded,
            loading,
            loads: c.loads,
            unloads: c.unloads,
            requests: c.requests,
            load_latency_ms: c.load_latency_ms.clone(),
            unload_latency_ms: c.unload_latency_ms.clone(),
        }
    }
}

async fn wait_load(mut rx: watch::Receiver<Option<LoadResult>>) -> LoadResult {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => v
            .clone()
            .unwrap_or_else(|| Err(Arc::new(EngineError::Internal("a load ended empty".into())))),
        Err(_) => Err(Arc::new(EngineError::Internal(
            "the adapter loader stopped".into(),
        ))),
    }
}

/// An error shared by the requests that waited for one load, as each
/// request's own.
fn copy_error(e: &EngineError) -> EngineError {
    match e {
        EngineError::AdapterNotFound { name, message } => EngineError::AdapterNotFound {
            name: name.clone(),
            message: message.clone(),
        },
        EngineError::AdapterLoad { name, message } => EngineError::AdapterLoad {
            name: name.clone(),
            message: message.clone(),
        },
        other => EngineError::AdapterLoad {
            name: String::new(),
            message: other.to_string(),
        },
    }
}

/// Fetches the adapter's files (remote sources into the cache) and loads
/// them for the model, off the async workers.
async fn load_adapter(
    inner: &Arc<Inner>,
    name: &str,
    id: u64,
    location: AdapterLocation,
) -> Result<AdapterRef> {
    let s = &inner.settings;
    let dir = location
        .fetch(name, &s.cache_dir, s.download_timeout, s.max_download_tries)
        .await?;
    let model = inner.model.clone();
    let options = s.options;
    let weights = tokio::task::spawn_blocking(move || model.load_adapter(&dir, options))
        .await
        .map_err(|e| EngineError::Internal(format!("loading the adapter: {e}")))?
        .map_err(|e| match e {
            llm_serve_models::ModelError::AdapterNotFound(_) => EngineError::AdapterNotFound {
                name: name.to_string(),
                message: e.to_string(),
            },
            other => EngineError::AdapterLoad {
                name: name.to_string(),
                message: other.to_string(),
            },
        })?;
    Ok(AdapterRef {
        name: name.to_string(),
        load_id: id,
        weights: Arc::new(weights),
    })
}
