//! The replica: one engine served over the replica protocol (gRPC), as the
//! `llm-serve replica` process runs it. The router reaches engines only
//! through this service.
//!
//! The service answers as soon as it is bound: `Health` says LOADING while
//! the model loads (Generate gets UNAVAILABLE), then READY, or FAILED with
//! the load error.

mod convert;
mod defaults;
mod prompt;
mod service;

pub use defaults::GenerationDefaults;
pub use service::{LoadedModel, ReplicaService, ReplicaState};
