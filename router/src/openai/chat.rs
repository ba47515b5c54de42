//! `POST /v1/chat/completions`.

use super::generation::{self, Generation};
use super::request::{check_fan_out, fields, require, ChatFields, CommonFields};
use super::response::{
    chat_logprob, chat_logprobs, collect, finish_reason, stop_reason, usage, Collected, Meta,
    StreamUsage,
};
use super::sse::{chunks, sse_response, SseEvents};
use crate::error::ApiError;
use crate::extract::Body;
use crate::replicas::{Deployment, Models};
use crate::state::{App, RequestContext};
use crate::wire::{
    ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk, ChatDelta, ChatLogprobs,
    ChatMessage,
};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::StreamExt;
use llm_serve_proto as pb;
use pb::generate_event::Event;
use serde_json::Value;
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

async fn complete(meta: Meta, generation: Generation) -> Result<ChatCompletion, ApiError> {
    Ok(chat_completion(&meta, &collect(generation.events).await?))
}

/// The whole chat completion of a request's collected events.
fn chat_completion(meta: &Meta, collected: &Collected) -> ChatCompletion {
    let choices: Vec<ChatChoice> = collected
        .choices
        .iter()
        .map(|(&index, c)| ChatChoice {
            index,
            message: ChatMessage {
                role: "assistant",
                content: c.text.clone(),
                tool_calls: [],
            },
            logprobs: (!c.logprobs.is_empty())
                .then(|| chat_logprobs(c.logprobs.iter().map(|(lp, top)| (lp, top.as_slice())))),
            finish_reason: finish_reason(c.finish.as_ref()),
            stop_reason: stop_reason(c.finish.as_ref()),
        })
        .collect();
    meta.completion("chat.completion", choices, usage(&collected.usage))
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
        delta: ChatDelta,
        logprobs: Option<ChatLogprobs>,
        finish: Option<&pb::Finish>,
    ) -> ChatCompletionChunk {
        let choice = ChatChunkChoice {
            index,
            delta,
            logprobs,
            finish_reason: finish_reason(finish),
            stop_reason: stop_reason(finish),
        };
        self.meta.chunk(CHUNK, vec![choice], self.usage.on_chunk())
    }

    /// The chunks one event turns into (often one, sometimes none).
    fn on_event(&mut self, e: Event) -> Vec<ChatCompletionChunk> {
        match e {
            Event::Token(t) => {
                self.usage.completion_tokens += 1;
                let logprobs = t.logprob.as_ref().map(|lp| ChatLogprobs {
                    content: vec![chat_logprob(lp, &t.top_logprobs)],
                });
                if t.text.is_empty() && logprobs.is_none() && t.finish.is_none() {
                    return Vec::new();
                }
                if t.finish.is_some() {
                    self.finished.insert(t.index);
                }
                vec![self.chunk(t.index, content(t.text), logprobs, t.finish.as_ref())]
            }
            Event::SampleFinished(s) => {
                if !self.finished.insert(s.index) {
                    return Vec::new();
                }
                vec![self.chunk(s.index, content(String::new()), None, s.finish.as_ref())]
            }
            Event::Finished(f) => self
                .usage
                .last_chunk(&self.meta, CHUNK, &f)
                .into_iter()
                .collect(),
            Event::Started(_) | Event::Error(_) => Vec::new(),
        }
    }

    fn stream(mut self, n: u32, generation: Generation) -> SseEvents<ChatCompletionChunk> {
        // A first chunk per choice carries the role, as OpenAI and vLLM
        // send it, before any content.
        let first: Vec<Result<ChatCompletionChunk, ApiError>> = (0..n)
            .map(|i| {
                let delta = ChatDelta {
                    role: Some("assistant"),
                    content: String::new(),
                };
                Ok(self.chunk(i, delta, None, None))
            })
            .collect();
        let rest = chunks(generation.events, move |e| self.on_event(e));
        futures::stream::iter(first).chain(rest).boxed()
    }
}

/// A delta of content only.
fn content(text: String) -> ChatDelta {
    ChatDelta {
        role: None,
        content: text,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::golden;
    use super::*;

    fn meta() -> Meta {
        Meta::new("chatcmpl", "req-1", "some/model")
    }

    fn to_text(v: &impl serde::Serialize) -> String {
        serde_json::to_string(v).unwrap()
    }

    #[test]
    fn chunks_are_byte_identical_to_the_json_literals() {
        for (include, continuous) in golden::USAGE_SETTINGS {
            let meta = meta();
            let old_meta = meta.old();
            let usage = |prompt_tokens| StreamUsage {
                include,
                continuous,
                prompt_tokens,
                completion_tokens: 0,
            };
            let mut new = ChatChunks {
                meta,
                usage: usage(11),
                finished: BTreeSet::new(),
            };
            let mut old = golden::ChatChunks {
                meta: old_meta,
                usage: golden::OldStreamUsage {
                    include,
                    continuous,
                    prompt_tokens: 11,
                    completion_tokens: 0,
                },
                finished: BTreeSet::new(),
            };
            let first: Vec<String> = (0..3)
                .map(|i| {
                    let delta = ChatDelta {
                        role: Some("assistant"),
                        content: String::new(),
                    };
                    to_text(&new.chunk(i, delta, None, None))
                })
                .collect();
            let old_first: Vec<String> = old.first(3).iter().map(|v| v.to_string()).collect();
            assert_eq!(first, old_first);
            let mut count = 0;
            for e in golden::events() {
                let a: Vec<String> = new.on_event(e.clone()).iter().map(to_text).collect();
                let b: Vec<String> = old.on_event(e).iter().map(|v| v.to_string()).collect();
                assert_eq!(a, b, "include_usage={include} continuous={continuous}");
                count += a.len();
            }
            assert!(count >= 6, "{count} chunks");
        }
    }

    #[tokio::test]
    async fn whole_response_is_byte_identical_to_the_json_literal() {
        let events = futures::stream::iter(golden::events().into_iter().map(Ok)).boxed();
        let collected = collect(events).await.unwrap();
        let meta = meta();
        let new = to_text(&chat_completion(&meta, &collected));
        let old = golden::chat_completion(&meta.old(), &collected).to_string();
        assert_eq!(new, old);
        assert!(new.contains(r#""logprob":-0.10000000149011612"#), "{new}");
    }
}
