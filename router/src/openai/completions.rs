//! `POST /v1/completions`.

use super::generation::{self, merged};
use super::request::{check_fan_out, fields, require, CommonFields, CompletionFields, Prompt};
use super::response::{
    collect, finish_reason, push_completion_logprob, stop_reason, usage, Collected, Meta,
    StreamUsage,
};
use super::sse::{chunks, sse_response, SseEvents};
use super::structured::StructuredFields;
use crate::error::ApiError;
use crate::extract::Body;
use crate::replicas::{Deployment, Models};
use crate::state::{App, RequestContext};
use crate::wire::{CompletionChoice, CompletionLogprobs, TextCompletion, TextCompletionChunk};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::stream::BoxStream;
use llm_serve_proto as pb;
use pb::generate_event::Event;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Completions' default `max_tokens` (OpenAI's and vLLM's).
const DEFAULT_MAX_TOKENS: u32 = 16;

pub async fn completions(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<RequestContext>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let Prepared {
        deployment,
        model,
        common,
        prompts,
        requests,
        n,
        echo,
    } = prepare(&app.models, &ctx.request_id, &body)?;
    let starts = requests.into_iter().map(|request| {
        let deployment = deployment.clone();
        async move { generation::start(&deployment, request).await }
    });
    // Every prompt is validated (and started) before anything is answered.
    let gens = futures::future::try_join_all(starts).await?;
    let echoes: Vec<String> = prompts
        .iter()
        .zip(&gens)
        .map(|(p, g)| match p {
            Prompt::Text(t) => t.clone(),
            Prompt::Tokens(_) => g.prompt_text.clone(),
        })
        .collect();
    let prompt_tokens: u32 = gens.iter().map(|g| g.prompt_tokens).sum();
    let meta = Meta::new("cmpl", &ctx.request_id, &model);
    // The text each choice starts with (its prompt, with echo).
    let prefixes: BTreeMap<u32, String> = (0..prompts.len() as u32 * n)
        .map(|c| {
            let p = if echo {
                echoes[(c / n) as usize].clone()
            } else {
                String::new()
            };
            (c, p)
        })
        .collect();
    let events = merged(gens, n);
    if common.stream() {
        let chunks = CompletionChunks {
            meta,
            usage: StreamUsage {
                include: common.include_usage(),
                continuous: common.continuous_usage(),
                prompt_tokens,
                completion_tokens: 0,
            },
            offsets: prefixes
                .iter()
                .map(|(&c, p)| (c, p.chars().count()))
                .collect(),
            pending_echo: prefixes
                .into_iter()
                .filter(|(_, p)| !p.is_empty())
                .collect(),
            finished: Default::default(),
        };
        Ok(sse_response(chunks.stream(events)))
    } else {
        let collected = collect(events).await?;
        Ok(Json(text_completion(&meta, &collected, &prefixes)).into_response())
    }
}

/// The whole completion of a request's collected events, each choice's
/// text after its prefix (the echoed prompt).
fn text_completion(
    meta: &Meta,
    collected: &Collected,
    prefixes: &BTreeMap<u32, String>,
) -> TextCompletion {
    let choices: Vec<CompletionChoice> = collected
        .choices
        .iter()
        .map(|(&index, c)| {
            let prefix = prefixes.get(&index).cloned().unwrap_or_default();
            let logprobs = (!c.logprobs.is_empty()).then(|| {
                let mut lp = CompletionLogprobs::default();
                let mut offset = prefix.chars().count();
                for (chosen, top) in &c.logprobs {
                    push_completion_logprob(&mut lp, chosen, top, offset);
                    offset += chosen.token.chars().count();
                }
                lp
            });
            CompletionChoice {
                index,
                text: prefix + &c.text,
                logprobs,
                finish_reason: finish_reason(c.finish.as_ref()),
                stop_reason: stop_reason(c.finish.as_ref()),
            }
        })
        .collect();
    meta.completion(OBJECT, choices, usage(&collected.usage))
}

/// A completions request checked as far as it can be before a replica
/// sees it: one replica request per prompt.
pub(crate) struct Prepared {
    pub deployment: Arc<Deployment>,
    /// The model as the client named it (`base:adapter` for an adapter).
    pub model: String,
    pub common: CommonFields,
    pub prompts: Vec<Prompt>,
    pub requests: Vec<pb::GenerateRequest>,
    /// Samples per prompt.
    pub n: u32,
    pub echo: bool,
}

/// Reads and checks a completions body and resolves its model.
pub(crate) fn prepare(
    models: &Models,
    request_id: &str,
    body: &Value,
) -> Result<Prepared, ApiError> {
    require(body, "prompt")?;
    let common: CommonFields = fields(body)?;
    let comp: CompletionFields = fields(body)?;
    let structured: StructuredFields = fields(body)?;
    common.check()?;
    comp.check()?;
    let prompts = comp.prompts()?;
    let constraint = structured.constraint()?;
    let target = models.resolve_target(common.model.as_deref())?;
    let (adapter_id, adapter_source) = target.adapter_fields();
    let deployment = target.deployment;
    check_fan_out(common.n(), prompts.len(), deployment.max_num_seqs())?;
    let sampling = common.sampling(
        Some(common.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
        comp.logprobs,
    )?;
    let n = sampling.n.max(1);
    let echo = comp.echo.unwrap_or(false);
    let add_special_tokens = comp.add_special_tokens.unwrap_or(true);
    let requests = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let input = match p {
                Prompt::Text(t) => pb::generate_request::Input::Text(pb::TextPrompt {
                    text: t.clone(),
                    add_special_tokens,
                }),
                Prompt::Tokens(ids) => {
                    pb::generate_request::Input::Tokens(pb::TokenPrompt { ids: ids.clone() })
                }
            };
            pb::GenerateRequest {
                request_id: if prompts.len() == 1 {
                    request_id.to_string()
                } else {
                    format!("{request_id}-{i}")
                },
                adapter_id: adapter_id.clone(),
                adapter_source: adapter_source.clone(),
                input: Some(input),
                sampling: Some(sampling.clone()),
                priority: common.priority.unwrap_or(0),
                echo_prompt: echo && matches!(p, Prompt::Tokens(_)),
                constraint: constraint.clone(),
            }
        })
        .collect();
    Ok(Prepared {
        deployment,
        model: target.name,
        common,
        prompts,
        requests,
        n,
        echo,
    })
}

const OBJECT: &str = "text_completion";

/// Turns events into `text_completion` chunks.
struct CompletionChunks {
    meta: Meta,
    usage: StreamUsage,
    /// Character offset of each choice's next token (for logprobs).
    offsets: BTreeMap<u32, usize>,
    /// Echoed prompts not yet sent, by choice.
    pending_echo: BTreeMap<u32, String>,
    /// Choices whose finish reason has been sent.
    finished: BTreeSet<u32>,
}

impl CompletionChunks {
    fn chunk(
        &self,
        index: u32,
        text: String,
        logprobs: Option<CompletionLogprobs>,
        finish: Option<&pb::Finish>,
    ) -> TextCompletionChunk {
        let choice = CompletionChoice {
            index,
            text,
            logprobs,
            finish_reason: finish_reason(finish),
            stop_reason: stop_reason(finish),
        };
        self.meta.chunk(OBJECT, vec![choice], self.usage.on_chunk())
    }

    fn on_event(&mut self, e: Event) -> Vec<TextCompletionChunk> {
        match e {
            Event::Token(t) => {
                self.usage.completion_tokens += 1;
                let echo = self.pending_echo.remove(&t.index).unwrap_or_default();
                let logprobs = t.logprob.as_ref().map(|lp| {
                    let offset = self.offsets.entry(t.index).or_default();
                    let mut l = CompletionLogprobs::default();
                    push_completion_logprob(&mut l, lp, &t.top_logprobs, *offset);
                    *offset += lp.token.chars().count();
                    l
                });
                if t.text.is_empty() && echo.is_empty() && logprobs.is_none() && t.finish.is_none()
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
                vec![self.chunk(s.index, echo, None, s.finish.as_ref())]
            }
            Event::Finished(f) => self
                .usage
                .last_chunk(&self.meta, OBJECT, &f)
                .into_iter()
                .collect(),
            Event::Started(_) | Event::Error(_) => Vec::new(),
        }
    }

    fn stream(
        mut self,
        events: BoxStream<'static, Result<Event, ApiError>>,
    ) -> SseEvents<TextCompletionChunk> {
        chunks(events, move |e| self.on_event(e))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::golden;
    use super::*;
    use futures::StreamExt;

    fn meta() -> Meta {
        Meta::new("cmpl", "req-1", "some/model")
    }

    fn to_text(v: &impl serde::Serialize) -> String {
        serde_json::to_string(v).unwrap()
    }

    /// Choices 0 and 2 echo their prompts, 1 does not.
    fn prefixes() -> BTreeMap<u32, String> {
        [
            (0, "Say hi: ".to_string()),
            (1, String::new()),
            (2, "ünï ".into()),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn chunks_are_byte_identical_to_the_json_literals() {
        for (include, continuous) in golden::USAGE_SETTINGS {
            let meta = meta();
            let old_meta = meta.old();
            let offsets: BTreeMap<u32, usize> = prefixes()
                .iter()
                .map(|(&c, p)| (c, p.chars().count()))
                .collect();
            let pending_echo: BTreeMap<u32, String> = prefixes()
                .into_iter()
                .filter(|(_, p)| !p.is_empty())
                .collect();
            let mut new = CompletionChunks {
                meta,
                usage: StreamUsage {
                    include,
                    continuous,
                    prompt_tokens: 11,
                    completion_tokens: 0,
                },
                offsets: offsets.clone(),
                pending_echo: pending_echo.clone(),
                finished: BTreeSet::new(),
            };
            let mut old = golden::CompletionChunks {
                meta: old_meta,
                usage: golden::OldStreamUsage {
                    include,
                    continuous,
                    prompt_tokens: 11,
                    completion_tokens: 0,
                },
                offsets,
                pending_echo,
                finished: BTreeSet::new(),
            };
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
        let new = to_text(&text_completion(&meta, &collected, &prefixes()));
        let old = golden::text_completion(&meta.old(), &collected, &prefixes()).to_string();
        assert_eq!(new, old);
        // A duplicate top token keeps its first place with its last value.
        assert!(
            new.contains(r#"{"é":-0.10000000149011612,"x":-2.5}"#),
            "{new}"
        );
    }
}
