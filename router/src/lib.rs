//! The router: the OpenAI-compatible HTTP API in front of engine replicas,
//! which it reaches only through the replica protocol. It parses and
//! validates requests, picks a replica of the requested model, and turns
//! the replica's events into OpenAI responses and server-sent events.

pub mod app;
pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod metrics;
pub mod openai;
pub mod replicas;
pub mod serve_metrics;

pub use app::{router, App, RouterConfig};
pub use error::{ApiError, RouterError};
pub use metrics::Metrics;
pub use replicas::{Deployment, DeploymentLabels, Models, Replica, ReplicaState};
