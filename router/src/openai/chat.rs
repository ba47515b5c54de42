//! `POST /v1/chat/completions`.

use super::generation::{self, Generation};
use super::request::{fields, require, ChatFields, CommonFields};
use super::response::{chat_logprob, collect, finish_reason, stop_reason, unix_now, usage};
use super::sse::{sse_response, SseEvents};
use crate::app::{App, Body, RequestContext};
use crate::error::ApiError;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::StreamExt;
use llm_serve_proto as pb;
use pb::generate_event::Event;
use serde_json::{json, Value};
use std::sync::Arc;

pub async fn chat_completions(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<RequestContext>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    require(&body, "messages")?;
    let common: CommonFields = fields(&body)?;
    let chat: ChatFields = fields(&body)?;
    common.check()?;
    chat.check()?;
    let deployment = app.models.resolve(common.model.as_deref())?;
    let sampling = common.sampling(
        chat.max_completion_tokens.or(common.max_tokens),
        chat.logprobs()?,
    )?;
    let n = sampling.n.max(1);
    let request = pb::GenerateRequest {
        request_id: ctx.request_id.clone(),
        adapter_id: String::new(),
        input: Some(pb::generate_request::Input::Chat(chat.chat_input()?)),
        sampling: Some(sampling),
        priority: common.priority.unwrap_or(0),
        echo_prompt: false,
    };
    let generation = generation::start(&deployment, request).await?;
    let meta = Meta {
        id: format!("chatcmpl-{}", ctx.request_id),
        created: unix_now(),
        model: deployment.model_id.clone(),
    };
    if common.stream() {
        let chunks = ChatChunks {
            meta,
            n,
            include_usage: common.include_usage(),
            continuous_usage: common.continuous_usage(),
            prompt_tokens: generation.prompt_tokens,
            completion_tokens: 0,
            finished: vec![false; n as usize],
        };
        Ok(sse_response(chunks.stream(generation)))
    } else {
        Ok(Json(complete(meta, generation).await?).into_response())
    }
}

struct Meta {
    id: String,
    created: u64,
    model: String,
}

async fn complete(meta: Meta, generation: Generation) -> Result<Value, ApiError> {
    let collected = collect(generation.events).await?;
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
    Ok(json!({
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
        "usage": usage(u.prompt_tokens, u.completion_tokens, u.cached_prompt_tokens),
    }))
}

/// Turns a generation's events into `chat.completion.chunk`s.
struct ChatChunks {
    meta: Meta,
    n: u32,
    include_usage: bool,
    continuous_usage: bool,
    prompt_tokens: u32,
    completion_tokens: u32,
    finished: Vec<bool>,
}

impl ChatChunks {
    fn chunk(&self, choices: Vec<Value>) -> Value {
        let mut c = json!({
            "id": self.meta.id,
            "object": "chat.completion.chunk",
            "created": self.meta.created,
            "model": self.meta.model,
            "choices": choices,
        });
        if self.continuous_usage {
            c["usage"] = usage(self.prompt_tokens, self.completion_tokens, 0);
        } else if self.include_usage {
            c["usage"] = Value::Null;
        }
        c
    }

    fn choice(index: u32, delta: Value, logprobs: Value, finish: Option<&pb::Finish>) -> Value {
        json!({
            "index": index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": finish_reason(finish),
            "stop_reason": stop_reason(finish),
        })
    }

    /// The chunks one event turns into (often one, sometimes none).
    fn on_event(&mut self, e: Event) -> Vec<Value> {
        match e {
            Event::Token(t) => {
                self.completion_tokens += 1;
                let logprobs = match &t.logprob {
                    Some(lp) => json!({"content": [chat_logprob(lp, &t.top_logprobs)]}),
                    None => Value::Null,
                };
                if t.text.is_empty() && logprobs.is_null() && t.finish.is_none() {
                    return Vec::new();
                }
                if t.finish.is_some() {
                    if let Some(f) = self.finished.get_mut(t.index as usize) {
                        *f = true;
                    }
                }
                vec![self.chunk(vec![Self::choice(
                    t.index,
                    json!({"content": t.text}),
                    logprobs,
                    t.finish.as_ref(),
                )])]
            }
            Event::SampleFinished(s) => {
                let done = self.finished.get(s.index as usize).copied().unwrap_or(true);
                if done {
                    return Vec::new();
                }
                if let Some(f) = self.finished.get_mut(s.index as usize) {
                    *f = true;
                }
                vec![self.chunk(vec![Self::choice(
                    s.index,
                    json!({"content": ""}),
                    Value::Null,
                    s.finish.as_ref(),
                )])]
            }
            Event::Finished(f) => {
                if !self.include_usage {
                    return Vec::new();
                }
                let mut c = self.chunk(Vec::new());
                c["usage"] = usage(f.prompt_tokens, f.completion_tokens, f.cached_prompt_tokens);
                vec![c]
            }
            Event::Started(_) | Event::Error(_) => Vec::new(),
        }
    }

    fn stream(mut self, generation: Generation) -> SseEvents {
        // A first chunk per choice carries the role, as OpenAI and vLLM
        // send it, before any content.
        let first: Vec<Result<Value, ApiError>> = (0..self.n)
            .map(|i| {
                Ok(self.chunk(vec![Self::choice(
                    i,
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                    None,
                )]))
            })
            .collect();
        let rest = generation.events.flat_map(move |e| {
            let out: Vec<Result<Value, ApiError>> = match e {
                Ok(Event::Error(m)) => {
                    vec![Err(ApiError::internal(format!("generation failed: {m}")))]
                }
                Ok(e) => self.on_event(e).into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(out)
        });
        futures::stream::iter(first).chain(rest).boxed()
    }
}
