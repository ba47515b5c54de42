//! The engine replicas the router can send requests to: per served model a
//! deployment of replicas, each with a gRPC client and the router's own
//! count of requests in flight on it; the deployment's limits on requests
//! per replica and requests queued. Requests are counted in Ray Serve's
//! metrics (`serve_metrics`) as they go to replicas; this module depends
//! on those counters only, not on `metrics` (which reads the replicas).

use crate::error::{ApiError, RouterError};
use crate::lora::{split_model, Adapters};
use crate::multiplex::{candidates, matching_window, Candidate};
use crate::serve_metrics::ServeMetrics;
use llm_serve_proto::replica_client::ReplicaClient;
use llm_serve_proto::{InfoResponse, PresentSecret};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Where a replica is in its life, as the router sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ReplicaState {
    /// Started, model not loaded yet.
    Starting = 0,
    Ready = 1,
    /// Taking no new requests (draining or stopping).
    Draining = 2,
    /// Failed health checks or exited.
    Unhealthy = 3,
}

impl ReplicaState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => ReplicaState::Ready,
            2 => ReplicaState::Draining,
            3 => ReplicaState::Unhealthy,
            _ => ReplicaState::Starting,
        }
    }
}

/// A client of the replica protocol that presents the deployment's secret.
pub type Client = ReplicaClient<InterceptedService<Channel, PresentSecret>>;

/// HTTP/2 pings on a connection with calls open: a replica that does not
/// answer one within `KEEP_ALIVE_TIMEOUT` (frozen, or its host gone) has
/// its calls failed, so requests that had not started are retried on
/// another replica instead of waiting for health checks to give up.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// How the router reaches one replica.
#[derive(Clone, Debug, Default)]
pub struct Connection {
    /// `host:port` of its replica protocol.
    pub address: String,
    /// The deployment's secret, presented on every call.
    pub secret: Option<String>,
    /// The largest reply accepted (`RouterConfig::max_replica_message_bytes`).
    pub max_message_bytes: usize,
}

/// One engine replica.
pub struct Replica {
    pub id: String,
    client: Client,
    state: AtomicU8,
    ongoing: AtomicU32,
    /// A health check failed since the last one that passed: no new
    /// requests until one passes again.
    suspect: AtomicBool,
    /// LoRA adapters it holds (loaded or loading), as it last reported
    /// them, plus those the router sent it since.
    adapters: RwLock<BTreeSet<String>>,
}

impl Replica {
    /// A replica serving the protocol where `conn` says; the connection
    /// is made on first use.
    pub fn new(id: &str, conn: &Connection) -> Result<Arc<Self>, RouterError> {
        let url = format!("http://{}", conn.address);
        let endpoint = Endpoint::from_shared(url).map_err(|e| RouterError::ReplicaAddress {
            addr: conn.address.clone(),
            detail: e.to_string(),
        })?;
        let channel = endpoint
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .connect_lazy();
        let limit = conn.max_message_bytes.max(4 << 20);
        let client =
            ReplicaClient::with_interceptor(channel, PresentSecret::new(conn.secret.as_deref()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit);
        Ok(Arc::new(Replica {
            id: id.to_string(),
            client,
            state: AtomicU8::new(ReplicaState::Starting as u8),
            ongoing: AtomicU32::new(0),
            suspect: AtomicBool::new(false),
            adapters: RwLock::new(BTreeSet::new()),
        }))
    }

    /// The adapters it holds (loaded or loading).
    pub fn adapters(&self) -> BTreeSet<String> {
        self.adapters
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes the replica's own report of the adapters it holds.
    pub fn set_adapters(&self, adapters: impl IntoIterator<Item = String>) {
        *self.adapters.write().unwrap_or_else(|p| p.into_inner()) = adapters.into_iter().collect();
    }

    /// Records an adapter the router sent it (it loads it now), or one it
    /// failed to load.
    pub fn note_adapter(&self, name: &str, holds: bool) {
        let mut a = self.adapters.write().unwrap_or_else(|p| p.into_inner());
        if holds {
            a.insert(name.to_string());
        } else {
            a.remove(name);
        }
    }

    fn candidate(&self, adapter: &str, has_room: bool) -> Candidate {
        let a = self.adapters.read().unwrap_or_else(|p| p.into_inner());
        Candidate {
            holds: a.contains(adapter),
            adapters: a.len(),
            has_room,
        }
    }

    /// A client for one call (clients are cheap clones of the channel).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Marks the replica as failing (or passing again) its health checks.
    pub fn set_suspect(&self, suspect: bool) {
        self.suspect.store(suspect, Ordering::SeqCst);
    }

    /// Whether new requests may go to it.
    pub fn takes_requests(&self) -> bool {
        self.state() == ReplicaState::Ready && !self.suspect.load(Ordering::SeqCst)
    }

    pub fn state(&self) -> ReplicaState {
        ReplicaState::from_u8(self.state.load(Ordering::SeqCst))
    }

    pub fn set_state(&self, s: ReplicaState) {
        self.state.store(s as u8, Ordering::SeqCst);
    }

    /// Requests this router has in flight on the replica.
    pub fn ongoing(&self) -> u32 {
        self.ongoing.load(Ordering::SeqCst)
    }
}

/// Where a deployment sits in Serve's terms, for its metrics' labels.
#[derive(Clone, Debug, Default)]
pub struct DeploymentLabels {
    pub application: String,
    pub deployment: String,
    /// The application's route prefix.
    pub route: String,
    /// Who sends the requests (the proxy's handle) and its actor id.
    pub handle: String,
    pub actor_id: String,
}

/// How many requests a deployment's replicas take and queue (Serve's
/// `max_ongoing_requests` and `max_queued_requests`, -1 for no bound).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_ongoing_requests: u64,
    pub max_queued_requests: i64,
    /// With no replica ready, queue (a replica is on its way: scaling up
    /// from zero) rather than answer 503.
    pub wait_for_replicas: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_ongoing_requests: u64::MAX,
            max_queued_requests: -1,
            wait_for_replicas: false,
        }
    }
}

/// What requests in flight and queued are counted against, shared by a
/// deployment and its requests.
struct Accounting {
    labels: DeploymentLabels,
    serve: ServeMetrics,
    limits: RwLock<Limits>,
    /// Tickets of the queued requests, oldest first: a request takes a
    /// replica only when fewer requests wait ahead of it than there are
    /// free places, so the queue is served in order.
    line: Mutex<VecDeque<u64>>,
    next_ticket: AtomicU64,
    /// Woken when a request leaves a replica or the replicas change.
    changed: Notify,
}

impl Accounting {
    fn replica_labels<'a>(&'a self, replica: &'a str) -> [&'a str; 3] {
        [&self.labels.deployment, replica, &self.labels.application]
    }

    fn handle_labels(&self) -> [&str; 4] {
        let l = &self.labels;
        [&l.deployment, &l.application, &l.handle, &l.actor_id]
    }
}

/// Counts a request against its replica until dropped, and records it in
/// the Serve metrics then.
pub struct InFlight {
    pub replica: Arc<Replica>,
    accounting: Arc<Accounting>,
    started: Instant,
    failed: bool,
}

impl InFlight {
    fn new(replica: Arc<Replica>, accounting: Arc<Accounting>) -> Self {
        replica.ongoing.fetch_add(1, Ordering::SeqCst);
        let m = &accounting.serve;
        m.replica_processing_queries
            .with_label_values(&accounting.replica_labels(&replica.id))
            .inc();
        m.num_ongoing_requests_at_replicas
            .with_label_values(&accounting.handle_labels())
            .inc();
        let l = &accounting.labels;
        m.num_router_requests
            .with_label_values(&[
                &l.deployment,
                &l.route,
                &l.application,
                &l.handle,
                &l.actor_id,
            ])
            .inc();
        InFlight {
            replica,
            accounting,
            started: Instant::now(),
            failed: false,
        }
    }

    /// The request ended in an error on the replica.
    pub fn mark_failed(&mut self) {
        self.failed = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.replica.ongoing.fetch_sub(1, Ordering::SeqCst);
        let a = &self.accounting;
        let m = &a.serve;
        let l = &a.labels;
        let with_route = [
            &*l.deployment,
            &*self.replica.id,
            &*l.route,
            &*l.application,
        ];
        m.deployment_request_counter
            .with_label_values(&with_route)
            .inc();
        if self.failed {
            m.deployment_error_counter
                .with_label_values(&with_route)
                .inc();
        }
        m.deployment_processing_latency_ms
            .with_label_values(&with_route)
            .observe(self.started.elapsed().as_secs_f64() * 1e3);
        m.replica_processing_queries
            .with_label_values(&a.replica_labels(&self.replica.id))
            .dec();
        m.num_ongoing_requests_at_replicas
            .with_label_values(&a.handle_labels())
            .dec();
        a.changed.notify_waiters();
    }
}

/// A request waiting for a replica with room, in line; counted in the
/// queue metrics until dropped.
struct Queued<'a> {
    accounting: &'a Accounting,
    ticket: u64,
}

impl<'a> Queued<'a> {
    fn new(a: &'a Accounting) -> Self {
        a.serve
            .deployment_queued_queries
            .with_label_values(&a.handle_labels())
            .inc();
        let ticket = a.next_ticket.fetch_add(1, Ordering::SeqCst);
        a.line
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(ticket);
        Queued {
            accounting: a,
            ticket,
        }
    }

    /// Requests in line ahead of this one.
    fn ahead(&self) -> usize {
        let line = self
            .accounting
            .line
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        line.iter().take_while(|&&t| t != self.ticket).count()
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let a = self.accounting;
        {
            let mut line = a.line.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(pos) = line.iter().position(|&t| t == self.ticket) {
                line.remove(pos);
            }
        }
        a.serve
            .deployment_queued_queries
            .with_label_values(&a.handle_labels())
            .dec();
        // The next in line may go now.
        a.changed.notify_waiters();
    }
}

/// How long a request waits for the first replica of a deployment whose
/// replicas are starting (a deploy, a recovery, a scale-up from zero);
/// `request_timeout_s`, when set, cuts it shorter.
pub const STARTUP_WAIT: Duration = Duration::from_secs(300);

/// The engine's default `max_num_seqs`.
pub const DEFAULT_MAX_NUM_SEQS: u32 = 256;

/// How long a queued request sleeps before looking at the replicas again
/// when nothing wakes it.
const QUEUE_RECHECK: Duration = Duration::from_millis(100);

/// The replicas serving one model.
pub struct Deployment {
    /// The name clients use in `model`.
    pub model_id: String,
    /// Seconds since the epoch when the deployment was created.
    pub created: u64,
    replicas: RwLock<Vec<Arc<Replica>>>,
    info: RwLock<Option<InfoResponse>>,
    /// Why no replica is ready, when that is known (e.g. a replica's exit).
    problem: RwLock<Option<String>>,
    /// Replicas are on their way (the controller wants some and is not
    /// giving up): with none ready, requests wait for them.
    expecting: AtomicBool,
    accounting: Arc<Accounting>,
    /// The model's LoRA adapters.
    pub adapters: Adapters,
}

impl Deployment {
    /// A deployment of no replicas yet, counting its requests in `serve`
    /// (Serve's counters, or the proxy's `Metrics` that hold them).
    pub fn new(
        model_id: &str,
        labels: DeploymentLabels,
        serve: impl Into<ServeMetrics>,
    ) -> Arc<Self> {
        Arc::new(Deployment {
            model_id: model_id.to_string(),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            replicas: RwLock::new(Vec::new()),
            info: RwLock::new(None),
            problem: RwLock::new(None),
            expecting: AtomicBool::new(false),
            accounting: Arc::new(Accounting {
                labels,
                serve: serve.into(),
                limits: RwLock::new(Limits::default()),
                line: Mutex::new(VecDeque::new()),
                next_ticket: AtomicU64::new(0),
                changed: Notify::new(),
            }),
            adapters: Adapters::default(),
        })
    }

    /// Where the deployment sits in Serve's terms.
    pub fn labels(&self) -> &DeploymentLabels {
        &self.accounting.labels
    }

    pub fn replicas(&self) -> Vec<Arc<Replica>> {
        self.replicas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_replicas(&self, replicas: Vec<Arc<Replica>>) {
        *self.replicas.write().unwrap_or_else(|p| p.into_inner()) = replicas;
        self.accounting.changed.notify_waiters();
    }

    /// Wakes queued requests to look at the replicas again (after a state
    /// change of one of them).
    pub fn replicas_changed(&self) {
        self.accounting.changed.notify_waiters();
    }

    pub fn set_limits(&self, limits: Limits) {
        *self
            .accounting
            .limits
            .write()
            .unwrap_or_else(|p| p.into_inner()) = limits;
        self.accounting.changed.notify_waiters();
    }

    pub fn limits(&self) -> Limits {
        *self
            .accounting
            .limits
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Requests waiting for a replica with room.
    pub fn queued(&self) -> u32 {
        let line = self
            .accounting
            .line
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        u32::try_from(line.len()).unwrap_or(u32::MAX)
    }

    /// Facts about the loaded model, once a replica has reported them.
    pub fn info(&self) -> Option<InfoResponse> {
        self.info.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The most sequences one request may run: the engine's
    /// `max_num_seqs`, or its default before a replica has reported.
    pub fn max_num_seqs(&self) -> u32 {
        self.info()
            .map(|i| i.max_num_seqs)
            .filter(|&m| m > 0)
            .unwrap_or(DEFAULT_MAX_NUM_SEQS)
    }

    /// The tool-call format the model's template asks for, once a replica
    /// has reported it (`None`: its template renders no tools).
    pub fn tool_call_format(&self) -> Option<crate::tool_calls::Format> {
        self.info()
            .and_then(|i| crate::tool_calls::Format::from_name(&i.tool_call_parser))
    }

    pub fn set_info(&self, info: InfoResponse) {
        *self.info.write().unwrap_or_else(|p| p.into_inner()) = Some(info);
    }

    pub fn set_problem(&self, problem: Option<String>) {
        *self.problem.write().unwrap_or_else(|p| p.into_inner()) = problem;
    }

    /// Says whether replicas are on their way (see `pick`).
    pub fn set_expecting(&self, expecting: bool) {
        if self.expecting.swap(expecting, Ordering::SeqCst) != expecting {
            self.accounting.changed.notify_waiters();
        }
    }

    pub fn is_ready(&self) -> bool {
        self.replicas().iter().any(|r| r.takes_requests())
    }

    /// A ready replica for a new request, by power of two choices on the
    /// requests in flight (the less loaded of two picked at random) among
    /// those below `max_ongoing_requests` and not failing health checks.
    /// When every ready replica is at its limit, or none is ready yet but
    /// replicas are on their way (starting after a deploy or a recovery,
    /// or woken from zero), the request waits here in line, up to
    /// `max_queued_requests` waiting (then a 503, Serve's backpressure)
    /// and `STARTUP_WAIT` for a first replica; with no replica ready or
    /// coming, a 503 saying why. A request for a LoRA `adapter` is
    /// narrowed further by Serve's multiplex rule (`multiplex`): replicas
    /// that hold it first, for up to its matching window.
    pub async fn pick(
        &self,
        exclude: &[String],
        adapter: Option<&str>,
    ) -> Result<InFlight, ApiError> {
        let mut queued: Option<Queued> = None;
        let arrived = Instant::now();
        let window = matching_window();
        loop {
            let changed = self.accounting.changed.notified();
            let limits = self.limits();
            let ready: Vec<Arc<Replica>> = self
                .replicas()
                .into_iter()
                .filter(|r| r.takes_requests() && !exclude.contains(&r.id))
                .collect();
            let has_problem = self
                .problem
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .is_some();
            let coming =
                (limits.wait_for_replicas || self.expecting.load(Ordering::SeqCst)) && !has_problem;
            if ready.is_empty() && (!coming || arrived.elapsed() >= STARTUP_WAIT) {
                return Err(self.none_ready());
            }
            let room: Vec<&Arc<Replica>> = ready
                .iter()
                .filter(|r| u64::from(r.ongoing()) < limits.max_ongoing_requests)
                .collect();
            let free = room.iter().fold(0u64, |acc, r| {
                acc.saturating_add(limits.max_ongoing_requests - u64::from(r.ongoing()))
            });
            let my_turn = queued
                .as_ref()
                .map_or(self.queued() == 0, |q| (q.ahead() as u64) < free);
            if my_turn {
                let choice = match adapter {
                    None => power_of_two(&room),
                    Some(a) => {
                        let all: Vec<Candidate> = ready
                            .iter()
                            .map(|r| {
                                let has_room = u64::from(r.ongoing()) < limits.max_ongoing_requests;
                                r.candidate(a, has_room)
                            })
                            .collect();
                        let picked: Vec<&Arc<Replica>> =
                            candidates(&all, arrived.elapsed(), window)
                                .into_iter()
                                .map(|i| &ready[i])
                                .collect();
                        power_of_two(&picked)
                    }
                };
                if let Some(r) = choice {
                    if let Some(a) = adapter {
                        r.note_adapter(a, true);
                    }
                    return Ok(InFlight::new(r.clone(), self.accounting.clone()));
                }
            }
            if queued.is_none() {
                let waiting = self.queued();
                if limits.max_queued_requests >= 0
                    && i64::from(waiting) >= limits.max_queued_requests
                {
                    tracing::warn!(
                        deployment = %self.accounting.labels.deployment,
                        application = %self.accounting.labels.application,
                        "Request dropped due to backpressure (num_queued_requests={waiting}, max_queued_requests={}).",
                        limits.max_queued_requests
                    );
                    return Err(ApiError::unavailable(format!(
                        "Request dropped due to backpressure (num_queued_requests={waiting}, max_queued_requests={}).",
                        limits.max_queued_requests
                    )));
                }
                queued = Some(Queued::new(&self.accounting));
                continue;
            }
            let _ = tokio::time::timeout(QUEUE_RECHECK, changed).await;
        }
    }

    fn none_ready(&self) -> ApiError {
        let problem = self
            .problem
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let starting = self
            .replicas()
            .iter()
            .any(|r| r.state() == ReplicaState::Starting);
        ApiError::unavailable(match problem {
            Some(p) => format!("No replica of model `{}` is available: {p}", self.model_id),
            None if starting => {
                format!("Model `{}` is still loading; retry shortly.", self.model_id)
            }
            None => format!("No replica of model `{}` is available.", self.model_id),
        })
    }
}

/// The less loaded of two replicas picked at random.
fn power_of_two<'a>(candidates: &[&'a Arc<Replica>]) -> Option<&'a Arc<Replica>> {
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        n => {
            let a = rand::random_range(0..n);
            let mut b = rand::random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (ra, rb) = (candidates[a], candidates[b]);
            Some(if rb.ongoing() < ra.ongoing() { rb } else { ra })
        }
    }
}

/// What a request's `model` resolved to.
pub struct Target {
    /// The name as the client sent it (responses echo it).
    pub name: String,
    pub deployment: Arc<Deployment>,
    /// The LoRA adapter, for an adapter request.
    pub adapter: Option<String>,
}

impl Target {
    /// The replica protocol's `adapter_id` and `adapter_source` (empty for
    /// the base model, and for an adapter the replica finds itself).
    pub fn adapter_fields(&self) -> (String, String) {
        let Some(a) = &self.adapter else {
            return (String::new(), String::new());
        };
        let source = self.deployment.adapters.runtime_source(a);
        (a.clone(), source.unwrap_or_default())
    }
}

/// Every served model, by the name clients use.
#[derive(Default)]
pub struct Models {
    by_name: RwLock<BTreeMap<String, Arc<Deployment>>>,
}

impl Models {
    pub fn insert(&self, d: Arc<Deployment>) {
        self.by_name
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(d.model_id.clone(), d);
    }

    pub fn remove(&self, model_id: &str) -> Option<Arc<Deployment>> {
        self.by_name
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(model_id)
    }

    pub fn get(&self, model_id: &str) -> Option<Arc<Deployment>> {
        self.by_name
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(model_id)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Deployment>> {
        self.by_name
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// What a request's `model` names: a served model, `base:adapter` (a
    /// LoRA adapter of a model that serves them), or the name of an
    /// adapter registered by name (`lora_modules`, or loaded at run time)
    /// with one model; with no `model`, the only model.
    pub fn resolve_target(&self, model: Option<&str>) -> Result<Target, ApiError> {
        let Some(m) = model else {
            return self.resolve(None).map(|deployment| Target {
                name: deployment.model_id.clone(),
                deployment,
                adapter: None,
            });
        };
        if let Some(deployment) = self.get(m) {
            return Ok(Target {
                name: m.to_string(),
                deployment,
                adapter: None,
            });
        }
        if let Some((base, adapter)) = split_model(m) {
            if let Some(deployment) = self.get(base) {
                if !deployment.adapters.enabled() {
                    return Err(ApiError::not_found(format!(
                        "The model `{m}` does not exist: model `{base}` serves no LoRA adapters."
                    ))
                    .with_param("model"));
                }
                return Ok(Target {
                    name: m.to_string(),
                    deployment,
                    adapter: Some(adapter.to_string()),
                });
            }
        }
        let by_name: Vec<Arc<Deployment>> = self
            .all()
            .into_iter()
            .filter(|d| d.adapters.registered(m))
            .collect();
        match by_name.as_slice() {
            [only] => Ok(Target {
                name: m.to_string(),
                deployment: only.clone(),
                adapter: Some(m.to_string()),
            }),
            _ => Err(ApiError::model_not_found(m)),
        }
    }

    /// The deployment a request's `model` names; with no `model`, the only
    /// one (as vLLM serves its single model).
    pub fn resolve(&self, model: Option<&str>) -> Result<Arc<Deployment>, ApiError> {
        match model {
            Some(m) => self.get(m).ok_or_else(|| ApiError::model_not_found(m)),
            None => {
                let all = self.all();
                match all.as_slice() {
                    [only] => Ok(only.clone()),
                    [] => Err(ApiError::unavailable("No model is being served.")),
                    _ => Err(ApiError::bad_request(
                        "`model` is required: this server serves several models.",
                        Some("model"),
                    )),
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn deployment(max_ongoing_requests: u64) -> Arc<Deployment> {
        let serve = ServeMetrics::register(&prometheus::Registry::new()).unwrap();
        let d = Deployment::new("m", DeploymentLabels::default(), serve);
        d.set_limits(Limits {
            max_ongoing_requests,
            ..Limits::default()
        });
        d
    }

    fn replica(id: &str) -> Arc<Replica> {
        let conn = Connection {
            address: "127.0.0.1:9".into(),
            ..Connection::default()
        };
        let r = Replica::new(id, &conn).unwrap();
        r.set_state(ReplicaState::Ready);
        r
    }

    #[tokio::test]
    async fn queued_requests_are_served_in_arrival_order() {
        let d = deployment(1);
        d.set_replicas(vec![replica("r")]);
        let first = d.pick(&[], None).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut waiters = Vec::new();
        for i in 0..3 {
            let (dep, tx) = (d.clone(), tx.clone());
            waiters.push(tokio::spawn(async move {
                let held = dep.pick(&[], None).await.unwrap();
                tx.send(i).unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(held);
            }));
            // Each joins the line before the next arrives.
            while d.queued() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        drop(first);
        for w in waiters {
            w.await.unwrap();
        }
        let order: Vec<u32> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(order, vec![0, 1, 2]);
        assert_eq!(d.queued(), 0);
        // A newcomer does not jump the line when a place frees up.
        let held = d.pick(&[], None).await.unwrap();
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.pick(&[], None).await.map(|_| ()) })
        };
        while d.queued() < 1 {
            tokio::task::yield_now().await;
        }
        drop(held);
        use futures::FutureExt;
        assert!(d.pick(&[], None).now_or_never().is_none());
        waiter.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn requests_wait_for_replicas_on_their_way_and_skip_suspect_ones() {
        let d = deployment(u64::MAX);
        // Nothing ready, nothing coming: a 503 at once.
        assert_eq!(d.pick(&[], None).await.err().unwrap().status.as_u16(), 503);
        // Replicas on their way: the request waits for the first one.
        d.set_expecting(true);
        let waiting = {
            let d = d.clone();
            tokio::spawn(async move { d.pick(&[], None).await.map(|f| f.replica.id.clone()) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        let (a, b) = (replica("a"), replica("b"));
        a.set_suspect(true);
        d.set_replicas(vec![a.clone(), b]);
        assert_eq!(waiting.await.unwrap().unwrap(), "b");
        for _ in 0..20 {
            assert_eq!(d.pick(&[], None).await.unwrap().replica.id, "b");
        }
        // A deployment that failed to start answers why, at once.
        d.set_replicas(Vec::new());
        d.set_problem(Some("the model failed to load".into()));
        let e = d.pick(&[], None).await.err().unwrap();
        assert!(e.message.contains("failed to load"), "{}", e.message);
    }
}
