//! `GET /v1/models` and `GET /v1/models/{model}`.

use crate::app::App;
use crate::error::ApiError;
use crate::replicas::Deployment;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

fn card(d: &Deployment) -> Value {
    let info = d.info();
    json!({
        "id": d.model_id,
        "object": "model",
        "created": d.created,
        "owned_by": "llm-serve",
        "root": info.as_ref().map(|i| i.model_source.clone()).unwrap_or_else(|| d.model_id.clone()),
        "parent": null,
        "max_model_len": info.map(|i| i.max_model_len),
        "permission": [],
    })
}

pub async fn list(State(app): State<Arc<App>>) -> Json<Value> {
    let data: Vec<Value> = app.models.all().iter().map(|d| card(d)).collect();
    Json(json!({"object": "list", "data": data}))
}

pub async fn retrieve(
    State(app): State<Arc<App>>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let d = app
        .models
        .get(&model)
        .ok_or_else(|| ApiError::model_not_found(&model))?;
    Ok(Json(card(&d)))
}
