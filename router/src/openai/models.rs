//! `GET /v1/models` and `GET /v1/models/{model}`: every served model and,
//! for a model with LoRA adapters, each adapter as `base:adapter` (vLLM's
//! card: `parent` the base model, `root` the adapter's path).

use crate::error::ApiError;
use crate::replicas::Deployment;
use crate::state::App;
use crate::wire::{ModelCard, ModelList};
use axum::extract::{Path, State};
use axum::Json;
use std::sync::Arc;

fn card(d: &Deployment) -> ModelCard {
    let info = d.info();
    ModelCard {
        id: d.model_id.clone(),
        object: "model",
        created: d.created,
        owned_by: "llm-serve",
        root: info
            .as_ref()
            .map(|i| i.model_source.clone())
            .unwrap_or_else(|| d.model_id.clone()),
        parent: None,
        max_model_len: info.map(|i| i.max_model_len),
        permission: [],
    }
}

/// The cards of a model's adapters.
fn adapter_cards(d: &Deployment) -> Vec<ModelCard> {
    let base = card(d);
    d.adapters
        .listed()
        .into_iter()
        .map(|a| ModelCard {
            id: format!("{}:{}", d.model_id, a.name),
            root: a.root,
            parent: Some(d.model_id.clone()),
            ..base.clone()
        })
        .collect()
}

pub async fn list(State(app): State<Arc<App>>) -> Json<ModelList> {
    // Listing a loading path reads a directory: off the async workers.
    let models = app.models.all();
    let data = tokio::task::spawn_blocking(move || {
        models
            .iter()
            .flat_map(|d| std::iter::once(card(d)).chain(adapter_cards(d)))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    Json(ModelList {
        object: "list",
        data,
    })
}

pub async fn retrieve(
    State(app): State<Arc<App>>,
    Path(model): Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    let target = app.models.resolve_target(Some(&model))?;
    let d = target.deployment;
    match target.adapter {
        None => Ok(Json(card(&d))),
        Some(a) => {
            let id = format!("{}:{a}", d.model_id);
            let cards = tokio::task::spawn_blocking(move || adapter_cards(&d))
                .await
                .unwrap_or_default();
            cards
                .into_iter()
                .find(|c| c.id == id)
                .map(Json)
                .ok_or_else(|| ApiError::model_not_found(&model))
        }
    }
}
