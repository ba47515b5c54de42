//! The engine replicas the router can send requests to: per served model a
//! deployment of replicas, each with a gRPC client and the router's own
//! count of requests in flight on it.

use crate::error::{ApiError, RouterError};
use llm_serve_proto::replica_client::ReplicaClient;
use llm_serve_proto::InfoResponse;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};
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

/// One engine replica.
pub struct Replica {
    pub id: String,
    client: ReplicaClient<Channel>,
    state: AtomicU8,
    ongoing: AtomicU32,
}

impl Replica {
    /// A replica serving the protocol at `address` (`host:port`); the
    /// connection is made on first use.
    pub fn new(id: &str, address: &str) -> Result<Arc<Self>, RouterError> {
        let url = format!("http://{address}");
        let endpoint = Endpoint::from_shared(url).map_err(|e| RouterError::ReplicaAddress {
            addr: address.to_string(),
            detail: e.to_string(),
        })?;
        Ok(Arc::new(Replica {
            id: id.to_string(),
            client: ReplicaClient::new(endpoint.tcp_nodelay(true).connect_lazy()),
            state: AtomicU8::new(ReplicaState::Starting as u8),
            ongoing: AtomicU32::new(0),
        }))
    }

    /// A client for one call (clients are cheap clones of the channel).
    pub fn client(&self) -> ReplicaClient<Channel> {
        self.client.clone()
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

/// Counts a request against its replica until dropped.
pub struct InFlight {
    pub replica: Arc<Replica>,
}

impl InFlight {
    fn new(replica: Arc<Replica>) -> Self {
        replica.ongoing.fetch_add(1, Ordering::SeqCst);
        InFlight { replica }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.replica.ongoing.fetch_sub(1, Ordering::SeqCst);
    }
}

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
}

impl Deployment {
    pub fn new(model_id: &str) -> Arc<Self> {
        Arc::new(Deployment {
            model_id: model_id.to_string(),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            replicas: RwLock::new(Vec::new()),
            info: RwLock::new(None),
            problem: RwLock::new(None),
        })
    }

    pub fn replicas(&self) -> Vec<Arc<Replica>> {
        self.replicas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_replicas(&self, replicas: Vec<Arc<Replica>>) {
        *self.replicas.write().unwrap_or_else(|p| p.into_inner()) = replicas;
    }

    /// Facts about the loaded model, once a replica has reported them.
    pub fn info(&self) -> Option<InfoResponse> {
        self.info.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_info(&self, info: InfoResponse) {
        *self.info.write().unwrap_or_else(|p| p.into_inner()) = Some(info);
    }

    pub fn set_problem(&self, problem: Option<String>) {
        *self.problem.write().unwrap_or_else(|p| p.into_inner()) = problem;
    }

    pub fn is_ready(&self) -> bool {
        self.replicas()
            .iter()
            .any(|r| r.state() == ReplicaState::Ready)
    }

    /// A ready replica for a new request, by power of two choices on the
    /// requests in flight (the less loaded of two picked at random), or a
    /// 503 saying why there is none.
    pub fn pick(&self, exclude: &[String]) -> Result<InFlight, ApiError> {
        let ready: Vec<Arc<Replica>> = self
            .replicas()
            .into_iter()
            .filter(|r| r.state() == ReplicaState::Ready && !exclude.contains(&r.id))
            .collect();
        let chosen = match ready.len() {
            0 => None,
            1 => Some(ready[0].clone()),
            n => {
                let a = rand::random_range(0..n);
                let mut b = rand::random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let (ra, rb) = (&ready[a], &ready[b]);
                Some(if rb.ongoing() < ra.ongoing() { rb } else { ra }.clone())
            }
        };
        match chosen {
            Some(r) => Ok(InFlight::new(r)),
            None => {
                let problem = self
                    .problem
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let starting = self
                    .replicas()
                    .iter()
                    .any(|r| r.state() == ReplicaState::Starting);
                Err(ApiError::unavailable(match problem {
                    Some(p) => format!("No replica of model `{}` is available: {p}", self.model_id),
                    None if starting => {
                        format!("Model `{}` is still loading; retry shortly.", self.model_id)
                    }
                    None => format!("No replica of model `{}` is available.", self.model_id),
                }))
            }
        }
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
