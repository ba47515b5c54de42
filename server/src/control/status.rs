//! Status names and the shapes `GET /api/serve/applications/` answers
//! (`ServeInstanceDetails` and what it holds), as Ray Serve spells them.

use crate::config::schema::{GrpcOptions, HttpOptions};
use crate::config::DeploymentConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApplicationStatus {
    NotStarted,
    Deploying,
    Running,
    DeployFailed,
    Deleting,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeploymentStatus {
    Updating,
    Healthy,
    Unhealthy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReplicaStatus {
    Starting,
    Updating,
    Recovering,
    Running,
    Stopping,
}

impl ReplicaStatus {
    /// Serving requests (RUNNING, or UPDATING while it reconfigures).
    pub fn is_serving(self) -> bool {
        matches!(self, ReplicaStatus::Running | ReplicaStatus::Updating)
    }

    /// On its way up.
    pub fn is_starting(self) -> bool {
        matches!(self, ReplicaStatus::Starting | ReplicaStatus::Recovering)
    }
}

/// Statuses print as Ray spells them (`RUNNING`, `DEPLOY_FAILED`, ...).
macro_rules! display_as_serialized {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                match serde_json::to_value(self) {
                    Ok(Value::String(s)) => f.write_str(&s),
                    _ => write!(f, "{self:?}"),
                }
            }
        }
    )*};
}

display_as_serialized!(
    ApplicationStatus,
    DeploymentStatus,
    ReplicaStatus,
    ProxyStatus
);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProxyStatus {
    Starting,
    Healthy,
    Unhealthy,
    Draining,
    Drained,
}

/// `controller_info`, and the shape shared by proxies and replicas
/// (`ServeActorDetails`). `pid` is ours: the process behind the actor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActorDetails {
    pub node_id: String,
    pub node_ip: String,
    pub actor_id: String,
    pub actor_name: String,
    pub worker_id: Option<String>,
    pub log_file_path: String,
    #[serde(default)]
    pub pid: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProxyDetails {
    #[serde(flatten)]
    pub actor: ActorDetails,
    pub status: ProxyStatus,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaDetails {
    #[serde(flatten)]
    pub actor: ActorDetails,
    pub replica_id: String,
    pub state: ReplicaStatus,
    pub start_time_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploymentDetails {
    pub name: String,
    pub status: DeploymentStatus,
    pub message: String,
    pub deployment_config: DeploymentConfig,
    /// Replicas the controller aims for now.
    pub target_num_replicas: u32,
    pub replicas: Vec<ReplicaDetails>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApplicationDetails {
    pub name: String,
    pub route_prefix: Option<String>,
    pub docs_path: Option<String>,
    pub status: ApplicationStatus,
    pub message: String,
    pub last_deployed_time_s: f64,
    pub deployed_app_config: Option<Value>,
    pub deployments: BTreeMap<String, DeploymentDetails>,
}

/// `ServeInstanceDetails`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceDetails {
    pub controller_info: ActorDetails,
    pub proxy_location: Option<String>,
    pub http_options: Option<HttpOptions>,
    pub grpc_options: Option<GrpcOptions>,
    pub proxies: BTreeMap<String, ProxyDetails>,
    pub deploy_mode: String,
    pub applications: BTreeMap<String, ApplicationDetails>,
}

/// What `llm-serve status` prints (Ray's `serve status` YAML).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusOverview {
    pub proxies: BTreeMap<String, ProxyStatus>,
    pub applications: BTreeMap<String, ApplicationOverview>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApplicationOverview {
    pub status: ApplicationStatus,
    pub message: String,
    pub last_deployed_time_s: f64,
    pub deployments: BTreeMap<String, DeploymentOverview>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploymentOverview {
    pub status: DeploymentStatus,
    pub replica_states: BTreeMap<ReplicaStatus, u32>,
    pub message: String,
}

impl InstanceDetails {
    /// The `status` view of these details.
    pub fn overview(&self) -> StatusOverview {
        StatusOverview {
            proxies: self
                .proxies
                .iter()
                .map(|(id, p)| (id.clone(), p.status))
                .collect(),
            applications: self
                .applications
                .iter()
                .map(|(name, a)| {
                    let deployments = a
                        .deployments
                        .iter()
                        .map(|(d, dd)| {
                            let mut replica_states = BTreeMap::new();
                            for r in &dd.replicas {
                                *replica_states.entry(r.state).or_insert(0) += 1;
                            }
                            (
                                d.clone(),
                                DeploymentOverview {
                                    status: dd.status,
                                    replica_states,
                                    message: dd.message.clone(),
                                },
                            )
                        })
                        .collect();
                    (
                        name.clone(),
                        ApplicationOverview {
                            status: a.status,
                            message: a.message.clone(),
                            last_deployed_time_s: a.last_deployed_time_s,
                            deployments,
                        },
                    )
                })
                .collect(),
        }
    }
}
