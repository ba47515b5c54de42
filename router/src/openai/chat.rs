//! `POST /v1/chat/completions`.

use super::generation::{self, Generation};
use super::request::{check_fan_out, fields, require, ChatFields, CommonFields};
use super::response::{
    chat_logprob, chat_logprobs, collect, finish_reason, stop_reason, usage, Collected, Meta,
    StreamUsage,
};
use super::sse::{chunks, sse_response, SseEvents};
use super::structured::StructuredFields;
use super::tools;
use crate::error::ApiError;
use crate::extract::Body;
use crate::replicas::{Deployment, Models};
use crate::state::{App, RequestContext};
use crate::tool_calls::{self, Assembled, CallEvent, CallParser, Reading};
use crate::wire::{
    ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk, ChatDelta, ChatLogprobs,
    ChatMessage, FunctionCall, FunctionDelta, ToolCall, ToolCallDelta,
};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::StreamExt;
use llm_serve_proto as pb;
use pb::generate_event::Event;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub async fn chat_completions(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<RequestContext>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let Prepared {
        deployment,
        model,
        common,
        request,
        reading,
    } = prepare(&app.models, &ctx.request_id, &body)?;
    let n = request.sampling.as_ref().map_or(1, |s| s.n.max(1));
    let generation = generation::start(&deployment, request).await?;
    let meta = Meta::new("chatcmpl", &ctx.request_id, &model);
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
            calls: reading.map(ToolStreams::new),
        };
        Ok(sse_response(chunks.stream(n, generation)))
    } else {
        Ok(Json(complete(meta, generation, reading.as_ref()).await?).into_response())
    }
}

/// A chat request checked as far as it can be before a replica sees it.
pub(crate) struct Prepared {
    pub deployment: Arc<Deployment>,
    /// The model as the client named it (`base:adapter` for an adapter).
    pub model: String,
    pub common: CommonFields,
    pub request: pb::GenerateRequest,
    /// How the answer's text is read for tool calls (`None`: content).
    pub reading: Option<Reading>,
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
    let structured: StructuredFields = fields(body)?;
    common.check()?;
    chat.check()?;
    let structured = structured.constraint()?;
    let target = models.resolve_target(common.model.as_deref())?;
    let (adapter_id, adapter_source) = target.adapter_fields();
    let deployment = target.deployment;
    check_fan_out(common.n(), 1, deployment.max_num_seqs())?;
    let plan = tools::plan(
        chat.tools.as_ref(),
        chat.tool_choice.as_ref(),
        chat.parallel_tool_calls,
        deployment.tool_call_format(),
        structured.is_some(),
    )?;
    let mut sampling = common.sampling(
        chat.max_completion_tokens.or(common.max_tokens),
        chat.logprobs()?,
    )?;
    if matches!(plan.reading, Some(Reading::Auto(_))) && common.skip_special_tokens.is_none() {
        // Tool-call markers (`<|python_tag|>`, `[TOOL_CALLS]`) are
        // special tokens: the parser has to see them.
        sampling.skip_special_tokens = false;
    }
    let request = pb::GenerateRequest {
        request_id: request_id.to_string(),
        adapter_id,
        adapter_source,
        input: Some(pb::generate_request::Input::Chat(chat.chat_input())),
        sampling: Some(sampling),
        priority: common.priority.unwrap_or(0),
        echo_prompt: false,
        constraint: plan.constraint.or(structured),
    };
    Ok(Prepared {
        deployment,
        model: target.name,
        common,
        request,
        reading: plan.reading,
    })
}

async fn complete(
    meta: Meta,
    generation: Generation,
    reading: Option<&Reading>,
) -> Result<ChatCompletion, ApiError> {
    Ok(chat_completion(
        &meta,
        &collect(generation.events).await?,
        reading,
    ))
}

/// The whole chat completion of a request's collected events.
fn chat_completion(
    meta: &Meta,
    collected: &Collected,
    reading: Option<&Reading>,
) -> ChatCompletion {
    let choices: Vec<ChatChoice> = collected
        .choices
        .iter()
        .map(|(&index, c)| {
            let (content, tool_calls) = match reading {
                None => (Some(c.text.clone()), Vec::new()),
                Some(r) => {
                    let a = Assembled::of_text(r, &c.text);
                    let calls: Vec<ToolCall> = a
                        .calls
                        .into_iter()
                        .map(|call| ToolCall {
                            id: tool_calls::call_id(),
                            kind: "function",
                            function: FunctionCall {
                                name: call.name,
                                arguments: call.arguments,
                            },
                        })
                        .collect();
                    let content = (!a.content.is_empty() || calls.is_empty()).then_some(a.content);
                    (content, calls)
                }
            };
            let finish = finish_reason(c.finish.as_ref());
            ChatChoice {
                index,
                finish_reason: with_calls(finish, reading, !tool_calls.is_empty()),
                message: ChatMessage {
                    role: "assistant",
                    content,
                    tool_calls,
                },
                logprobs: (!c.logprobs.is_empty()).then(|| {
                    chat_logprobs(c.logprobs.iter().map(|(lp, top)| (lp, top.as_slice())))
                }),
                stop_reason: stop_reason(c.finish.as_ref()),
            }
        })
        .collect();
    meta.completion("chat.completion", choices, usage(&collected.usage))
}

/// The finish reason of a choice that called tools: `tool_calls` for a
/// call the model chose (auto) or had to make (required), `stop` for a
/// named function (as OpenAI); `length` stays `length`.
fn with_calls(finish: Option<String>, reading: Option<&Reading>, called: bool) -> Option<String> {
    match (finish.as_deref(), reading) {
        (Some("stop"), Some(Reading::Auto(_) | Reading::Required)) if called => {
            Some("tool_calls".to_string())
        }
        _ => finish,
    }
}

/// Per choice, the parser reading its streamed text for tool calls.
struct ToolStreams {
    reading: Reading,
    parsers: BTreeMap<u32, Box<dyn CallParser>>,
    /// Choices that started a call.
    called: BTreeSet<u32>,
}

impl ToolStreams {
    fn new(reading: Reading) -> Self {
        ToolStreams {
            reading,
            parsers: BTreeMap::new(),
            called: BTreeSet::new(),
        }
    }

    /// The deltas choice `index`'s next text (and, at its end, whatever
    /// its parser held back) turns into.
    fn deltas(&mut self, index: u32, text: &str, end: bool) -> Vec<ChatDelta> {
        let reading = &self.reading;
        let parser = self
            .parsers
            .entry(index)
            .or_insert_with(|| tool_calls::parser(reading));
        let mut events = Vec::new();
        parser.push(text, &mut events);
        if end {
            parser.finish(&mut events);
        }
        if events.iter().any(|e| matches!(e, CallEvent::Start { .. })) {
            self.called.insert(index);
        }
        call_deltas(events)
    }
}

/// Events as deltas: runs of content, or of one call's arguments, merged.
fn call_deltas(events: Vec<CallEvent>) -> Vec<ChatDelta> {
    let mut out: Vec<ChatDelta> = Vec::new();
    for e in events {
        match e {
            CallEvent::Content(t) => match out.last_mut() {
                Some(ChatDelta {
                    content: Some(c),
                    tool_calls,
                    ..
                }) if tool_calls.is_empty() => c.push_str(&t),
                _ => out.push(content(t)),
            },
            CallEvent::Start { index, name } => out.push(calls_delta(ToolCallDelta {
                index: index as u32,
                id: Some(tool_calls::call_id()),
                kind: Some("function"),
                function: FunctionDelta {
                    name: Some(name),
                    arguments: Some(String::new()),
                },
            })),
            CallEvent::Arguments { index, fragment } => {
                let last = out.last_mut().and_then(|d| d.tool_calls.last_mut());
                match last {
                    Some(ToolCallDelta {
                        index: i,
                        id: None,
                        function:
                            FunctionDelta {
                                arguments: Some(a), ..
                            },
                        ..
                    }) if *i == index as u32 => a.push_str(&fragment),
                    _ => out.push(calls_delta(ToolCallDelta {
                        index: index as u32,
                        id: None,
                        kind: None,
                        function: FunctionDelta {
                            name: None,
                            arguments: Some(fragment),
                        },
                    })),
                }
            }
        }
    }
    out
}

fn calls_delta(call: ToolCallDelta) -> ChatDelta {
    ChatDelta {
        role: None,
        content: None,
        tool_calls: vec![call],
    }
}

const CHUNK: &str = "chat.completion.chunk";

/// Turns a generation's events into `chat.completion.chunk`s.
struct ChatChunks {
    meta: Meta,
    usage: StreamUsage,
    /// Choices whose finish reason has been sent.
    finished: BTreeSet<u32>,
    /// Set when the answer is read for tool calls.
    calls: Option<ToolStreams>,
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

    /// A tool-reading choice's chunks for `text`, and its last chunk
    /// (finish reason with `tool_calls` for calls) when `finish` is set.
    fn tool_chunks(
        &mut self,
        index: u32,
        text: &str,
        mut logprobs: Option<ChatLogprobs>,
        finish: Option<&pb::Finish>,
    ) -> Vec<ChatCompletionChunk> {
        let Some(calls) = self.calls.as_mut() else {
            return Vec::new();
        };
        let mut deltas = calls.deltas(index, text, finish.is_some());
        if deltas.is_empty() && logprobs.is_some() {
            deltas.push(content(String::new()));
        }
        let called = calls.called.contains(&index);
        let finish_reason =
            finish.map(|f| with_calls(finish_reason(Some(f)), Some(&calls.reading), called));
        let mut out: Vec<ChatCompletionChunk> = deltas
            .into_iter()
            .map(|d| self.chunk(index, d, logprobs.take(), None))
            .collect();
        if let Some(f) = finish {
            let choice = ChatChunkChoice {
                index,
                delta: content(String::new()),
                logprobs: None,
                finish_reason: finish_reason.flatten(),
                stop_reason: stop_reason(Some(f)),
            };
            out.push(self.meta.chunk(CHUNK, vec![choice], self.usage.on_chunk()));
        }
        out
    }

    /// The chunks one event turns into (often one, sometimes none).
    fn on_event(&mut self, e: Event) -> Vec<ChatCompletionChunk> {
        match e {
            Event::Token(t) if self.calls.is_some() => {
                self.usage.completion_tokens += 1;
                let logprobs = t.logprob.as_ref().map(|lp| ChatLogprobs {
                    content: vec![chat_logprob(lp, &t.top_logprobs)],
                });
                if t.finish.is_some() {
                    self.finished.insert(t.index);
                }
                self.tool_chunks(t.index, &t.text, logprobs, t.finish.as_ref())
            }
            Event::SampleFinished(s) if self.calls.is_some() => {
                if !self.finished.insert(s.index) {
                    return Vec::new();
                }
                self.tool_chunks(s.index, "", None, s.finish.as_ref())
            }
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
                    content: Some(String::new()),
                    tool_calls: Vec::new(),
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
        content: Some(text),
        tool_calls: Vec::new(),
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
                calls: None,
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
                        content: Some(String::new()),
                        tool_calls: Vec::new(),
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
        let new = to_text(&chat_completion(&meta, &collected, None));
        let old = golden::chat_completion(&meta.old(), &collected).to_string();
        assert_eq!(new, old);
        assert!(new.contains(r#""logprob":-0.10000000149011612"#), "{new}");
    }
}
