//! The OpenAI-compatible API: request parsing and validation, the
//! endpoints, and how they build their responses and streams (the shapes
//! themselves are in `wire`). Only `app` depends on this module; what it
//! uses (`state`, `extract`, `replicas`, `error`, `wire`) depends on
//! nothing here.

pub mod chat;
pub mod completions;
#[cfg(test)]
mod fuzz;
mod generation;
#[cfg(test)]
mod golden;
pub mod lora_adapters;
pub mod models;
mod request;
mod response;
mod sse;
mod structured;
pub mod tokenize;
mod tools;
