//! `POST /v1/chat/completions`.

use super::generation::{self, Generation};
use super::request::{check_fan_out, fields, require, ChatFields, CommonFields};
use super::response::{
    chat_logprob, collect, finish_reason, stop_reason, usage, Meta, StreamUsage,
};
use super::sse::{chunks, sse_response, SseEvents};
use crate::app::{App, Body, RequestContext};
use crate::error::ApiError;
use crate::replicas::{Deployment, Models};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::StreamExt;
use llm_serve_proto as pb;
use pb::generate_event::Event;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;

pub async fn chat_completions(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<RequestContext>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let Prepared {
        deployment,
        common,
        request,
    } = prepare(&app.models, &ctx.request_id, &body)?;
    let n = request.sampling.as_ref().map_or(1, |s| s.n.max(1));
    let generation = generation::start(&deployment, request).await?;
    let meta = Meta::new("chatcmpl", &ctx.request_id, &deployment.model_id);
    if common.stream() {
        let chunks = ChatChunks {
            meta,
            usage: StreamUsage {
                include: common.include_usage(),
                continuous: common.continuous_usage(),
                prompt_tokens: generation.prompt_tokens,
                completion_tokens: 0,
            },
            finished: BTreeSet::new(),
        };
        Ok(sse_response(chunks.stream(n, generation)))
    } else {
        Ok(Json(complete(meta, generation).await?).into_response())
    }
}

/// A chat request checked as far as it can be before a replica sees it.
pub(crate) struct Prepared {
    pub deployment: Arc<Deployment>,
    pub common: CommonFields,
    pub request: pb::GenerateRequest,
}

/// Reads and checks a chat body and resolves its model: everything that
/// is the router's to refuse (400 naming the field, 404 for the model).
pub(crate) fn prepare(
    models: &Models,
    request_id: &str,
    body: &Value,
) -> Result<Prepared, ApiError> {
    require(body, "messages")?;
    let common: CommonFields = fields(body)?;
    let chat: ChatFields = fields(body)?;
    common.check()?;
    chat.check()?;
    let deployment = models.resolve(common.model.as_deref())?;
    check_fan_out(common.n(), 1, deployment.max_num_seqs())?;
    let sampling = common.sampling(
        chat.max_completion_tokens.or(common.max_tokens),
        chat.logprobs()?,
    )?;
    let request = pb::GenerateRequest {
        request_id: request_id.to_string(),
        adapter_id: String::new(),
        input: Some(pb::generate_request::Input::Chat(chat.chat_input())),
        sampling: Some(sampling),
        priority: common.priority.unwrap_or(0),
        echo_prompt: false,
    };
    Ok(Prepared {
        deployment,
        common,
        request,
    })
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
    let mut body = meta.object("chat.completion", choices);
    body["usage"] = usage(u.prompt_tokens, u.completion_tokens, u.cached_prompt_tokens);
    Ok(body)
}

const CHUNK: &str = "chat.completion.chunk";

/// Turns a generation's events into `chat.completion.chunk`s.
struct ChatChunks {
    meta: Meta,
    usage: StreamUsage,
    /// Choices whose finish reason has been sent.
    finished: BTreeSet<u32>,
}

impl ChatChunks {
    fn chunk(
        &self,
        index: u32,
        delta: Value,
        logprobs: Value,
        finish: Option<&pb::Finish>,
    ) -> Value {
        let mut c = self.meta.object(
            CHUNK,
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

    /// The chunks one event turns into (often one, sometimes none).
    fn on_event(&mut self, e: Event) -> Vec<Value> {
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
                .last_chunk(&self.meta, CHUNK, &f)
                .into_iter()
                .collect(),
            Event::Started(_) | Event::Error(_) => Vec::new(),
        }
    }

    fn stream(mut self, n: u32, generation: Generation) -> SseEvents {
        // A first chunk per choice carries the role, as OpenAI and vLLM
        // send it, before any content.
        let first: Vec<Result<Value, ApiError>> = (0..n)
            .map(|i| {
                Ok(self.chunk(
                    i,
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                    None,
                ))
            })
            .collect();
        let rest = chunks(generation.events, move |e| self.on_event(e));
        futures::stream::iter(first).chain(rest).boxed()
    }
}
