//! `GET /v1/models` and `GET /v1/models/{model}`.

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

pub async fn list(State(app): State<Arc<App>>) -> Json<ModelList> {
    let data: Vec<ModelCard> = app.models.all().iter().map(|d| card(d)).collect();
    Json(ModelList {
        object: "list",
        data,
    })
}

pub async fn retrieve(
    State(app): State<Arc<App>>,
    Path(model): Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    let d = app
        .models
        .get(&model)
        .ok_or_else(|| ApiError::model_not_found(&model))?;
    Ok(Json(card(&d)))
}
