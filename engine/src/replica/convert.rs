//! Between the replica protocol's messages and the engine's types.

use super::defaults::GenerationDefaults;
use crate::error::EngineError;
use crate::output::FinishReason;
use crate::sampling::{Sampled, SamplingParams};
use crate::structured::{Constraint, ConstraintKind};
use crate::tokenizer::Tokenizer;
use llm_serve_proto as pb;
use tonic::Status;

/// The engine's sampling parameters for a request: set fields as given,
/// unset ones from the model's generation config, then vLLM's defaults.
pub(crate) fn sampling_params(s: &pb::Sampling, d: &GenerationDefaults) -> SamplingParams {
    let base = SamplingParams::default();
    SamplingParams {
        n: s.n as usize,
        temperature: s.temperature.or(d.temperature).unwrap_or(base.temperature),
        top_p: s.top_p.or(d.top_p).unwrap_or(base.top_p),
        top_k: s.top_k.or(d.top_k).unwrap_or(base.top_k),
        min_p: s.min_p.or(d.min_p).unwrap_or(base.min_p),
        presence_penalty: s.presence_penalty,
        frequency_penalty: s.frequency_penalty,
        repetition_penalty: s
            .repetition_penalty
            .or(d.repetition_penalty)
            .unwrap_or(base.repetition_penalty),
        logit_bias: s.logit_bias.iter().map(|(&k, &v)| (k, v)).collect(),
        seed: s.seed,
        stop: s.stop.clone(),
        stop_token_ids: s.stop_token_ids.clone(),
        include_stop_str_in_output: s.include_stop_str_in_output,
        ignore_eos: s.ignore_eos,
        min_tokens: s.min_tokens as usize,
        max_tokens: s.max_tokens.map(|m| m as usize),
        logprobs: s.logprobs.map(|l| l as usize),
        skip_special_tokens: s.skip_special_tokens,
    }
}

pub(crate) fn finish(reason: &FinishReason) -> pb::Finish {
    use pb::finish::StopReason;
    pb::Finish {
        reason: reason.as_openai().to_string(),
        stop_reason: match reason {
            FinishReason::StopString(s) => Some(StopReason::StopString(s.clone())),
            FinishReason::StopToken(t) => Some(StopReason::StopTokenId(*t)),
            FinishReason::Eos(_)
            | FinishReason::ConstraintComplete
            | FinishReason::Length
            | FinishReason::Abort => None,
        },
    }
}

pub(crate) fn token_logprob(
    tokenizer: &Tokenizer,
    token_id: u32,
    logprob: f32,
) -> pb::TokenLogprob {
    pb::TokenLogprob {
        token_id,
        token: tokenizer.token_text(token_id),
        bytes: tokenizer.token_bytes(token_id),
        logprob,
    }
}

/// The chosen token's logprob and the top alternatives.
pub(crate) fn logprobs(
    tokenizer: &Tokenizer,
    s: &Sampled,
) -> (Option<pb::TokenLogprob>, Vec<pb::TokenLogprob>) {
    (
        Some(token_logprob(tokenizer, s.token, s.logprob)),
        s.top_logprobs
            .iter()
            .map(|&(id, lp)| token_logprob(tokenizer, id, lp))
            .collect(),
    )
}

/// The engine's constraint for the protocol's (schemas arrive as text).
pub(crate) fn constraint(c: &pb::Constraint) -> Result<Constraint, EngineError> {
    use pb::constraint::Kind;
    let param = if c.param.is_empty() {
        "structured_outputs".to_string()
    } else {
        c.param.clone()
    };
    let kind = match &c.kind {
        Some(Kind::JsonSchema(text)) => {
            ConstraintKind::JsonSchema(serde_json::from_str(text).map_err(|e| {
                EngineError::InvalidConstraint {
                    param: param.clone(),
                    message: format!("`{param}` is not valid JSON: {e}"),
                }
            })?)
        }
        Some(Kind::JsonObject(_)) => ConstraintKind::JsonObject,
        Some(Kind::Regex(rx)) => ConstraintKind::Regex(rx.clone()),
        Some(Kind::Choice(c)) => ConstraintKind::Choice(c.choices.clone()),
        Some(Kind::Lark(g)) => ConstraintKind::Lark(g.clone()),
        None => {
            return Err(EngineError::InvalidConstraint {
                message: format!("`{param}` names no constraint"),
                param,
            })
        }
    };
    Ok(Constraint {
        kind,
        param,
        compact_json: c.compact_json,
    })
}

/// The status a caller sees for an engine error: its own mistakes are
/// INVALID_ARGUMENT naming the parameter; everything else is INTERNAL.
pub(crate) fn status(e: EngineError) -> Status {
    match e {
        EngineError::InvalidParam { param, message }
        | EngineError::InvalidPrompt { param, message } => pb::invalid_argument(param, message),
        EngineError::Tokenizer(m) => {
            pb::invalid_argument("prompt", format!("cannot tokenize the prompt: {m}"))
        }
        EngineError::Template(m) => pb::invalid_argument("messages", m),
        EngineError::InvalidConstraint { param, message } => pb::invalid_argument(&param, message),
        EngineError::AdapterNotFound { message, .. } => pb::not_found("model", message),
        EngineError::AdapterLoad { message, .. } => pb::invalid_argument("model", message),
        other => Status::internal(other.to_string()),
    }
}
