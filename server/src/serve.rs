//! `llm-serve serve --model X`: the router on an HTTP port and one engine
//! replica in a child process, supervised.
//!
//! The HTTP port is bound at once: until the model is loaded `/health` is
//! 503 and requests get 503. Ctrl-C / SIGTERM stops accepting connections,
//! lets in-flight requests finish, then drains and stops the replica. If
//! the replica dies, requests get 503 and its exit status is logged.

use crate::cli::ServeArgs;
use crate::replica_process::{ReplicaChild, ReplicaEvent, ReplicaEvents};
use anyhow::{Context, Result};
use llm_serve_proto as pb;
use llm_serve_router::{App, Deployment, Replica, ReplicaState, RouterConfig};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the replica's health is checked.
const HEALTH_PERIOD: Duration = Duration::from_secs(1);
/// Health checks that may fail in a row before the replica is unhealthy.
const HEALTH_FAILURES: u32 = 3;
/// The id of `serve`'s only replica.
const REPLICA_ID: &str = "replica-0";

pub fn run(args: ServeArgs) -> Result<()> {
    let kwargs = serde_json::to_value(crate::engine_kwargs::engine_config(&args.engine)?)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args, kwargs))
}

async fn serve(args: ServeArgs, kwargs: serde_json::Value) -> Result<()> {
    let served = args
        .served_model_name
        .clone()
        .unwrap_or_else(|| args.model.clone());
    let app = App::new(RouterConfig {
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        max_body_bytes: args.max_request_body_bytes,
    })?;
    let deployment = Deployment::new(&served);
    app.models.insert(deployment.clone());
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    let grace = Duration::from_secs_f64(args.graceful_shutdown_timeout_s.max(0.0));
    let mut replica_args = vec![
        "--model".to_string(),
        args.model.clone(),
        "--replica-id".to_string(),
        REPLICA_ID.to_string(),
        "--engine-kwargs".to_string(),
        kwargs.to_string(),
        "--graceful-shutdown-timeout-s".to_string(),
        grace.as_secs_f64().to_string(),
    ];
    if let Some(t) = args.engine.threads {
        replica_args.extend(["--threads".to_string(), t.to_string()]);
    }
    let (child, events) = ReplicaChild::spawn(&replica_args, &[], Stdio::inherit())?;
    tracing::warn!(
        "serving {served} on http://{}:{} (replica pid {}); loading the model",
        args.host,
        listener.local_addr()?.port(),
        child.pid().unwrap_or(0)
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let supervisor = tokio::spawn(supervise(child, events, deployment, stop_rx, grace));
    axum::serve(listener, llm_serve_router::router(app))
        .with_graceful_shutdown(crate::signals::shutdown_requested())
        .await
        .context("the HTTP server failed")?;
    tracing::warn!("HTTP server stopped; stopping the replica");
    let _ = stop_tx.send(true);
    supervisor.await.context("the replica supervisor failed")?;
    Ok(())
}

/// Follows the replica: its events, its health, its exit; stops it when
/// told to.
async fn supervise(
    mut child: ReplicaChild,
    mut events: ReplicaEvents,
    deployment: Arc<Deployment>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut replica: Option<Arc<Replica>> = None;
    let mut events_open = true;
    let mut failures = 0u32;
    let mut health = tokio::time::interval(HEALTH_PERIOD);
    loop {
        tokio::select! {
            e = events.next(), if events_open => match e {
                Some(ReplicaEvent::Listening { port }) => {
                    match Replica::new(REPLICA_ID, &format!("127.0.0.1:{port}")) {
                        Ok(r) => {
                            deployment.set_replicas(vec![r.clone()]);
                            replica = Some(r);
                        }
                        Err(e) => tracing::error!("{e}"),
                    }
                }
                Some(ReplicaEvent::Ready) => {
                    if let Some(r) = &replica {
                        mark_ready(r, &deployment).await;
                    }
                }
                Some(ReplicaEvent::Failed { message }) => {
                    tracing::error!("the replica could not load the model: {message}");
                    deployment.set_problem(Some(format!("the model failed to load: {message}")));
                    if let Some(r) = &replica {
                        r.set_state(ReplicaState::Unhealthy);
                    }
                }
                None => events_open = false,
            },
            status = child.child.wait() => {
                let status = match status {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("unknown status ({e})"),
                };
                tracing::error!("the replica process exited: {status}");
                if let Some(r) = &replica {
                    r.set_state(ReplicaState::Unhealthy);
                }
                if !*stop.borrow() {
                    deployment.set_problem(Some(format!("the replica process exited ({status})")));
                }
                return;
            }
            _ = health.tick() => {
                if let Some(r) = &replica {
                    failures = check_health(r, &deployment, failures).await;
                }
            }
            _ = stop.changed() => {
                if let Some(r) = &replica {
                    r.set_state(ReplicaState::Draining);
                }
                child.stop(grace + Duration::from_secs(5)).await;
                return;
            }
        }
    }
}

/// Marks the replica ready once it has told us about its model.
async fn mark_ready(r: &Arc<Replica>, deployment: &Deployment) {
    match r.client().info(pb::InfoRequest {}).await {
        Ok(info) => {
            deployment.set_info(info.into_inner());
            deployment.set_problem(None);
            r.set_state(ReplicaState::Ready);
            tracing::warn!("model {} is ready", deployment.model_id);
        }
        Err(e) => tracing::warn!("the replica is not answering yet: {}", e.message()),
    }
}

/// One health check; returns the count of failures in a row.
async fn check_health(r: &Arc<Replica>, deployment: &Deployment, failures: u32) -> u32 {
    use pb::health_response::State;
    let answer = tokio::time::timeout(HEALTH_PERIOD, r.client().health(pb::HealthRequest {})).await;
    match answer {
        Ok(Ok(h)) => {
            let h = h.into_inner();
            match State::try_from(h.state) {
                Ok(State::Ready) if r.state() != ReplicaState::Ready => {
                    mark_ready(r, deployment).await
                }
                Ok(State::Failed) => r.set_state(ReplicaState::Unhealthy),
                Ok(State::Draining) => r.set_state(ReplicaState::Draining),
                _ => {}
            }
            0
        }
        _ => {
            let failures = failures + 1;
            if failures >= HEALTH_FAILURES && r.state() == ReplicaState::Ready {
                tracing::error!("the replica failed {failures} health checks in a row");
                r.set_state(ReplicaState::Unhealthy);
            }
            failures
        }
    }
}
