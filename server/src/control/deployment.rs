//! One deployment's replicas, reconciled toward its target: starting the
//! missing ones where resources allow, stopping the extra ones, rolling a
//! new code version in one replica at a time (the new one running before
//! an old one stops), retrying failed starts with a backoff and giving up
//! after a few, and summing it all up as a status and a message.

use super::autoscaler::Autoscaler;
use super::replica::{self, Command, HealthTimings, Launch};
use super::status::{DeploymentDetails, DeploymentStatus, ReplicaDetails, ReplicaStatus};
use super::Shared;
use crate::config::build::{DeploymentKind, DeploymentPlan};
use crate::config::schema::{Encoding, LoggingConfig};
use crate::resources::{
    replica_memory, Allocation, MemoryAsk, ReplicaMemory, ResourceRequest, Shortage,
};
use llm_serve_router as router;
use rand::distr::{Alphanumeric, SampleString};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Failed starts in a row after which a deployment stops trying until it
/// is deployed again.
pub const MAX_START_FAILURES: u32 = 3;
/// How often the slow-start warning repeats.
const SLOW_START: Duration = Duration::from_secs(30);

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A replica as the controller tracks it.
pub struct ReplicaRecord {
    pub id: String,
    pub actor_id: String,
    pub version: String,
    pub state: ReplicaStatus,
    pub pid: Option<u32>,
    pub start_time_s: f64,
    started: Instant,
    pub log_file: PathBuf,
    commands: mpsc::UnboundedSender<Command>,
    pub router: Option<Arc<router::Replica>>,
    pub allocation: Allocation,
    /// Set once it was told to stop (or died): no longer counted.
    pub stopping: bool,
}

impl ReplicaRecord {
    fn stop(&mut self, wait_loop: Duration, timeout: Duration) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.state = ReplicaStatus::Stopping;
        if let Some(r) = &self.router {
            r.set_state(router::ReplicaState::Draining);
        }
        let _ = self.commands.send(Command::Stop { wait_loop, timeout });
    }
}

pub struct DeploymentState {
    pub app: String,
    pub name: String,
    pub plan: DeploymentPlan,
    version: String,
    pub replicas: Vec<ReplicaRecord>,
    pub status: DeploymentStatus,
    pub message: String,
    start_failures: u32,
    last_start_error: Option<String>,
    retry_at: Option<Instant>,
    /// Why replicas died since the deployment was last healthy.
    failed_replicas: Option<String>,
    /// Replicas that cannot be placed, why, and what is free.
    pending: Option<(u32, String, String)>,
    /// Since when replicas have been waiting to be placed.
    pending_since: Option<Instant>,
    /// The router's view of this deployment (engine deployments only).
    pub router: Option<Arc<router::Deployment>>,
    pub deleting: bool,
    next_slow_warning: Instant,
    /// New replicas restore a recovered controller's state.
    recovering: bool,
    router_ids: Vec<String>,
    /// Replicas wanted: `num_replicas`, or the autoscaler's choice.
    target: u32,
    autoscaler: Option<Autoscaler>,
    /// Presented by the router on every call to this deployment's
    /// replicas, which refuse calls without it.
    secret: String,
    /// What one replica reserves (for placing and for messages).
    request: ResourceRequest,
    /// One replica's memory share and KV budget, worked out once per plan
    /// (it reads the model's files), or why the plan cannot have one.
    memory: Option<Result<ReplicaMemory, String>>,
}

/// Why a replica was not started.
enum NotStarted {
    /// It waits for resources to free up.
    Short(Shortage),
    /// It can never start as configured.
    Invalid(String),
}

impl DeploymentState {
    pub fn new(
        app: &str,
        plan: DeploymentPlan,
        router: Option<Arc<router::Deployment>>,
        recovering: bool,
    ) -> Self {
        let version = plan.code_version();
        tracing::info!(
            "Deploying new version of deployment {} in application '{app}'. Setting initial target number of replicas to {}.",
            plan.name(),
            plan.config.initial_replicas()
        );
        let target = plan.config.initial_replicas();
        let autoscaler = plan
            .config
            .autoscaling_config
            .as_ref()
            .map(|_| Autoscaler::new());
        let d = DeploymentState {
            app: app.to_string(),
            name: plan.name().to_string(),
            plan,
            version,
            replicas: Vec::new(),
            status: DeploymentStatus::Updating,
            message: String::new(),
            start_failures: 0,
            last_start_error: None,
            retry_at: None,
            failed_replicas: None,
            pending: None,
            pending_since: None,
            router,
            deleting: false,
            next_slow_warning: Instant::now() + SLOW_START,
            recovering,
            router_ids: Vec::new(),
            target,
            autoscaler,
            secret: Alphanumeric.sample_string(&mut rand::rng(), 32),
            request: ResourceRequest::default(),
            memory: None,
        };
        let mut d = d;
        d.request = resource_request(&d.plan, 0.0);
        d.apply_limits();
        if let Some(r) = &d.router {
            // Its replicas are on their way from now on.
            r.set_expecting(d.target() > 0);
        }
        d
    }

    fn is_router(&self) -> bool {
        matches!(self.plan.kind, DeploymentKind::Router { .. })
    }

    fn target(&self) -> u32 {
        if self.deleting {
            0
        } else if self.is_router() {
            1
        } else {
            self.target
        }
    }

    fn graceful(&self) -> (Duration, Duration) {
        let c = &self.plan.config;
        (
            crate::config::duration(c.graceful_shutdown_wait_loop_s),
            crate::config::duration(c.graceful_shutdown_timeout_s),
        )
    }

    fn health(&self) -> HealthTimings {
        let c = &self.plan.config;
        HealthTimings {
            period: crate::config::duration(c.health_check_period_s),
            timeout: crate::config::duration(c.health_check_timeout_s),
        }
    }

    /// Tells the router the deployment's limits and its LoRA adapters.
    fn apply_limits(&self) {
        if let Some(r) = &self.router {
            r.adapters.set_routes(self.plan.model().and_then(|m| {
                m.lora.as_ref().map(|l| router::lora::LoraRoutes {
                    loading_path: l.dynamic_lora_loading_path.clone(),
                    modules: l.lora_modules.clone(),
                })
            }));
            let c = &self.plan.config;
            r.set_limits(router::replicas::Limits {
                max_ongoing_requests: c.max_ongoing_requests,
                max_queued_requests: c.max_queued_requests,
                // Scaled to zero, requests wait for the replica they wake.
                wait_for_replicas: c
                    .autoscaling_config
                    .as_ref()
                    .is_some_and(|a| a.min_replicas == 0),
            });
        }
    }

    /// Takes a new plan of the same deployment. A new code version rolls
    /// the replicas; anything else is applied to the running ones.
    pub fn update(&mut self, plan: DeploymentPlan) {
        let version = plan.code_version();
        let old = std::mem::replace(&mut self.plan, plan);
        self.memory = None;
        self.deleting = false;
        self.start_failures = 0;
        self.last_start_error = None;
        self.retry_at = None;
        if version != self.version {
            tracing::info!(
                "Deploying new version of deployment {} in application '{}'. Setting initial target number of replicas to {}.",
                self.name,
                self.app,
                self.plan.config.initial_replicas()
            );
            self.version = version;
            self.status = DeploymentStatus::Updating;
        }
        let new = &self.plan.config;
        // A fixed count is taken as is; with autoscaling the current
        // target stays, within the new bounds.
        let target = match (&new.autoscaling_config, new.num_replicas) {
            (Some(a), _) => self
                .target
                .clamp(a.min_replicas, a.max_replicas.max(a.min_replicas)),
            (None, Some(n)) => n,
            (None, None) => 1,
        };
        if new.autoscaling_config.is_none() {
            self.autoscaler = None;
        } else if self.autoscaler.is_none() {
            self.autoscaler = Some(Autoscaler::new());
        }
        if target != self.target {
            tracing::info!(
                "Updating target number of replicas of deployment {} in application '{}' from {} to {target}.",
                self.name,
                self.app,
                self.target
            );
            self.target = target;
            self.status = DeploymentStatus::Updating;
        }
        self.apply_limits();
        let health = self.health();
        let reconfigure = new.user_config != old.config.user_config;
        for r in self.replicas.iter_mut().filter(|r| !r.stopping) {
            let _ = r.commands.send(Command::Health(health));
            if reconfigure {
                let _ = r
                    .commands
                    .send(Command::Reconfigure(self.plan.config.user_config.clone()));
                if r.version == self.version && r.state == ReplicaStatus::Running {
                    r.state = ReplicaStatus::Updating;
                }
            }
        }
    }

    /// Serves through `router` from now on (the same replicas, new
    /// labels).
    pub fn set_router(&mut self, router: Option<Arc<router::Deployment>>) {
        if let (Some(old), Some(new)) = (&self.router, &router) {
            if let Some(info) = old.info() {
                new.set_info(info);
            }
        }
        self.router = router;
        self.router_ids.clear();
        self.apply_limits();
        if let Some(r) = &self.router {
            r.set_expecting(self.target() > 0 && !self.blocked());
        }
    }

    /// Stops every replica; the deployment is gone once they are.
    pub fn delete(&mut self) {
        self.deleting = true;
    }

    pub fn is_gone(&self) -> bool {
        self.deleting && self.replicas.is_empty()
    }

    /// Whether starts have failed too often to try again.
    pub fn blocked(&self) -> bool {
        self.start_failures >= MAX_START_FAILURES
    }

    pub fn replica_mut(&mut self, id: &str) -> Option<&mut ReplicaRecord> {
        self.replicas.iter_mut().find(|r| r.id == id)
    }

    /// A replica's task reported that it could not start.
    pub fn start_failed(&mut self, id: &str, message: &str) {
        tracing::error!(
            "Replica {id} of deployment {} in application '{}' failed to start: {message}",
            self.name,
            self.app
        );
        let current = self
            .replica_mut(id)
            .map(|r| {
                r.stopping = true;
                r.state = ReplicaStatus::Stopping;
                r.version.clone()
            })
            .is_some_and(|v| v == self.version);
        if current && !self.deleting {
            self.start_failures += 1;
            self.last_start_error = Some(message.to_string());
            let backoff = Duration::from_secs(1 << self.start_failures.min(5).saturating_sub(1));
            self.retry_at = Some(Instant::now() + backoff);
        }
    }

    /// A running replica died or failed its health checks.
    pub fn died(&mut self, id: &str, message: &str, shared: &Shared) {
        tracing::error!(
            "Replica {id} of deployment {} in application '{}' is unhealthy: {message}. Replacing it.",
            self.name,
            self.app
        );
        if let Some(r) = self.replica_mut(id) {
            r.stopping = true;
            r.state = ReplicaStatus::Stopping;
            if let Some(rr) = &r.router {
                rr.set_state(router::ReplicaState::Unhealthy);
            }
        }
        shared
            .metrics
            .serve
            .deployment_replica_healthy
            .with_label_values(&[&self.name, id, &self.app])
            .set(0.0);
        if !self.deleting {
            self.failed_replicas = Some(format!("Replica {id} became unhealthy: {message}"));
        }
    }

    /// A replica loaded its model and is ready.
    pub fn running(&mut self, id: &str, shared: &Shared) {
        let version = self.version.clone();
        let Some(r) = self.replica_mut(id) else {
            return;
        };
        if r.stopping {
            return;
        }
        r.state = ReplicaStatus::Running;
        let current = r.version == version;
        shared
            .metrics
            .serve
            .deployment_replica_healthy
            .with_label_values(&[&self.name, id, &self.app])
            .set(1.0);
        if current {
            self.start_failures = 0;
            self.last_start_error = None;
            self.retry_at = None;
        }
    }

    /// A replica's process is gone: its resources are free again.
    pub fn stopped(&mut self, id: &str, shared: &mut Shared) {
        if let Some(pos) = self.replicas.iter().position(|r| r.id == id) {
            let r = self.replicas.remove(pos);
            shared.allocator.release(&r.allocation);
            shared
                .metrics
                .serve
                .forget_replica(&self.name, &r.id, &self.app);
            tracing::info!("Replica {} is stopped.", r.id);
        }
    }

    /// One step toward the target.
    pub fn reconcile(&mut self, shared: &mut Shared) {
        if self.is_router() {
            self.status = DeploymentStatus::Healthy;
            self.message = router_message(&self.plan);
            return;
        }
        self.autoscale();
        let (wait_loop, timeout) = self.graceful();
        let target = self.target();
        let version = self.version.clone();
        // Replicas of an old version that are not up yet are of no use.
        for r in self.replicas.iter_mut() {
            if !r.stopping && r.version != version && r.state.is_starting() {
                r.stop(wait_loop, Duration::ZERO);
            }
        }
        let counts = Counts::of(&self.replicas, &version);
        // Too many of the current version: the ones starting go first,
        // then the newest.
        let mut excess = (counts.serving + counts.starting).saturating_sub(target);
        if excess > 0 {
            tracing::info!(
                "Removing {excess} replicas from deployment '{}' in application '{}'.",
                self.name,
                self.app
            );
        }
        for starting_first in [true, false] {
            for r in self.replicas.iter_mut().rev() {
                if excess == 0 {
                    break;
                }
                if !r.stopping && r.version == version && r.state.is_starting() == starting_first {
                    r.stop(wait_loop, timeout);
                    excess -= 1;
                }
            }
        }
        let counts = Counts::of(&self.replicas, &version);
        // Old replicas leave as new ones take over.
        let mut retire = (counts.serving + counts.old_serving)
            .saturating_sub(target)
            .min(counts.old_serving);
        if retire > 0 {
            tracing::info!(
                "Stopping {retire} replicas of deployment '{}' in application '{}' with outdated versions.",
                self.name,
                self.app
            );
        }
        for r in self.replicas.iter_mut() {
            if retire == 0 {
                break;
            }
            if !r.stopping && r.version != version {
                r.stop(wait_loop, timeout);
                retire -= 1;
            }
        }
        let counts = Counts::of(&self.replicas, &version);
        self.start_missing(shared, target, &counts);
        self.sync_router();
        self.summarize(target);
        self.warn_slow_starts();
    }

    /// Lets the autoscaler move the target, from the requests in flight
    /// at this deployment's replicas and queued for them.
    fn autoscale(&mut self) {
        let (Some(scaler), Some(config), Some(router)) = (
            self.autoscaler.as_mut(),
            self.plan.config.autoscaling_config.as_ref(),
            self.router.as_ref(),
        ) else {
            return;
        };
        if self.deleting {
            return;
        }
        let now = Instant::now();
        let ongoing: u32 =
            router.replicas().iter().map(|r| r.ongoing()).sum::<u32>() + router.queued();
        scaler.observe(
            config,
            now,
            f64::from(ongoing),
            self.target == 0 && ongoing > 0,
        );
        let running = self
            .replicas
            .iter()
            .filter(|r| !r.stopping && r.state.is_serving())
            .count() as u32;
        let decided = scaler.decide(config, now, self.target, running);
        if decided != self.target {
            tracing::info!(
                "{} deployment {} in application '{}' from {} to {decided} replicas. Current ongoing requests: {:.2}, current running replicas: {running}.",
                if decided > self.target { "Upscaling" } else { "Downscaling" },
                self.name,
                self.app,
                self.target,
                scaler.average().unwrap_or(0.0)
            );
            self.target = decided;
        }
    }

    fn start_missing(&mut self, shared: &mut Shared, target: u32, counts: &Counts) {
        self.pending = None;
        let missing = target.saturating_sub(counts.serving + counts.starting);
        if missing == 0 || self.blocked() {
            return;
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let rolling = counts.old_serving > 0;
        if let Some(cap) = self.plan.config.max_replicas_per_node {
            // One node: the cap is the most replicas this deployment gets.
            let live = self.replicas.iter().filter(|r| !r.stopping).count() as u32;
            if live >= cap {
                self.pending = Some((
                    missing,
                    format!("max_replicas_per_node is {cap} and this is the only node"),
                    available_text(&shared.allocator.available()),
                ));
                self.make_room(rolling, counts);
                return;
            }
        }
        let batch = if rolling {
            (target / 5).max(1).saturating_sub(counts.starting)
        } else {
            missing
        };
        let batch = batch.min(missing);
        let mut started = 0;
        while started < batch {
            match self.start_replica(shared) {
                Ok(()) => started += 1,
                Err(NotStarted::Short(shortage)) => {
                    let free = available_text(&shared.allocator.available());
                    let pending = (missing - started, shortage.to_string(), free);
                    if self.pending_since.is_none() {
                        self.pending_since = Some(Instant::now());
                        tracing::warn!("{}", self.cannot_place_message(&pending));
                    }
                    self.pending = Some(pending);
                    self.make_room(rolling, counts);
                    break;
                }
                Err(NotStarted::Invalid(message)) => {
                    tracing::error!(
                        "Deployment {} in application '{}' cannot start a replica: {message}",
                        self.name,
                        self.app
                    );
                    self.start_failures = MAX_START_FAILURES;
                    self.last_start_error = Some(message);
                    break;
                }
            }
        }
        if started > 0 {
            tracing::info!(
                "Adding {started} replica{} to deployment {} in application '{}'.",
                if started == 1 { "" } else { "s" },
                self.name,
                self.app
            );
        }
    }

    /// During a rolling update with no room for one more replica, retires
    /// an old one to make room, as long as another keeps serving.
    fn make_room(&mut self, rolling: bool, counts: &Counts) {
        let old_stopping = self
            .replicas
            .iter()
            .any(|r| r.stopping && r.version != self.version);
        if !rolling || counts.old_serving + counts.serving < 2 || old_stopping {
            return;
        }
        let (wait_loop, timeout) = self.graceful();
        let version = self.version.clone();
        if let Some(r) = self
            .replicas
            .iter_mut()
            .find(|r| !r.stopping && r.version != version)
        {
            tracing::info!(
                "Stopping replica {} of deployment '{}' in application '{}' (outdated version) to make room for a new one.",
                r.id,
                self.name,
                self.app
            );
            r.stop(wait_loop, timeout);
        }
    }

    fn logging(&self, shared: &Shared) -> LoggingConfig {
        self.plan
            .config
            .logging_config
            .clone()
            .unwrap_or_else(|| shared.global_logging.clone())
    }

    fn start_replica(&mut self, shared: &mut Shared) -> Result<(), NotStarted> {
        let memory = self
            .memory
            .get_or_insert_with(|| plan_memory(&self.plan, shared))
            .clone()
            .map_err(NotStarted::Invalid)?;
        self.request = resource_request(&self.plan, memory.share_bytes as f64);
        let DeploymentKind::LlmServer(spec) = &self.plan.kind else {
            return Ok(());
        };
        let options = &self.plan.config.ray_actor_options;
        let allocation = shared
            .allocator
            .allocate(&self.request)
            .map_err(NotStarted::Short)?;
        self.pending_since = None;
        let suffix = Alphanumeric.sample_string(&mut rand::rng(), 6);
        let id = format!("{}#{}#{suffix}", self.app, self.name);
        let logging = self.logging(shared);
        let logs_dir = logging
            .logs_dir
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or_else(|| shared.logs_dir.clone());
        if let Err(e) = std::fs::create_dir_all(&logs_dir) {
            tracing::warn!(
                "cannot create the logs directory {}: {e}",
                logs_dir.display()
            );
        }
        let log_file = logs_dir.join(sanitize(&format!(
            "replica_{}_{}_{suffix}.log",
            self.app, self.name
        )));
        let threads = allocation.threads();
        // The user's variables first: llm-serve's own come after and win.
        let mut env: Vec<(String, String)> = spec
            .env_vars
            .iter()
            .chain(&runtime_env_vars(&options.runtime_env))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.extend([
            (
                "CUDA_VISIBLE_DEVICES".to_string(),
                allocation.cuda_visible_devices(),
            ),
            ("OMP_NUM_THREADS".into(), threads.to_string()),
            (
                crate::logs::ENCODING_ENV.into(),
                match logging.encoding {
                    Encoding::Text => "TEXT".into(),
                    Encoding::Json => "JSON".into(),
                },
            ),
            (
                crate::logs::LEVEL_ENV.into(),
                crate::logs::level_directive(logging.log_level).into(),
            ),
            (
                crate::logs::ACCESS_LOG_ENV.into(),
                logging.enable_access_log.to_string(),
            ),
            (crate::logs::APPLICATION_ENV.into(), self.app.clone()),
            (crate::logs::DEPLOYMENT_ENV.into(), self.name.clone()),
        ]);
        if let Some(f) = allocation.gpu_memory_fraction() {
            env.push((
                crate::replica::GPU_MEMORY_FRACTION_ENV.into(),
                f.to_string(),
            ));
        }
        if allocation.memory_bytes > 0.0 {
            env.push((
                llm_serve_engine::MEMORY_LIMIT_ENV.into(),
                format!("{}", allocation.memory_bytes as u64),
            ));
        }
        if let Some(t) = &options.accelerator_type {
            env.push((crate::replica::ACCELERATOR_TYPE_ENV.into(), t.clone()));
        }
        // The KV cache is sized from the share reserved for it, not from
        // whatever memory happens to be free when the replica starts.
        let mut engine_kwargs = spec.engine_kwargs.clone();
        engine_kwargs.insert(
            "kv_cache_memory_bytes".into(),
            Value::from(memory.kv_cache_bytes),
        );
        let launch = Launch {
            replica_id: id.clone(),
            model_source: spec.model_source.clone(),
            engine_kwargs: Value::Object(engine_kwargs),
            lora: spec
                .lora
                .as_ref()
                .and_then(|l| serde_json::to_value(l).ok()),
            threads,
            env,
            log_file: log_file.clone(),
            echo_prefix: shared
                .echo_logs
                .then(|| format!("ServeReplica:{}:{}", self.app, self.name)),
            health: self.health(),
            graceful_shutdown_timeout: self.graceful().1,
            user_config: self.plan.config.user_config.clone(),
            secret: self.secret.clone(),
            max_message_bytes: shared.router_config.max_replica_message_bytes(),
        };
        let commands = replica::start(launch, shared.reports.clone());
        shared
            .metrics
            .serve
            .deployment_replica_starts
            .with_label_values(&[&self.name, &id, &self.app])
            .inc();
        shared
            .metrics
            .serve
            .deployment_replica_healthy
            .with_label_values(&[&self.name, &id, &self.app])
            .set(0.0);
        shared
            .owners
            .insert(id.clone(), (self.app.clone(), self.name.clone()));
        self.replicas.push(ReplicaRecord {
            id,
            actor_id: uuid::Uuid::new_v4().simple().to_string(),
            version: self.version.clone(),
            state: if self.recovering {
                ReplicaStatus::Recovering
            } else {
                ReplicaStatus::Starting
            },
            pid: None,
            start_time_s: unix_now(),
            started: Instant::now(),
            log_file,
            commands,
            router: None,
            allocation,
            stopping: false,
        });
        Ok(())
    }

    /// Tells the router which replicas exist and which take requests.
    fn sync_router(&mut self) {
        let Some(dep) = &self.router else {
            return;
        };
        let mut changed = false;
        for r in &self.replicas {
            let Some(rr) = &r.router else { continue };
            let want = match r.state {
                s if s.is_serving() => router::ReplicaState::Ready,
                s if s.is_starting() => router::ReplicaState::Starting,
                _ if rr.state() == router::ReplicaState::Unhealthy => {
                    router::ReplicaState::Unhealthy
                }
                _ => router::ReplicaState::Draining,
            };
            if rr.state() != want {
                rr.set_state(want);
                changed = true;
            }
        }
        let ids: Vec<String> = self
            .replicas
            .iter()
            .filter(|r| r.router.is_some())
            .map(|r| r.id.clone())
            .collect();
        if ids != self.router_ids {
            dep.set_replicas(
                self.replicas
                    .iter()
                    .filter_map(|r| r.router.clone())
                    .collect(),
            );
            self.router_ids = ids;
        } else if changed {
            dep.replicas_changed();
        }
        // Requests wait for replicas on their way instead of a 503.
        dep.set_expecting(self.target() > 0 && !self.blocked());
        let serving = self.replicas.iter().any(|r| r.state.is_serving());
        dep.set_problem(match (&self.last_start_error, serving) {
            (Some(e), false) if self.blocked() => Some(format!(
                "the deployment failed to start {} times in a row: {e}",
                self.start_failures
            )),
            (Some(e), false) => Some(format!("a replica failed to start (retrying): {e}")),
            _ => None,
        });
    }

    fn summarize(&mut self, target: u32) {
        let counts = Counts::of(&self.replicas, &self.version);
        let updating = self
            .replicas
            .iter()
            .any(|r| r.state == ReplicaStatus::Updating);
        let (status, message) = if self.blocked() {
            (
                DeploymentStatus::Unhealthy,
                format!(
                    "The deployment failed to start {} times in a row. The last error: {}",
                    self.start_failures,
                    self.last_start_error.as_deref().unwrap_or("unknown")
                ),
            )
        } else if counts.serving >= target
            && counts.starting == 0
            && counts.old_serving == 0
            && !updating
        {
            self.failed_replicas = None;
            self.recovering = false;
            (DeploymentStatus::Healthy, String::new())
        } else if let Some(m) = &self.failed_replicas {
            (
                DeploymentStatus::Unhealthy,
                format!("{m}; a replacement is starting."),
            )
        } else if let Some(pending) = &self.pending {
            (
                DeploymentStatus::Updating,
                self.cannot_place_message(pending),
            )
        } else {
            (DeploymentStatus::Updating, String::new())
        };
        if status != self.status {
            tracing::info!(
                "Deployment {} in application '{}' is {status}{}",
                self.name,
                self.app,
                if message.is_empty() {
                    String::new()
                } else {
                    format!(": {message}")
                }
            );
        }
        self.status = status;
        self.message = message;
    }

    fn cannot_place_message(&self, (n, shortage, free): &(u32, String, String)) -> String {
        format!(
            "Deployment '{}' in application '{}' has {n} replica{} that cannot be placed: {shortage}. Resources required for each replica: {}, resources available: {free}.",
            self.name,
            self.app,
            if *n == 1 { "" } else { "s" },
            self.request.describe()
        )
    }

    fn warn_slow_starts(&mut self) {
        let now = Instant::now();
        if self.pending.is_none() {
            self.pending_since = None;
        }
        if now < self.next_slow_warning {
            return;
        }
        let mut warned = false;
        if let (Some(since), Some((n, _, free))) = (self.pending_since, &self.pending) {
            if now.duration_since(since) > SLOW_START {
                warned = true;
                tracing::warn!(
                    "Deployment '{}' in application '{}' has {n} replicas that have taken more than 30s to be scheduled. This may be due to waiting for resources held by other replicas to free up. Resources required for each replica: {}, resources available: {free}. Use `llm-serve status` for more details.",
                    self.name,
                    self.app,
                    self.request.describe()
                );
            }
        }
        let slow = self
            .replicas
            .iter()
            .filter(|r| r.state.is_starting() && now.duration_since(r.started) > SLOW_START)
            .count();
        if slow > 0 {
            tracing::warn!(
                "Deployment '{}' in application '{}' has {slow} replicas that have taken more than 30s to initialize. This may be caused by a slow model load (a large model, or a download) or reconfigure.",
                self.name,
                self.app
            );
            warned = true;
        }
        if warned {
            self.next_slow_warning = now + SLOW_START;
        }
    }

    /// What `GET /api/serve/applications/` shows of the deployment.
    pub fn details(&self, shared: &Shared) -> DeploymentDetails {
        let replicas = if self.is_router() {
            vec![ReplicaDetails {
                actor: shared.proxy_actor(),
                replica_id: format!("{}#{}#proxy", self.app, self.name),
                state: ReplicaStatus::Running,
                start_time_s: shared.started_s,
            }]
        } else {
            self.replicas
                .iter()
                .map(|r| ReplicaDetails {
                    actor: shared.actor(
                        &r.actor_id,
                        format!("SERVE_REPLICA::{}", r.id),
                        &r.log_file,
                        r.pid,
                    ),
                    replica_id: r.id.clone(),
                    state: r.state,
                    start_time_s: r.start_time_s,
                })
                .collect()
        };
        DeploymentDetails {
            name: self.name.clone(),
            status: self.status,
            message: self.message.clone(),
            deployment_config: self.plan.config.clone(),
            target_num_replicas: self.target(),
            replicas,
        }
    }
}

/// Live (not stopping) replicas by kind.
struct Counts {
    serving: u32,
    starting: u32,
    old_serving: u32,
}

impl Counts {
    fn of(replicas: &[ReplicaRecord], version: &str) -> Self {
        let mut c = Counts {
            serving: 0,
            starting: 0,
            old_serving: 0,
        };
        for r in replicas.iter().filter(|r| !r.stopping) {
            match (r.version == version, r.state.is_serving()) {
                (true, true) => c.serving += 1,
                (true, false) => c.starting += 1,
                (false, true) => c.old_serving += 1,
                (false, false) => {}
            }
        }
        c
    }
}

/// What one replica of `plan` reserves, with `memory_bytes` of the
/// node's memory.
fn resource_request(plan: &DeploymentPlan, memory_bytes: f64) -> ResourceRequest {
    let o = &plan.config.ray_actor_options;
    ResourceRequest {
        num_cpus: o.num_cpus,
        num_gpus: o.num_gpus,
        memory_bytes,
        resources: o.resources.clone(),
        accelerator_type: o.accelerator_type.clone(),
    }
}

/// The share of the node's memory one replica of `plan` reserves and its
/// KV budget, from the model's files and its settings.
fn plan_memory(plan: &DeploymentPlan, shared: &Shared) -> Result<ReplicaMemory, String> {
    let DeploymentKind::LlmServer(spec) = &plan.kind else {
        return Ok(ReplicaMemory {
            share_bytes: 0,
            kv_cache_bytes: 0,
        });
    };
    let engine =
        llm_serve_engine::EngineConfig::from_kwargs(&Value::Object(spec.engine_kwargs.clone()))
            .map_err(|e| e.to_string())?;
    replica_memory(&MemoryAsk {
        actor_memory_bytes: plan.config.ray_actor_options.memory,
        weights_bytes: llm_serve_models::local_weights_bytes(&spec.model_source).unwrap_or(0),
        kv_cache_memory_bytes: engine.kv_cache_memory_bytes.map(|b| b as u64),
        kv_cache_memory_fraction: engine.kv_cache_memory_fraction,
        node_memory_bytes: shared.allocator.node_memory_bytes(),
    })
}

/// The variables of an actor's `runtime_env` (checked when the config was).
fn runtime_env_vars(
    runtime_env: &serde_json::Map<String, Value>,
) -> std::collections::BTreeMap<String, String> {
    crate::config::build::runtime_env_vars(runtime_env, "ray_actor_options.runtime_env")
        .unwrap_or_default()
}

fn available_text(free: &std::collections::BTreeMap<String, f64>) -> String {
    let parts: Vec<String> = free.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
    format!("{{{}}}", parts.join(", "))
}

/// The router deployment lives in the proxy; say so when a config asks
/// it for replicas it will not get.
fn router_message(plan: &DeploymentPlan) -> String {
    match (plan.config.num_replicas, &plan.config.autoscaling_config) {
        (Some(1), None) => String::new(),
        _ => "LLMRouter runs inside the HTTP proxy (one per node); its num_replicas and autoscaling_config do not apply.".into(),
    }
}

/// A file name from `name`: anything unusual becomes `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-#:".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}
