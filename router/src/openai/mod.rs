//! The OpenAI-compatible API: request parsing and validation, the
//! endpoints, and their response and streaming shapes.

pub mod chat;
pub mod completions;
#[cfg(test)]
mod fuzz;
mod generation;
pub mod models;
mod request;
mod response;
mod sse;
pub mod tokenize;

pub use request::parse_object;
