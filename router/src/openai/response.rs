//! Pieces of OpenAI response bodies shared by the endpoints, built as the
//! `wire` types: the envelope of responses and chunks, usage, finish
//! reasons, logprobs in both shapes; and the collection of a request's
//! events into whole choices.

use crate::error::ApiError;
use crate::wire::{
    ChatLogprobs, ChatTokenLogprob, ChatTopLogprob, Chunk, Completion, CompletionLogprobs,
    StopReason, TopLogprobs, Usage,
};
use futures::stream::BoxStream;
use futures::StreamExt;
use llm_serve_proto as pb;
use pb::generate_event::Event;
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

    /// A whole response: `{id, object, created, model, choices, usage}`.
    pub fn completion<C>(
        &self,
        object: &'static str,
        choices: Vec<C>,
        usage: Usage,
    ) -> Completion<C> {
        Completion {
            id: self.id.clone(),
            object,
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }

    /// A chunk: `{id, object, created, model, choices}` and `usage` when
    /// given (see `Chunk::usage`).
    pub fn chunk<C>(
        &self,
        object: &'static str,
        choices: Vec<C>,
        usage: Option<Option<Usage>>,
    ) -> Chunk<C> {
        Chunk {
            id: self.id.clone(),
            object,
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }
}

#[cfg(test)]
impl Meta {
    /// The same facts for the old, untyped bodies (`golden`).
    pub fn old(&self) -> super::golden::OldMeta {
        super::golden::OldMeta {
            id: self.id.clone(),
            created: self.created,
            model: self.model.clone(),
        }
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
    /// A content chunk's `usage`: the running usage when continuous, else
    /// `null` when usage is asked for, else left out.
    pub fn on_chunk(&self) -> Option<Option<Usage>> {
        if self.continuous {
            Some(Some(Usage::new(
                self.prompt_tokens,
                self.completion_tokens,
                0,
            )))
        } else if self.include {
            Some(None)
        } else {
            None
        }
    }

    /// The usage chunk that ends the stream, when asked for.
    pub fn last_chunk<C>(
        &self,
        meta: &Meta,
        object: &'static str,
        f: &pb::Finished,
    ) -> Option<Chunk<C>> {
        self.include
            .then(|| meta.chunk(object, Vec::new(), Some(Some(usage(f)))))
    }
}

/// The usage of a whole response.
pub fn usage(f: &pb::Finished) -> Usage {
    Usage::new(f.prompt_tokens, f.completion_tokens, f.cached_prompt_tokens)
}

pub fn finish_reason(f: Option<&pb::Finish>) -> Option<String> {
    f.map(|f| f.reason.clone())
}

/// vLLM's `stop_reason`: the stop string or token id that ended the sample.
pub fn stop_reason(f: Option<&pb::Finish>) -> Option<StopReason> {
    use pb::finish::StopReason as Pb;
    match f.and_then(|f| f.stop_reason.as_ref()) {
        Some(Pb::StopString(s)) => Some(StopReason::Text(s.clone())),
        Some(Pb::StopTokenId(t)) => Some(StopReason::TokenId(*t)),
        None => None,
    }
}

/// A logprob as JSON can carry it (vLLM's floor for -inf), widened to
/// `f64` as the router has always written logprobs.
fn logprob_value(lp: f32) -> f64 {
    if lp.is_finite() {
        f64::from(lp)
    } else {
        -9999.0
    }
}

/// One token of a chat `logprobs.content`.
pub fn chat_logprob(chosen: &pb::TokenLogprob, top: &[pb::TokenLogprob]) -> ChatTokenLogprob {
    ChatTokenLogprob {
        token: chosen.token.clone(),
        logprob: logprob_value(chosen.logprob),
        bytes: chosen.bytes.clone(),
        top_logprobs: top
            .iter()
            .map(|t| ChatTopLogprob {
                token: t.token.clone(),
                logprob: logprob_value(t.logprob),
                bytes: t.bytes.clone(),
            })
            .collect(),
    }
}

/// Chat logprobs of the given tokens (chosen, top).
pub fn chat_logprobs<'a>(
    tokens: impl IntoIterator<Item = (&'a pb::TokenLogprob, &'a [pb::TokenLogprob])>,
) -> ChatLogprobs {
    ChatLogprobs {
        content: tokens
            .into_iter()
            .map(|(chosen, top)| chat_logprob(chosen, top))
            .collect(),
    }
}

/// Appends to completions' logprobs a token whose text starts at
/// character `offset` of the choice's text; its `top_logprobs` entry has
/// the top tokens, then the chosen one unless it is among them.
pub fn push_completion_logprob(
    lp: &mut CompletionLogprobs,
    chosen: &pb::TokenLogprob,
    top: &[pb::TokenLogprob],
    offset: usize,
) {
    lp.tokens.push(chosen.token.clone());
    lp.token_logprobs.push(logprob_value(chosen.logprob));
    let mut alts = TopLogprobs::default();
    for t in top {
        alts.insert(&t.token, logprob_value(t.logprob));
    }
    alts.insert_if_absent(&chosen.token, logprob_value(chosen.logprob));
    lp.top_logprobs.push(alts);
    lp.text_offset.push(offset);
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
