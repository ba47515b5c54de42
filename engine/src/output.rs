//! What a sequence's generated tokens mean for its caller: incremental text
//! (never half a character, never part of a stop string that may still
//! complete), and when and why generation ends.

use crate::error::Result;
use crate::sampling::SamplingParams;
use crate::tokenizer::{IncrementalDetokenizer, Tokenizer};

/// Why a sequence stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token.
    Eos(u32),
    /// One of the request's `stop_token_ids`.
    StopToken(u32),
    /// One of the request's `stop` strings.
    StopString(String),
    /// The request's grammar (structured output) is complete.
    ConstraintComplete,
    /// `max_tokens` reached, or the end of the context.
    Length,
    /// Cancelled by the caller.
    Abort,
}

impl FinishReason {
    /// OpenAI's `finish_reason`.
    pub fn as_openai(&self) -> &'static str {
        match self {
            FinishReason::Eos(_)
            | FinishReason::StopToken(_)
            | FinishReason::StopString(_)
            | FinishReason::ConstraintComplete => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

/// The result of one new token.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenUpdate {
    /// New text that may be shown now.
    pub text: String,
    pub finished: Option<FinishReason>,
}

/// Per-sequence output state.
pub struct OutputState {
    detok: IncrementalDetokenizer,
    /// All output text so far (stop string already cut off).
    text: String,
    /// Bytes of `text` handed out.
    emitted: usize,
    /// Characters held back while a stop string could still be completing.
    holdback_chars: usize,
    generated: usize,
    /// Prompt length plus generated tokens.
    context_len: usize,
    max_context: usize,
    eos_ids: Vec<u32>,
    params: SamplingParams,
    finished: Option<FinishReason>,
}

impl OutputState {
    pub fn new(
        params: &SamplingParams,
        prompt: &[u32],
        eos_ids: &[u32],
        max_context: usize,
    ) -> Self {
        let holdback_chars = if params.include_stop_str_in_output {
            0
        } else {
            params
                .stop
                .iter()
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(1)
                .saturating_sub(1)
        };
        OutputState {
            detok: IncrementalDetokenizer::new(prompt, params.skip_special_tokens),
            text: String::new(),
            emitted: 0,
            holdback_chars,
            generated: 0,
            context_len: prompt.len(),
            max_context,
            eos_ids: if params.ignore_eos {
                Vec::new()
            } else {
                eos_ids.to_vec()
            },
            params: params.clone(),
            finished: None,
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn generated(&self) -> usize {
        self.generated
    }

    pub fn finished(&self) -> Option<&FinishReason> {
        self.finished.as_ref()
    }

    /// Accounts for the sampled token `id`.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<TokenUpdate> {
        self.push_constrained(tok, id, false)
    }

    /// Accounts for `id`, after which the request's grammar is complete
    /// when `constraint_complete`: the sequence ends with it, unless an
    /// earlier reason (a stop token, `max_tokens`) ends it anyway.
    pub fn push_constrained(
        &mut self,
        tok: &Tokenizer,
        id: u32,
        constraint_complete: bool,
    ) -> Result<TokenUpdate> {
        if self.finished.is_some() {
            return Ok(TokenUpdate::default());
        }
        self.generated += 1;
        self.context_len += 1;
        let p = &self.params;
        let past_min = self.generated >= p.min_tokens;
        let mut finished = None;
        if past_min && self.eos_ids.contains(&id) {
            finished = Some(FinishReason::Eos(id));
        } else if past_min && p.stop_token_ids.contains(&id) {
            finished = Some(FinishReason::StopToken(id));
        }
        if finished.is_none() {
            let delta = self.detok.push(tok, id)?;
            let search_from = self.text.len();
            self.text.push_str(&delta);
            if past_min && !p.stop.is_empty() {
                if let Some((pos, stop)) = find_stop(&self.text, &p.stop, search_from) {
                    let end = if p.include_stop_str_in_output {
                        pos + stop.len()
                    } else {
                        pos
                    };
                    self.text.truncate(end);
                    finished = Some(FinishReason::StopString(stop));
                }
            }
        }
        if finished.is_none() && constraint_complete {
            finished = Some(FinishReason::ConstraintComplete);
        }
        if finished.is_none()
            && (p.max_tokens.is_some_and(|m| self.generated >= m)
                || self.context_len >= self.max_context)
        {
            finished = Some(FinishReason::Length);
        }
        if let Some(f) = &finished {
            if !matches!(f, FinishReason::StopString(_)) {
                let rest = self.detok.finish(tok)?;
                self.text.push_str(&rest);
            }
            self.finished = finished.clone();
        }
        Ok(TokenUpdate {
            text: self.take_ready(),
            finished,
        })
    }

    /// Ends the sequence early (the caller went away).
    pub fn abort(&mut self) -> TokenUpdate {
        if self.finished.is_none() {
            self.finished = Some(FinishReason::Abort);
        }
        TokenUpdate {
            text: String::new(),
            finished: self.finished.clone(),
        }
    }

    fn take_ready(&mut self) -> String {
        let end = if self.finished.is_some() {
            self.text.len()
        } else {
            // Hold back the tail that might still become a stop string.
            let mut end = self.text.len();
            for _ in 0..self.holdback_chars {
                if end <= self.emitted {
                    break;
                }
                end = self.text[..end]
                    .char_indices()
                    .next_back()
                    .map(|(i, _)| i)
                    .unwrap_or(0);
            }
            end.max(self.emitted)
        };
        let out = self.text[self.emitted..end].to_string();
        self.emitted = end;
        out
    }
}

/// The earliest stop string in `text` that ends after `new_from` (so only
/// matches touching new text count), as (byte position, stop string).
fn find_stop(text: &str, stops: &[String], new_from: usize) -> Option<(usize, String)> {
    let mut best: Option<(usize, String)> = None;
    for s in stops {
        let mut from = new_from.saturating_sub(s.len().saturating_sub(1));
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        if let Some(i) = text[from..].find(s.as_str()) {
            let pos = from + i;
            if best.as_ref().is_none_or(|(b, _)| pos < *b) {
                best = Some((pos, s.clone()));
            }
        }
    }
    best
}
