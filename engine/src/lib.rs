//! The inference engine: tokenizer and chat template, sampler, output
//! processing (incremental text, stop conditions), and generation over the
//! model runtime.

pub mod chat_template;
pub mod engine;
mod error;
pub mod generate;
pub mod output;
pub mod replica;
pub mod sampling;
pub mod tokenizer;

pub use chat_template::{ChatTemplate, TemplateArgs};
pub use engine::{
    available_memory_bytes, os_available_memory_bytes, Engine, EngineConfig, EngineEvent,
    EngineInfo, EngineRequest, EngineStats, RequestStream, SchedulingPolicy, TokenDelta, Usage,
    MEMORY_LIMIT_ENV,
};
pub use error::{EngineError, Result};
pub use generate::{Generation, Generator};
pub use output::{FinishReason, OutputState, TokenUpdate};
pub use sampling::{Sampled, SamplingParams, SequenceSampler};
pub use tokenizer::Tokenizer;
