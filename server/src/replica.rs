//! `llm-serve replica`: one engine served over the replica protocol.
//!
//! The process binds its port first and reports it on stdout, then loads
//! the model while already answering `Health` (LOADING). Its stdout carries
//! one JSON line per lifecycle event for the parent (see
//! `replica_process`); logs go to stderr. SIGTERM drains: new requests are
//! refused, in-flight ones run to the end (within the timeout), then it
//! exits. It also exits when its parent dies, so no replica outlives the
//! process that started it.

use crate::cli::ReplicaArgs;
use crate::config::llm::LoraConfig;
use crate::replica_process::ReplicaEvent;
use anyhow::{Context, Result};
use llm_serve_engine::adapters::LoraSettings;
use llm_serve_engine::replica::{LoadedModel, ReplicaService, ReplicaState};
use llm_serve_engine::EngineConfig;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The share of its GPU(s) a replica may use, from the controller.
pub const GPU_MEMORY_FRACTION_ENV: &str = "LLM_SERVE_GPU_MEMORY_FRACTION";
/// The accelerator type the replica was placed for.
pub const ACCELERATOR_TYPE_ENV: &str = "LLM_SERVE_ACCELERATOR_TYPE";

pub fn run(args: ReplicaArgs) -> Result<()> {
    exit_with_parent();
    report_accelerator_share(&args.replica_id);
    let threads = llm_serve_kernels::threads::init(args.engine.threads.unwrap_or(0));
    let cfg = crate::engine_kwargs::engine_config(&args.engine)?;
    let lora = args
        .lora_config
        .as_deref()
        .map(|text| lora_settings(text, &cfg))
        .transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args, cfg, lora, threads))
}

/// The replica's adapter settings from its `lora_config` and engine
/// settings.
fn lora_settings(text: &str, cfg: &EngineConfig) -> Result<LoraSettings> {
    let l: LoraConfig =
        serde_json::from_str(text).with_context(|| format!("--lora-config: {text}"))?;
    Ok(LoraSettings {
        max_loaded: l.max_num_adapters_per_replica.max(1) as usize,
        loading_path: l.dynamic_lora_loading_path,
        modules: l.lora_modules,
        download_timeout: l
            .download_timeout_s
            .filter(|t| *t > 0.0)
            .map(crate::config::duration),
        max_download_tries: l.max_download_tries.max(1),
        cache_dir: lora_cache_dir(),
        options: cfg.lora_options()?,
    })
}

/// Where remote adapters are downloaded: `LLM_SERVE_LORA_CACHE_DIR`, else
/// `lora-cache` beside the models directory.
fn lora_cache_dir() -> std::path::PathBuf {
    match std::env::var_os(LORA_CACHE_ENV) {
        Some(d) if !d.is_empty() => d.into(),
        _ => {
            let models = llm_serve_models::models_dir();
            models
                .parent()
                .map_or_else(|| models.join("lora-cache"), |p| p.join("lora-cache"))
        }
    }
}

/// Overrides where remote adapters are downloaded.
pub const LORA_CACHE_ENV: &str = "LLM_SERVE_LORA_CACHE_DIR";

async fn serve(
    args: ReplicaArgs,
    cfg: EngineConfig,
    lora: Option<LoraSettings>,
    threads: usize,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("cannot bind {}:{}", args.host, args.port))?;
    let port = listener.local_addr()?.port();
    let state = ReplicaState::new(&args.model);
    state.set_access_log(crate::logs::access_log_enabled());
    let secret = std::env::var(llm_serve_proto::SECRET_ENV).ok();
    let service = ReplicaService::new(state.clone()).into_server(secret);
    ReplicaEvent::Listening { port }.emit();
    tracing::info!(replica = %args.replica_id, port, threads, "replica listening; loading {}", args.model);
    let load_state = state.clone();
    let model = args.model.clone();
    let replica_id = args.replica_id.clone();
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("llm-serve-load".into())
        .spawn(move || {
            let started = Instant::now();
            let loaded = LoadedModel::load(&model, cfg, lora).and_then(|m| {
                runtime.block_on(m.preload_adapters())?;
                Ok(m)
            });
            match &loaded {
                Ok(m) => {
                    let info = m.engine.info();
                    tracing::info!(
                        replica = %replica_id,
                        max_model_len = info.max_model_len,
                        kv_blocks = info.num_blocks,
                        "model loaded in {:.2}s",
                        started.elapsed().as_secs_f64()
                    );
                    ReplicaEvent::Ready.emit();
                }
                Err(e) => {
                    tracing::error!(replica = %replica_id, "cannot load {model}: {e}");
                    ReplicaEvent::Failed {
                        message: e.to_string(),
                    }
                    .emit();
                }
            }
            load_state.set_loaded(loaded);
        })
        .context("cannot start the loading thread")?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let drain_state = state.clone();
    let timeout = crate::config::duration(args.graceful_shutdown_timeout_s);
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async move {
            crate::signals::shutdown_requested().await;
            drain(&drain_state, timeout).await;
        })
        .await
        .context("the replica server failed")?;
    if let Some(message) = state.failure() {
        anyhow::bail!("the model failed to load: {message}");
    }
    Ok(())
}

/// Says what the replica does with the accelerator share it was given:
/// the engine runs on the CPU kernels until a GPU backend is built in.
fn report_accelerator_share(replica_id: &str) {
    let devices = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default();
    if devices.is_empty() {
        return;
    }
    let fraction = std::env::var(GPU_MEMORY_FRACTION_ENV).unwrap_or_else(|_| "1".into());
    #[cfg(feature = "cuda")]
    let backend = match llm_serve_kernels::cuda::probe(0) {
        Ok(info) => {
            format!("{info} is there, but this build's CUDA backend has no model kernels yet")
        }
        Err(e) => format!("{e}"),
    };
    #[cfg(not(feature = "cuda"))]
    let backend = "this build has no GPU backend (built without the cuda feature)".to_string();
    tracing::warn!(
        replica = %replica_id,
        "placed on GPU(s) {devices} with a {fraction} share: {backend}; the engine runs on the CPU kernels"
    );
}

/// Refuses new requests and waits for in-flight ones (up to `timeout`).
async fn drain(state: &Arc<ReplicaState>, timeout: Duration) {
    state.start_draining();
    let deadline = Instant::now() + timeout;
    let mut last = u32::MAX;
    loop {
        let ongoing = state.ongoing();
        if ongoing == 0 {
            tracing::info!("drained; stopping");
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!("{ongoing} requests still running after {timeout:?}; stopping anyway");
            return;
        }
        if ongoing != last {
            tracing::info!("draining: {ongoing} requests in flight");
            last = ongoing;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asks the kernel to send SIGTERM when the parent exits (Linux).
fn exit_with_parent() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and
        // touches no memory of ours.
        let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
        if r != 0 {
            tracing::warn!("cannot ask to be stopped with the parent process");
        }
        // The parent may have died before the call took effect.
        let expected = std::env::var(crate::replica_process::PARENT_PID_ENV)
            .ok()
            .and_then(|v| v.parse::<i32>().ok());
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() };
        if expected.is_some_and(|p| p != parent) {
            std::process::exit(1);
        }
    }
}
