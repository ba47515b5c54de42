//! vLLM's `POST /tokenize` and `POST /detokenize`.

use super::request::{fields, ChatFields};
use crate::error::ApiError;
use crate::extract::Body;
use crate::state::App;
use crate::wire::{Detokenized, Tokenized};
use axum::extract::State;
use axum::Json;
use llm_serve_proto as pb;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize)]
struct TokenizeFields {
    model: Option<String>,
    prompt: Option<String>,
    add_special_tokens: Option<bool>,
    return_token_strs: Option<bool>,
}

pub async fn tokenize(
    State(app): State<Arc<App>>,
    Body(body): Body,
) -> Result<Json<Tokenized>, ApiError> {
    let f: TokenizeFields = fields(&body)?;
    let input = match (&f.prompt, body.get("messages")) {
        (Some(p), None) => pb::tokenize_request::Input::Text(pb::TextPrompt {
            text: p.clone(),
            add_special_tokens: f.add_special_tokens.unwrap_or(true),
        }),
        (None, Some(_)) => {
            let chat: ChatFields = fields(&body)?;
            chat.check()?;
            pb::tokenize_request::Input::Chat(chat.chat_input())
        }
        _ => {
            return Err(ApiError::bad_request(
                "Give exactly one of `prompt` (a string) or `messages`.",
                Some("prompt"),
            ))
        }
    };
    let deployment = app.models.resolve(f.model.as_deref())?;
    let inflight = deployment.pick(&[], None).await?;
    let r = inflight
        .replica
        .client()
        .tokenize(pb::TokenizeRequest { input: Some(input) })
        .await
        .map_err(|s| ApiError::from_status(&s))?
        .into_inner();
    let token_strs = f.return_token_strs.unwrap_or(false).then_some(r.token_strs);
    Ok(Json(Tokenized {
        count: r.ids.len(),
        max_model_len: r.max_model_len,
        tokens: r.ids,
        token_strs,
    }))
}

#[derive(Deserialize)]
struct DetokenizeFields {
    model: Option<String>,
    tokens: Vec<u32>,
}

pub async fn detokenize(
    State(app): State<Arc<App>>,
    Body(body): Body,
) -> Result<Json<Detokenized>, ApiError> {
    super::request::require(&body, "tokens")?;
    let f: DetokenizeFields = fields(&body)?;
    let deployment = app.models.resolve(f.model.as_deref())?;
    let inflight = deployment.pick(&[], None).await?;
    let r = inflight
        .replica
        .client()
        .detokenize(pb::DetokenizeRequest { ids: f.tokens })
        .await
        .map_err(|s| ApiError::from_status(&s))?
        .into_inner();
    Ok(Json(Detokenized { prompt: r.text }))
}
