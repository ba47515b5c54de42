//! The router's response bodies and stream chunks as it built them before
//! they were typed (`serde_json::json!` literals, kept verbatim here), so
//! tests can check that the typed `wire` structs write exactly the same
//! bytes: field names, order, `null`s and number formatting.

use llm_serve_proto as pb;
use pb::generate_event::Event;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The old `Meta`, with the same id, time and model as a new one.
pub struct OldMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl OldMeta {
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

pub struct OldStreamUsage {
    pub include: bool,
    pub continuous: bool,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

impl OldStreamUsage {
    pub fn annotate(&self, chunk: &mut Value) {
        if self.continuous {
            chunk["usage"] = usage(self.prompt_tokens, self.completion_tokens, 0);
        } else if self.include {
            chunk["usage"] = Value::Null;
        }
    }

    pub fn last_chunk(&self, meta: &OldMeta, object: &str, f: &pb::Finished) -> Option<Value> {
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

pub fn stop_reason(f: Option<&pb::Finish>) -> Value {
    use pb::finish::StopReason;
    match f.and_then(|f| f.stop_reason.as_ref()) {
        Some(StopReason::StopString(s)) => Value::String(s.clone()),
        Some(StopReason::StopTokenId(t)) => json!(t),
        None => Value::Null,
    }
}

fn logprob_value(lp: f32) -> f32 {
    if lp.is_finite() {
        lp
    } else {
        -9999.0
    }
}

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

#[derive(Debug, Default)]
pub struct CompletionLogprobs {
    tokens: Vec<Value>,
    token_logprobs: Vec<Value>,
    top_logprobs: Vec<Value>,
    text_offset: Vec<Value>,
}

impl CompletionLogprobs {
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

/// The old non-streamed chat body, from the collected choices.
pub fn chat_completion(meta: &OldMeta, collected: &super::response::Collected) -> Value {
    let choices: Vec<Value> = collected
        .choices
        .iter()
        .map(|(&index, c)| {
            let logprobs = if c.logprobs.is_empty() {
                Value::Null
            } else {
                json!({"content": c.logprobs.iter().map(|(lp, top)| chat_logprob(lp, top)).collect::<Vec<_>>()})
            };
            json!({
                "index": index,
                "message": {"role": "assistant", "content": c.text, "tool_calls": []},
                "logprobs": logprobs,
                "finish_reason": finish_reason(c.finish.as_ref()),
                "stop_reason": stop_reason(c.finish.as_ref()),
            })
        })
        .collect();
    let u = &collected.usage;
    let mut body = meta.object("chat.completion", choices);
    body["usage"] = usage(u.prompt_tokens, u.completion_tokens, u.cached_prompt_tokens);
    body
}

/// The old non-streamed completions body.
pub fn text_completion(
    meta: &OldMeta,
    collected: &super::response::Collected,
    prefixes: &BTreeMap<u32, String>,
) -> Value {
    let choices: Vec<Value> = collected
        .choices
        .iter()
        .map(|(&index, c)| {
            let prefix = prefixes.get(&index).cloned().unwrap_or_default();
            let logprobs = if c.logprobs.is_empty() {
                Value::Null
            } else {
                let mut lp = CompletionLogprobs::default();
                let mut offset = prefix.chars().count();
                for (chosen, top) in &c.logprobs {
                    lp.push(chosen, top, offset);
                    offset += chosen.token.chars().count();
                }
                lp.to_json()
            };
            json!({
                "index": index,
                "text": prefix + &c.text,
                "logprobs": logprobs,
                "finish_reason": finish_reason(c.finish.as_ref()),
                "stop_reason": stop_reason(c.finish.as_ref()),
            })
        })
        .collect();
    let u = &collected.usage;
    let mut body = meta.object("text_completion", choices);
    body["usage"] = usage(u.prompt_tokens, u.completion_tokens, u.cached_prompt_tokens);
    body
}

/// The old chat chunker.
pub struct ChatChunks {
    pub meta: OldMeta,
    pub usage: OldStreamUsage,
    pub finished: BTreeSet<u32>,
}

const CHAT_CHUNK: &str = "chat.completion.chunk";

impl ChatChunks {
    fn chunk(
        &self,
        index: u32,
        delta: Value,
        logprobs: Value,
        finish: Option<&pb::Finish>,
    ) -> Value {
        let mut c = self.meta.object(
            CHAT_CHUNK,
            vec![json!({
                "index": index,
                "delta": delta,
                "logprobs": logprobs,
                "finish_reason": finish_reason(finish),
                "stop_reason": stop_reason(finish),
            })],
        );
        self.usage.annotate(&mut c);
        c
    }

    pub fn first(&self, n: u32) -> Vec<Value> {
        (0..n)
            .map(|i| {
                self.chunk(
                    i,
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                    None,
                )
            })
            .collect()
    }

    pub fn on_event(&mut self, e: Event) -> Vec<Value> {
        match e {
            Event::Token(t) => {
                self.usage.completion_tokens += 1;
                let logprobs = match &t.logprob {
                    Some(lp) => json!({"content": [chat_logprob(lp, &t.top_logprobs)]}),
                    None => Value::Null,
                };
                if t.text.is_empty() && logprobs.is_null() && t.finish.is_none() {
                    return Vec::new();
                }
                if t.finish.is_some() {
                    self.finished.insert(t.index);
                }
                vec![self.chunk(
                    t.index,
                    json!({"content": t.text}),
                    logprobs,
                    t.finish.as_ref(),
                )]
            }
            Event::SampleFinished(s) => {
                if !self.finished.insert(s.index) {
                    return Vec::new();
                }
                vec![self.chunk(
                    s.index,
                    json!({"content": ""}),
                    Value::Null,
                    s.finish.as_ref(),
                )]
            }
            Event::Finished(f) => self
                .usage
                .last_chunk(&self.meta, CHAT_CHUNK, &f)
                .into_iter()
                .collect(),
            Event::Started(_) | Event::Error(_) => Vec::new(),
        }
    }
}

/// The old completions chunker.
pub struct CompletionChunks {
    pub meta: OldMeta,
    pub usage: OldStreamUsage,
    pub offsets: BTreeMap<u32, usize>,
    pub pending_echo: BTreeMap<u32, String>,
    pub finished: BTreeSet<u32>,
}

impl CompletionChunks {
    fn chunk(
        &self,
        index: u32,
        text: String,
        logprobs: Value,
        finish: Option<&pb::Finish>,
    ) -> Value {
        let mut c = self.meta.object(
            "text_completion",
            vec![json!({
                "index": index,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": finish_reason(finish),
                "stop_reason": stop_reason(finish),
            })],
        );
        self.usage.annotate(&mut c);
        c
    }

    pub fn on_event(&mut self, e: Event) -> Vec<Value> {
        match e {
            Event::Token(t) => {
                self.usage.completion_tokens += 1;
                let echo = self.pending_echo.remove(&t.index).unwrap_or_default();
                let logprobs = match &t.logprob {
                    Some(lp) => {
                        let offset = self.offsets.entry(t.index).or_default();
                        let mut l = CompletionLogprobs::default();
                        l.push(lp, &t.top_logprobs, *offset);
                        *offset += lp.token.chars().count();
                        l.to_json()
                    }
                    None => Value::Null,
                };
                if t.text.is_empty() && echo.is_empty() && logprobs.is_null() && t.finish.is_none()
                {
                    return Vec::new();
                }
                if t.finish.is_some() {
                    self.finished.insert(t.index);
                }
                vec![self.chunk(t.index, echo + &t.text, logprobs, t.finish.as_ref())]
            }
            Event::SampleFinished(s) => {
                if !self.finished.insert(s.index) {
                    return Vec::new();
                }
                let echo = self.pending_echo.remove(&s.index).unwrap_or_default();
                vec![self.chunk(s.index, echo, Value::Null, s.finish.as_ref())]
            }
            Event::Finished(f) => self
                .usage
                .last_chunk(&self.meta, "text_completion", &f)
                .into_iter()
                .collect(),
            Event::Started(_) | Event::Error(_) => Vec::new(),
        }
    }
}

/// Events of a generation with every shape the chunkers handle: two
/// samples, text and empty tokens, logprobs of awkward values (widened
/// `f32`s, -inf, NaN, duplicate top tokens, the chosen token not among
/// the top ones, multi-byte text), stop strings and stop token ids, a
/// sample finished by `SampleFinished` alone, and the final usage.
pub fn events() -> Vec<Event> {
    let lp = |token: &str, logprob: f32| pb::TokenLogprob {
        token_id: 7,
        token: token.to_string(),
        bytes: token.as_bytes().to_vec(),
        logprob,
    };
    let finish = |reason: &str, stop: Option<pb::finish::StopReason>| pb::Finish {
        reason: reason.to_string(),
        stop_reason: stop,
    };
    let token = |index: u32, text: &str| pb::TokenEvent {
        index,
        text: text.to_string(),
        ..Default::default()
    };
    vec![
        Event::Started(pb::Started::default()),
        Event::Token(token(0, "Hello")),
        Event::Token(pb::TokenEvent {
            logprob: Some(lp("é", -0.1)),
            top_logprobs: vec![lp("é", -0.1), lp("x", f32::NEG_INFINITY), lp("x", -2.5)],
            ..token(1, "é")
        }),
        Event::Token(token(0, "")),
        Event::Token(pb::TokenEvent {
            logprob: Some(lp(" wor", -1.234_567_9)),
            top_logprobs: vec![lp("a", f32::NAN), lp("b", -3.0e-8)],
            ..token(0, " wor")
        }),
        Event::Token(pb::TokenEvent {
            logprob: Some(lp("", -0.5)),
            ..token(1, "")
        }),
        Event::Token(pb::TokenEvent {
            finish: Some(finish(
                "stop",
                Some(pb::finish::StopReason::StopString("ld".into())),
            )),
            ..token(0, "ld")
        }),
        Event::SampleFinished(pb::SampleFinished {
            index: 0,
            finish: Some(finish(
                "stop",
                Some(pb::finish::StopReason::StopString("ld".into())),
            )),
            text: "Hello world".into(),
        }),
        Event::SampleFinished(pb::SampleFinished {
            index: 1,
            finish: Some(finish("stop", Some(pb::finish::StopReason::StopTokenId(2)))),
            text: "é".into(),
        }),
        Event::Token(pb::TokenEvent {
            finish: Some(finish("length", None)),
            ..token(2, "!")
        }),
        Event::Finished(pb::Finished {
            prompt_tokens: 11,
            completion_tokens: 7,
            cached_prompt_tokens: 3,
        }),
    ]
}

/// Every `stream_options` usage setting: (include_usage, continuous).
pub const USAGE_SETTINGS: [(bool, bool); 3] = [(false, false), (true, false), (true, true)];
