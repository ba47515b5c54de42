//! The blocking facade over [`Engine::submit`]: one request, its text
//! handed to a callback as it becomes final, and the whole generation with
//! its timings at the end. `llm-serve generate`, `llm-serve bench` and the
//! model-level tests use it, so they run the serving path.

use super::request::{EngineEvent, EngineRequest};
use super::{Engine, RequestStream};
use crate::error::{invalid, EngineError, Result};
use crate::output::FinishReason;
use crate::sampling::{Sampled, SamplingParams};
use std::time::Instant;

/// One finished generation.
#[derive(Clone, Debug)]
pub struct Generation {
    pub prompt_tokens: usize,
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    /// Per generated token, when `logprobs` was asked for.
    pub logprobs: Vec<Sampled>,
    /// Seconds from submission to the first generated token (prefill).
    pub prefill_secs: f64,
    /// Seconds spent generating the remaining tokens.
    pub decode_secs: f64,
}

impl Engine {
    /// Generates one completion of `prompt` (token ids), calling `on_text`
    /// with each piece of text as it becomes final. Blocks the thread: not
    /// for async contexts.
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &SamplingParams,
        on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        if params.n != 1 {
            return Err(invalid("n", "generate produces one completion (n = 1)"));
        }
        let start = Instant::now();
        let stream = self.submit(EngineRequest {
            prompt: prompt.to_vec(),
            params: params.clone(),
            ..Default::default()
        })?;
        collect(stream, prompt.len(), start, on_text)
    }
}

/// Reads a one-sample stream to its end.
fn collect(
    mut stream: RequestStream,
    prompt_tokens: usize,
    start: Instant,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    let mut out = Generation {
        prompt_tokens,
        tokens: Vec::new(),
        text: String::new(),
        finish_reason: FinishReason::Abort,
        logprobs: Vec::new(),
        prefill_secs: 0.0,
        decode_secs: 0.0,
    };
    while let Some(event) = stream.blocking_next() {
        match event {
            EngineEvent::Token(t) => {
                if out.tokens.is_empty() {
                    out.prefill_secs = start.elapsed().as_secs_f64();
                }
                out.tokens.push(t.token);
                if let Some(lp) = t.logprobs {
                    out.logprobs.push(lp);
                }
                if !t.text.is_empty() {
                    on_text(&t.text);
                }
            }
            EngineEvent::SampleFinished { reason, text, .. } => {
                out.finish_reason = reason;
                out.text = text;
            }
            EngineEvent::Finished { .. } => {
                out.decode_secs = start.elapsed().as_secs_f64() - out.prefill_secs;
                return Ok(out);
            }
            EngineEvent::Error(e) => return Err(EngineError::Internal(e)),
        }
    }
    Err(EngineError::Internal(
        "the engine stopped before the request finished".into(),
    ))
}
