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

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
