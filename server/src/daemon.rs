//! The llm-serve process that `start`, `run` and `serve` all run: the
//! controller, the HTTP proxy with every application's router in it, and
//! the admin REST API, until a signal or a shutdown request; then the
//! proxy stops taking connections, replicas drain and stop, and it exits.

use crate::admin::{self, AdminState};
use crate::config::schema::{GrpcOptions, HttpOptions, LogLevel, ProxyLocation};
use crate::config::Checked;
use crate::control::checkpoint::Checkpoint;
use crate::control::status::ApplicationStatus;
use crate::control::{Controller, ControllerHandle, ControllerOptions};
use crate::proxy::{Proxy, ProxyOptions, Routes};
use crate::resources::{Allocator, NodeResources, Overrides};
use anyhow::{Context, Result};
use llm_serve_router::{Metrics, RouterConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Everything the daemon is started with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub http: HttpOptions,
    pub grpc: GrpcOptions,
    pub proxy_location: ProxyLocation,
    pub admin_host: String,
    pub admin_port: u16,
    /// The admin API wants it as a bearer token.
    pub admin_token: Option<String>,
    pub overrides: Overrides,
    pub state_dir: PathBuf,
    /// Keep the goal in the state dir and recover it on start (`start`).
    pub persist: bool,
    /// Write the log to stderr too (foreground).
    pub log_to_stderr: bool,
    /// Copy replica log lines to stderr (`run`, `serve`).
    pub echo_replica_logs: bool,
    pub log_level: LogLevel,
    pub router: RouterConfig,
    /// How long open HTTP requests get to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Stop, with the reason as the error, when the initial config fails
    /// to deploy (`run`, `serve`).
    pub exit_on_deploy_failure: bool,
}

/// The default state directory (`LLM_SERVE_STATE_DIR` or
/// `/tmp/llm-serve`), like Ray's `/tmp/ray`.
pub fn default_state_dir() -> PathBuf {
    std::env::var_os("LLM_SERVE_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/llm-serve"))
}

pub fn logs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("logs").join("serve")
}

/// This node's id: random once, then kept in the state dir.
fn node_id(state_dir: &Path) -> String {
    let path = state_dir.join("node_id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return id.to_string();
        }
    }
    let id = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        &uuid::Uuid::new_v4().simple().to_string()[..24]
    );
    if let Err(e) = std::fs::write(&path, &id) {
        tracing::warn!("cannot keep the node id in {}: {e}", path.display());
    }
    id
}

fn node_ip(host: &str) -> String {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) if !ip.is_unspecified() => ip.to_string(),
        _ => "127.0.0.1".into(),
    }
}

/// An exclusive lock on the state dir for the daemon's lifetime.
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    pub fn take(state_dir: &Path) -> Result<Self> {
        let path = state_dir.join("daemon.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::io::AsRawFd;
            // SAFETY: flock on a file descriptor we own.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r != 0 {
                let pid = std::fs::read_to_string(state_dir.join("daemon.pid")).unwrap_or_default();
                anyhow::bail!(
                    "another llm-serve daemon (pid {}) is using the state directory {}; stop it with `llm-serve shutdown` or pick another --state-dir",
                    pid.trim(),
                    state_dir.display()
                );
            }
        }
        Ok(StateLock { _file: file })
    }
}

/// Runs the daemon until a signal or a shutdown request. `initial` is
/// deployed once everything listens (and `Deployed Serve app
/// successfully.` logged once it runs); `on_interrupt_message` is printed
/// when a signal stops it (`run`'s Ctrl-C line).
pub async fn run(
    s: Settings,
    initial: Option<Checked>,
    on_interrupt_message: Option<&'static str>,
) -> Result<()> {
    std::fs::create_dir_all(&s.state_dir).with_context(|| {
        format!(
            "cannot create the state directory {}",
            s.state_dir.display()
        )
    })?;
    // One llm-serve per state directory, whether it keeps its goal there
    // (`start`) or not (`run`, `serve`: the goal dies with the process,
    // as with Ray's `serve run`).
    let _lock = StateLock::take(&s.state_dir)?;
    std::fs::write(
        s.state_dir.join("daemon.pid"),
        std::process::id().to_string(),
    )?;
    let node_ip = node_ip(&s.http.host);
    let logs = logs_dir(&s.state_dir);
    let files = crate::logs::init_daemon(&logs, &node_ip, s.log_level, s.log_to_stderr)
        .with_context(|| format!("cannot write logs in {}", logs.display()))?;
    let node_id = node_id(&s.state_dir);
    let node = NodeResources::detect(&s.overrides);
    tracing::info!(
        "Node {node_id}: {} CPUs, {:.1} GiB memory, {} GPU(s){}",
        node.cpus,
        node.memory_bytes / f64::from(1u32 << 30),
        node.gpus.len(),
        if node.custom.is_empty() {
            String::new()
        } else {
            format!(", resources {:?}", node.custom)
        }
    );
    let metrics = Arc::new(Metrics::new().context("cannot set up metrics")?);
    let routes = Arc::new(Routes::default());
    let proxy_listener = if s.proxy_location == ProxyLocation::Disabled {
        None
    } else {
        let l = tokio::net::TcpListener::bind((s.http.host.as_str(), s.http.port))
            .await
            .with_context(|| {
                format!(
                    "cannot listen for HTTP on {}:{} (set another port with --http-port, or http_options.port)",
                    s.http.host, s.http.port
                )
            })?;
        Some(l)
    };
    let admin_listener = tokio::net::TcpListener::bind((s.admin_host.as_str(), s.admin_port))
        .await
        .with_context(|| {
            format!(
                "cannot listen for the admin API on {}:{} (is another llm-serve running? pick another --dashboard-port)",
                s.admin_host, s.admin_port
            )
        })?;
    let controller = Controller::start(
        ControllerOptions {
            node_id: node_id.clone(),
            node_ip: node_ip.clone(),
            logs_dir: logs.clone(),
            controller_log: files.controller,
            proxy_log: files.proxy,
            echo_logs: s.echo_replica_logs,
            http_options: s.http.clone(),
            grpc_options: s.grpc.clone(),
            proxy_location: s.proxy_location,
            router_config: s.router.clone(),
            checkpoint: s.persist.then(|| Checkpoint::new(&s.state_dir)),
        },
        Allocator::new(node),
        metrics.clone(),
        routes.clone(),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let proxy_task = proxy_listener.map(|listener| {
        let port = listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(s.http.port);
        tracing::info!(
            target: "llm_serve::proxy",
            "Proxy starting on node {node_id}; HTTP server listening on {}:{port}",
            s.http.host
        );
        let proxy = Proxy::new(
            routes.clone(),
            metrics.clone(),
            ProxyOptions {
                request_timeout: s.http.request_timeout_s.map(crate::config::duration),
                keep_alive_timeout: crate::config::duration(s.http.keep_alive_timeout_s.max(0.1)),
                node_id: node_id.clone(),
                node_ip: node_ip.clone(),
            },
        );
        let mut stop = stop_rx.clone();
        tokio::spawn(proxy.serve(
            listener,
            async move {
                let _ = stop.wait_for(|v| *v).await;
            },
            s.shutdown_grace,
        ))
    });
    let shutdown_requested = Arc::new(Notify::new());
    let admin = admin::router(Arc::new(AdminState {
        controller: controller.clone(),
        shutdown: shutdown_requested.clone(),
        token: s.admin_token.clone(),
        bound_host: s.admin_host.clone(),
    }));
    tracing::info!(
        "Admin API listening on http://{}:{}",
        s.admin_host,
        admin_listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(s.admin_port)
    );
    let mut admin_stop = stop_rx.clone();
    let admin_task = tokio::spawn(async move {
        let _ = axum::serve(admin_listener, admin)
            .with_graceful_shutdown(async move {
                let _ = admin_stop.wait_for(|v| *v).await;
            })
            .await;
    });
    let deployed = match initial {
        Some(checked) => {
            controller.deploy(checked).await;
            Some(tokio::spawn(report_deployed(controller.clone())))
        }
        None => None,
    };
    // `run` and `serve` end, like `serve run` and `vllm serve`, when the
    // config they were started with fails to deploy.
    let deploy_failed = async {
        match deployed {
            Some(report) if s.exit_on_deploy_failure => match report.await {
                Ok(Some(failure)) => failure,
                _ => std::future::pending().await,
            },
            _ => std::future::pending().await,
        }
    };
    let failure = tokio::select! {
        _ = crate::signals::shutdown_requested() => {
            if let Some(m) = on_interrupt_message {
                eprintln!("{m}");
            }
            tracing::info!("Got a signal; shutting down.");
            None
        }
        _ = shutdown_requested.notified() => None,
        failure = deploy_failed => {
            tracing::error!("{failure}; shutting down.");
            Some(failure)
        }
    };
    // Replicas drain while the proxy finishes its open requests.
    let _ = stop_tx.send(true);
    let proxy_done = async {
        if let Some(t) = proxy_task {
            let _ = t.await;
        }
    };
    tokio::join!(controller.shutdown(), proxy_done);
    let _ = admin_task.await;
    tracing::info!("llm-serve stopped.");
    match failure {
        Some(f) => Err(anyhow::anyhow!(f)),
        None => Ok(()),
    }
}

/// Logs `Deployed Serve app successfully.` once every application runs;
/// the failure, when one fails first.
async fn report_deployed(controller: ControllerHandle) -> Option<String> {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let d = controller.details().await?;
        if let Some(failed) = d
            .applications
            .values()
            .find(|a| a.status == ApplicationStatus::DeployFailed)
        {
            return Some(failed.message.clone());
        }
        if !d.applications.is_empty()
            && d.applications
                .values()
                .all(|a| a.status == ApplicationStatus::Running)
        {
            tracing::info!("Deployed Serve app successfully.");
            return None;
        }
    }
}
