//! The inference engine: tokenizer and chat template, sampler, output
//! processing (incremental text, stop conditions), and the serving engine
//! (scheduler, model runner) that every driver of the model goes through.

pub mod adapters;
pub mod chat_template;
pub mod engine;
mod error;
pub mod output;
pub mod replica;
pub mod sampling;
pub mod structured;
pub mod tokenizer;
mod tool_format;

pub use chat_template::{ChatTemplate, TemplateArgs};
pub use engine::{
    available_memory_bytes, check_prompt_length, os_available_memory_bytes, AdapterActivity,
    AdapterRef, Engine, EngineConfig, EngineEvent, EngineInfo, EngineRequest, EngineStats,
    Generation, RequestStream, SchedulingPolicy, TokenDelta, Usage, MEMORY_LIMIT_ENV,
};
pub use error::{EngineError, Result};
pub use output::{FinishReason, OutputState, TokenUpdate};
pub use sampling::{ConstraintStatus, LogitsProcessor, Sampled, SamplingParams, SequenceSampler};
pub use tokenizer::Tokenizer;
pub use tool_format::ToolCallFormat;
