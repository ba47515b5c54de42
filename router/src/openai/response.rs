//! Pieces of OpenAI response bodies shared by the endpoints: usage,
//! finish reasons, logprobs in both shapes, and the collection of a
//! request's events into whole choices.

use crate::error::ApiError;
use futures::stream::BoxStream;
use futures::StreamExt;
use llm_serve_proto as pb;
use pb::generate_event::Event;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a response and each of its chunks carry about the request.
pub struct Meta {
    id: String,
    created: u64,
    model: String,
}

impl Meta {
    /// `id` is `{prefix}-{request id}` (`chatcmpl-...`, `cmpl-...`).
    pub fn new(prefix: &str, request_id: &str, model: &str) -> Self {
        Meta {
            id: format!("{prefix}-{request_id}"),
            created: unix_now(),
            model: model.to_string(),
        }
    }

    /// `{id, object, created, model, choices}`.
    pub fn object(&self, object: &str, choices: Vec<Value>) -> Value {
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }
}

/// Usage in a stream, as `stream_options` asks for it.
pub struct StreamUsage {
    /// `include_usage`: a last chunk with the usage and no choices.
    pub include: bool,
    /// `continuous_usage_stats`: the running usage on every chunk.
    pub continuous: bool,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

impl StreamUsage {
    /// Sets a content chunk's `usage` (null unless continuous).
    pub fn annotate(&self, chunk: &mut Value) {
        if self.continuous {
            chunk["usage"] = usage(self.prompt_tokens, self.completion_tokens, 0);
        } else if self.include {
            chunk["usage"] = Value::Null;
        }
    }

    /// The usage chunk that ends the stream, when asked for.
    pub fn last_chunk(&self, meta: &Meta, object: &str, f: &pb::Finished) -> Option<Value> {
        self.include.then(|| {
            let mut c = meta.object(object, Vec::new());
            c["usage"] = usage(f.prompt_tokens, f.completion_tokens, f.cached_prompt_tokens);
            c
        })
    }
}

pub fn usage(prompt_tokens: u32, completion_tokens: u32, cached_tokens: u32) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    })
}

pub fn finish_reason(f: Option<&pb::Finish>) -> Value {
    f.map_or(Value::Null, |f| Value::String(f.reason.clone()))
}

/// vLLM's `stop_reason`: the stop string or token id that ended the sample.
pub fn stop_reason(f: Option<&pb::Finish>) -> Value {
    use pb::finish::StopReason;
    match f.and_then(|f| f.stop_reason.as_ref()) {
        Some(StopReason::StopString(s)) => Value::String(s.clone()),
        Some(StopReason::StopTokenId(t)) => json!(t),
        None => Value::Null,
    }
}

/// A logprob as JSON can carry it (vLLM's floor for -inf).
fn logprob_value(lp: f32) -> f32 {
    if lp.is_finite() {
        lp
    } else {
        -9999.0
    }
}

/// One token of a chat `logprobs.content`.
pub fn chat_logprob(chosen: &pb::TokenLogprob, top: &[pb::TokenLogprob]) -> Value {
    let entry = |t: &pb::TokenLogprob| {
        json!({
            "token": t.token,
            "logprob": logprob_value(t.logprob),
            "bytes": t.bytes,
        })
    };
    let mut e = entry(chosen);
    e["top_logprobs"] = Value::Array(top.iter().map(entry).collect());
    e
}

/// Completions' logprobs: parallel lists over the choice's tokens.
#[derive(Debug, Default)]
pub struct CompletionLogprobs {
    tokens: Vec<Value>,
    token_logprobs: Vec<Value>,
    top_logprobs: Vec<Value>,
    text_offset: Vec<Value>,
}

impl CompletionLogprobs {
    /// Appends a token whose text starts at character `offset` of the
    /// choice's text.
    pub fn push(&mut self, chosen: &pb::TokenLogprob, top: &[pb::TokenLogprob], offset: usize) {
        self.tokens.push(json!(chosen.token));
        self.token_logprobs
            .push(json!(logprob_value(chosen.logprob)));
        let mut alts = Map::new();
        for t in top {
            alts.insert(t.token.clone(), json!(logprob_value(t.logprob)));
        }
        alts.entry(chosen.token.clone())
            .or_insert_with(|| json!(logprob_value(chosen.logprob)));
        self.top_logprobs.push(Value::Object(alts));
        self.text_offset.push(json!(offset));
    }

    pub fn to_json(&self) -> Value {
        json!({
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        })
    }
}

/// A sample's events gathered whole.
#[derive(Debug, Default)]
pub struct CollectedChoice {
    pub text: String,
    pub finish: Option<pb::Finish>,
    /// Per generated token, when logprobs were asked for.
    pub logprobs: Vec<(pb::TokenLogprob, Vec<pb::TokenLogprob>)>,
}

/// A request's events gathered whole (non-streaming responses).
#[derive(Debug, Default)]
pub struct Collected {
    pub choices: BTreeMap<u32, CollectedChoice>,
    pub usage: pb::Finished,
}

/// Reads every event; an error event is a 500.
pub async fn collect(
    mut events: BoxStream<'static, Result<Event, ApiError>>,
) -> Result<Collected, ApiError> {
    let mut out = Collected::default();
    while let Some(e) = events.next().await {
        match e? {
            Event::Started(_) => {}
            Event::Token(t) => {
                let c = out.choices.entry(t.index).or_default();
                c.text.push_str(&t.text);
                if let Some(lp) = t.logprob {
                    c.logprobs.push((lp, t.top_logprobs));
                }
                if t.finish.is_some() {
                    c.finish = t.finish;
                }
            }
            Event::SampleFinished(s) => {
                let c = out.choices.entry(s.index).or_default();
                c.text = s.text;
                if s.finish.is_some() {
                    c.finish = s.finish;
                }
            }
            Event::Finished(f) => out.usage = f,
            Event::Error(m) => return Err(ApiError::internal(format!("generation failed: {m}"))),
        }
    }
    Ok(out)
}
