//! The controller: holds the goal (the last deploy config) and reconciles
//! applications → deployments → replicas toward it every 100 ms, starting,
//! health-checking, replacing, updating and stopping replica processes on
//! the node's resources, keeping the proxy's routes and each
//! application's router in step, and checkpointing the goal.
//!
//! It runs as one task that owns all of its state; the admin API and the
//! CLI talk to it through a `ControllerHandle`.

mod application;
mod autoscaler;
pub mod checkpoint;
mod deployment;
mod replica;
pub mod status;

use crate::config::schema::{GrpcOptions, HttpOptions, LoggingConfig, ProxyLocation};
use crate::config::Checked;
use crate::proxy::Routes;
use crate::resources::Allocator;
use application::ApplicationState;
use checkpoint::{Checkpoint, Goal};
use deployment::unix_now;
use llm_serve_router::{Metrics, RouterConfig};
use replica::Report;
use serde_json::Value;
use status::{ActorDetails, InstanceDetails, ProxyDetails, ProxyStatus};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How often the controller reconciles (Ray's `RAY_SERVE_CONTROL_LOOP_INTERVAL_S`).
const CONTROL_LOOP: Duration = Duration::from_millis(100);

/// What the controller is set up with.
pub struct ControllerOptions {
    pub node_id: String,
    pub node_ip: String,
    pub logs_dir: PathBuf,
    pub controller_log: PathBuf,
    pub proxy_log: PathBuf,
    /// Copy replica log lines to stderr (`run` in the foreground).
    pub echo_logs: bool,
    pub http_options: HttpOptions,
    pub grpc_options: GrpcOptions,
    pub proxy_location: ProxyLocation,
    pub router_config: RouterConfig,
    /// Where the goal is kept across restarts (`start`'s state dir).
    pub checkpoint: Option<Checkpoint>,
}

/// What deployments, applications and replicas share: resources, metrics,
/// the report channel, and where things are.
pub struct Shared {
    pub allocator: Allocator,
    pub metrics: Arc<Metrics>,
    pub reports: mpsc::UnboundedSender<(String, Report)>,
    /// Replica id → (application, deployment).
    pub owners: HashMap<String, (String, String)>,
    pub node_id: String,
    pub node_ip: String,
    pub logs_dir: PathBuf,
    pub echo_logs: bool,
    pub global_logging: LoggingConfig,
    pub router_config: RouterConfig,
    pub started_s: f64,
    pub proxy_actor_id: String,
    proxy_log: PathBuf,
}

impl Shared {
    /// A process of this node, as Serve describes an actor.
    pub fn actor(
        &self,
        actor_id: &str,
        actor_name: String,
        log_file: &std::path::Path,
        pid: Option<u32>,
    ) -> ActorDetails {
        ActorDetails {
            node_id: self.node_id.clone(),
            node_ip: self.node_ip.clone(),
            actor_id: actor_id.to_string(),
            actor_name,
            worker_id: None,
            log_file_path: log_file.display().to_string(),
            pid,
        }
    }

    /// The proxy, as an actor.
    pub fn proxy_actor(&self) -> ActorDetails {
        self.actor(
            &self.proxy_actor_id,
            format!("SERVE_CONTROLLER_ACTOR:SERVE_PROXY_ACTOR-{}", self.node_id),
            &self.proxy_log,
            Some(std::process::id()),
        )
    }
}

enum Request {
    Deploy(Box<Checked>, oneshot::Sender<()>),
    DeleteAll(oneshot::Sender<()>),
    Details(oneshot::Sender<InstanceDetails>),
    /// Stop every replica, then end the controller.
    Shutdown(oneshot::Sender<()>),
}

/// How the rest of the daemon talks to the controller.
#[derive(Clone)]
pub struct ControllerHandle {
    tx: mpsc::UnboundedSender<Request>,
}

impl ControllerHandle {
    /// Makes `checked` the goal (the apply is asynchronous).
    pub async fn deploy(&self, checked: Checked) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::Deploy(Box::new(checked), tx)).is_ok() {
            let _ = rx.await;
        }
    }

    pub async fn delete_all(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::DeleteAll(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    pub async fn details(&self) -> Option<InstanceDetails> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Request::Details(tx)).ok()?;
        rx.await.ok()
    }

    /// Stops every replica and the controller; returns when they are.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

pub struct Controller {
    shared: Shared,
    apps: BTreeMap<String, ApplicationState>,
    goal: Goal,
    options: ControllerOptions,
    routes: Arc<Routes>,
    actor_id: String,
    shutdown: Option<oneshot::Sender<()>>,
    last_pids: Vec<(String, u32)>,
}

impl Controller {
    /// Starts the controller task. With a checkpoint, replicas an earlier
    /// daemon left are stopped and its goal is deployed again.
    pub fn start(
        options: ControllerOptions,
        allocator: Allocator,
        metrics: Arc<Metrics>,
        routes: Arc<Routes>,
    ) -> ControllerHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let shared = Shared {
            allocator,
            metrics,
            reports: reports_tx,
            owners: HashMap::new(),
            node_id: options.node_id.clone(),
            node_ip: options.node_ip.clone(),
            logs_dir: options.logs_dir.clone(),
            echo_logs: options.echo_logs,
            global_logging: LoggingConfig::default(),
            router_config: options.router_config.clone(),
            started_s: unix_now(),
            proxy_actor_id: uuid::Uuid::new_v4().simple().to_string(),
            proxy_log: options.proxy_log.clone(),
        };
        let mut controller = Controller {
            shared,
            apps: BTreeMap::new(),
            goal: Goal::default(),
            options,
            routes,
            actor_id: uuid::Uuid::new_v4().simple().to_string(),
            shutdown: None,
            last_pids: Vec::new(),
        };
        controller.recover();
        tokio::spawn(controller.run(rx, reports_rx));
        ControllerHandle { tx }
    }

    fn recover(&mut self) {
        let Some(cp) = self.options.checkpoint.clone() else {
            return;
        };
        let orphans = cp.stop_orphans();
        if orphans > 0 {
            tracing::warn!("stopped {orphans} replica processes left by an earlier daemon");
        }
        let Some(goal) = cp.load_goal() else {
            return;
        };
        let Some(config) = goal.config.clone() else {
            return;
        };
        match crate::config::check(config, None) {
            Ok(checked) => {
                tracing::info!(
                    "Recovering {} application(s) from the checkpoint.",
                    checked.apps.len()
                );
                self.apply(checked, Some(&goal.deployed_s), true);
            }
            Err(e) => {
                tracing::error!("the checkpointed config no longer checks ({e}); not recovering it")
            }
        }
    }

    async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<Request>,
        mut reports: mpsc::UnboundedReceiver<(String, Report)>,
    ) {
        let mut tick = tokio::time::interval(CONTROL_LOOP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = requests.recv() => match r {
                    Some(r) => self.handle(r),
                    None if self.shutdown.is_none() => {
                        // The daemon is gone: stop everything.
                        let (tx, _) = oneshot::channel();
                        self.handle(Request::Shutdown(tx));
                    }
                    None => {}
                },
                Some((id, report)) = reports.recv() => self.on_report(&id, report),
                _ = tick.tick() => {
                    self.reconcile();
                    if self.shutdown.is_some() && self.apps.is_empty() {
                        tracing::info!("The controller stopped: every replica is stopped.");
                        if let Some(tx) = self.shutdown.take() {
                            let _ = tx.send(());
                        }
                        return;
                    }
                }
            }
        }
    }

    fn handle(&mut self, r: Request) {
        match r {
            Request::Deploy(checked, reply) => {
                if self.shutdown.is_some() {
                    tracing::warn!("ignoring a deploy: shutting down");
                } else {
                    self.apply(*checked, None, false);
                }
                let _ = reply.send(());
            }
            Request::DeleteAll(reply) => {
                self.delete_all();
                let _ = reply.send(());
            }
            Request::Details(reply) => {
                let _ = reply.send(self.details());
            }
            Request::Shutdown(reply) => {
                tracing::info!("Shutting down: stopping every replica.");
                // The goal stays checkpointed: a daemon stopped by a signal
                // brings its applications back when started again.
                self.stop_apps(|_| true);
                self.shutdown = Some(reply);
            }
        }
    }

    /// Deletes every application: they are gone from the goal too.
    fn delete_all(&mut self) {
        self.stop_apps(|_| true);
        self.goal = Goal::default();
        self.save_goal();
    }

    /// Takes the applications `which` selects off their routes and stops
    /// them.
    fn stop_apps(&mut self, which: impl Fn(&ApplicationState) -> bool) {
        for app in self.apps.values_mut() {
            if !app.deleting && which(app) {
                app.delete();
                self.routes.remove(&app.name);
            }
        }
    }

    /// Makes `checked` the goal: new applications are built, changed ones
    /// updated, missing ones deleted; unchanged ones are left alone.
    fn apply(
        &mut self,
        checked: Checked,
        deployed_s: Option<&BTreeMap<String, f64>>,
        recovering: bool,
    ) {
        self.check_globals(&checked);
        let logging = checked.config.logging_config.clone();
        if let Some(c) = crate::logs::control() {
            c.apply(
                logging.encoding,
                logging.log_level,
                logging.enable_access_log,
            );
        }
        self.shared.global_logging = logging;
        let now = unix_now();
        let submitted = checked
            .value
            .get("applications")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut names = Vec::new();
        let mut times = BTreeMap::new();
        for (i, plan) in checked.apps.into_iter().enumerate() {
            let name = plan.name.clone();
            names.push(name.clone());
            let config = submitted.get(i).cloned().unwrap_or(Value::Null);
            let time = deployed_s
                .and_then(|d| d.get(&name))
                .copied()
                .unwrap_or(now);
            match self.apps.get_mut(&name) {
                Some(app) if app.deployed_app_config == config && !app.deleting => {
                    times.insert(name, app.last_deployed_time_s);
                }
                Some(app) => {
                    app.update(plan, config, time, &self.shared);
                    times.insert(name.clone(), time);
                }
                None => {
                    let app = ApplicationState::new(plan, config, time, &self.shared, recovering);
                    times.insert(name.clone(), time);
                    self.apps.insert(name, app);
                }
            }
        }
        self.stop_apps(|app| !names.contains(&app.name));
        self.sync_routes();
        self.goal = Goal {
            config: Some(checked.value),
            deployed_s: times,
        };
        self.save_goal();
    }

    /// HTTP and proxy settings are fixed when the daemon starts, as in
    /// Ray Serve; a config that sets others is told so in the log.
    fn check_globals(&self, checked: &Checked) {
        let running = serde_json::to_value(&self.options.http_options).unwrap_or(Value::Null);
        let same = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        };
        let differ: Vec<&String> = checked
            .value
            .get("http_options")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(k, v)| !same(v, running.get(k.as_str()).unwrap_or(&Value::Null)))
            .map(|(k, _)| k)
            .collect();
        if !differ.is_empty() {
            tracing::warn!(
                "The new config's http_options differ from the running ones in {differ:?}. http_options are set when llm-serve starts and cannot be updated at runtime; the new values are ignored (running: {}:{}).",
                self.options.http_options.host,
                self.options.http_options.port
            );
        }
        if checked.value.get("proxy_location").is_some()
            && checked.config.proxy_location != self.options.proxy_location
        {
            tracing::warn!(
                "proxy_location {} is ignored: it is set when llm-serve starts ({}).",
                checked.config.proxy_location.as_str(),
                self.options.proxy_location.as_str()
            );
        }
    }

    fn sync_routes(&self) {
        for app in self.apps.values().filter(|a| !a.deleting) {
            match &app.route_prefix {
                Some(prefix) => self.routes.set(&app.name, prefix, app.router.clone()),
                None => self.routes.remove(&app.name),
            }
        }
    }

    fn save_goal(&self) {
        if let Some(cp) = &self.options.checkpoint {
            cp.save_goal(&self.goal);
        }
    }

    fn on_report(&mut self, id: &str, report: Report) {
        let Some((app_name, dep_name)) = self.shared.owners.get(id).cloned() else {
            return;
        };
        let Some(app) = self.apps.get_mut(&app_name) else {
            return;
        };
        let Some(dep) = app.deployment_mut(&dep_name, id) else {
            return;
        };
        match report {
            Report::Spawned { pid } => {
                if let Some(r) = dep.replica_mut(id) {
                    r.pid = Some(pid);
                }
            }
            Report::Listening { replica } => {
                if let Some(r) = dep.replica_mut(id) {
                    replica.set_state(llm_serve_router::ReplicaState::Starting);
                    r.router = Some(replica);
                }
            }
            Report::Running { info } => {
                if let Some(r) = &dep.router {
                    r.set_info(info);
                }
                dep.running(id, &self.shared);
                tracing::info!("Replica {id} is running.");
            }
            Report::Reconfigured { error } => {
                if let Some(r) = dep.replica_mut(id) {
                    if r.state == status::ReplicaStatus::Updating {
                        r.state = status::ReplicaStatus::Running;
                    }
                }
                if let Some(e) = error {
                    dep.died(id, &e, &self.shared);
                }
            }
            Report::StartFailed { message } => dep.start_failed(id, &message),
            Report::Died { message } => dep.died(id, &message, &self.shared),
            Report::Stopped => {
                dep.stopped(id, &mut self.shared);
                self.shared.owners.remove(id);
            }
        }
    }

    fn reconcile(&mut self) {
        for app in self.apps.values_mut() {
            app.reconcile(&mut self.shared);
        }
        let gone: Vec<String> = self
            .apps
            .values()
            .filter(|a| a.is_gone())
            .map(|a| a.name.clone())
            .collect();
        for name in gone {
            self.apps.remove(&name);
            tracing::info!("Application '{name}' is deleted.");
        }
        if let Some(cp) = &self.options.checkpoint {
            let pids: Vec<(String, u32)> =
                self.apps.values().flat_map(|a| a.replica_pids()).collect();
            if pids != self.last_pids {
                cp.save_replicas(&pids);
                self.last_pids = pids;
            }
        }
    }

    fn details(&self) -> InstanceDetails {
        let s = &self.shared;
        let proxy_status = if self.shutdown.is_some() {
            ProxyStatus::Draining
        } else {
            ProxyStatus::Healthy
        };
        let mut proxies = BTreeMap::new();
        if self.options.proxy_location != ProxyLocation::Disabled {
            proxies.insert(
                s.node_id.clone(),
                ProxyDetails {
                    actor: s.proxy_actor(),
                    status: proxy_status,
                },
            );
        }
        InstanceDetails {
            controller_info: s.actor(
                &self.actor_id,
                "SERVE_CONTROLLER_ACTOR".into(),
                &self.options.controller_log,
                Some(std::process::id()),
            ),
            proxy_location: Some(self.options.proxy_location.as_str().to_string()),
            http_options: Some(self.options.http_options.clone()),
            grpc_options: Some(self.options.grpc_options.clone()),
            proxies,
            deploy_mode: "MULTI_APP".into(),
            applications: self
                .apps
                .iter()
                .map(|(n, a)| (n.clone(), a.details(s)))
                .collect(),
        }
    }
}
