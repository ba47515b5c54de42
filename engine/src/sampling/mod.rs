//! Sampling with vLLM's semantics: parameters and their validation, and the
//! per-sequence sampler that turns a row of logits into the next token.

mod params;
mod processors;
mod sampler;

pub use params::{SamplingParams, MAX_LOGPROBS};
pub use processors::{builtin as builtin_processors, ConstraintStatus, LogitsProcessor};
pub use sampler::{Sampled, SequenceSampler};
