//! The router: the OpenAI-compatible HTTP API in front of engine replicas,
//! which it reaches only through the replica protocol. It parses and
//! validates requests, picks a replica of the requested model, and turns
//! the replica's events into OpenAI responses and server-sent events.
//!
//! Modules depend on each other one way only, each on some of those after
//! it: `app` (routes), `openai` (handlers), `extract` (body extractor),
//! `state` (shared state), `metrics` (the `/metrics` scrape), `replicas`,
//! `serve_metrics`, `lora` and `multiplex` (adapters and the affinity
//! rule); and `error` and `wire` (the JSON bodies), which any of them may
//! use and which use nothing but each other (`error` → `wire`).

pub mod app;
pub mod error;
pub mod extract;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod lora;
pub mod metrics;
pub mod multiplex;
mod multiplex_metrics;
pub mod openai;
pub mod replicas;
pub mod serve_metrics;
pub mod state;
pub mod tool_calls;
pub mod wire;

pub use app::router;
pub use error::{ApiError, RouterError};
pub use metrics::Metrics;
pub use replicas::{Deployment, DeploymentLabels, Models, Replica, ReplicaState};
pub use serve_metrics::ServeMetrics;
pub use state::{App, RouterConfig};
