//! vLLM's run-time adapter endpoints, `POST /v1/load_lora_adapter` and
//! `POST /v1/unload_lora_adapter`, with its request shapes, answers and
//! error texts. A load asks every ready replica of the model to load the
//! adapter (all must succeed) and then registers it, so requests name it
//! as `base:name` (or `name`) and replicas started later load it on
//! demand. Served only when run-time updates are allowed (as vLLM's
//! `VLLM_ALLOW_RUNTIME_LORA_UPDATING`): the endpoints read files the
//! server can read.

use super::request::fields;
use crate::error::ApiError;
use crate::extract::Body;
use crate::lora::split_model;
use crate::replicas::{Deployment, Models};
use crate::state::App;
use axum::extract::State;
use llm_serve_proto as pb;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize)]
struct LoadBody {
    lora_name: Option<String>,
    lora_path: Option<String>,
    #[serde(default)]
    load_inplace: bool,
    base_model_name: Option<String>,
}

#[derive(Deserialize)]
struct UnloadBody {
    lora_name: Option<String>,
    base_model_name: Option<String>,
}

/// The model an adapter name is for, and the adapter's own name:
/// `base_model_name` when given, else `base:name`, else the one model that
/// serves adapters.
fn target(
    models: &Models,
    lora_name: &str,
    base: Option<&str>,
) -> Result<(Arc<Deployment>, String), ApiError> {
    if let Some(b) = base {
        let d = models.get(b).ok_or_else(|| ApiError::model_not_found(b))?;
        let name = match split_model(lora_name) {
            Some((prefix, n)) if prefix == b => n,
            _ => lora_name,
        };
        return Ok((d, name.to_string()));
    }
    if let Some((b, n)) = split_model(lora_name) {
        if let Some(d) = models.get(b) {
            return Ok((d, n.to_string()));
        }
    }
    let serving: Vec<Arc<Deployment>> = models
        .all()
        .into_iter()
        .filter(|d| d.adapters.enabled())
        .collect();
    match serving.as_slice() {
        [only] => Ok((only.clone(), lora_name.to_string())),
        [] => Err(ApiError::bad_request(
            "No model served here takes LoRA adapters (none has a lora_config).",
            Some("lora_name"),
        )),
        _ => Err(ApiError::bad_request(
            "Several models take LoRA adapters: name the model as `base_model_name`, or the adapter as `<model>:<name>`.",
            Some("base_model_name"),
        )),
    }
}

pub async fn load(State(app): State<Arc<App>>, Body(body): Body) -> Result<String, ApiError> {
    let b: LoadBody = fields(&body)?;
    let (Some(lora_name), Some(lora_path)) = (
        b.lora_name.filter(|s| !s.is_empty()),
        b.lora_path.filter(|s| !s.is_empty()),
    ) else {
        return Err(ApiError::bad_request(
            "Both 'lora_name' and 'lora_path' must be provided.",
            None,
        ));
    };
    let (d, name) = target(&app.models, &lora_name, b.base_model_name.as_deref())?;
    if !d.adapters.enabled() {
        return Err(ApiError::bad_request(
            format!(
                "Model `{}` takes no LoRA adapters (it has no lora_config).",
                d.model_id
            ),
            Some("lora_name"),
        ));
    }
    if d.adapters.registered(&name) && !b.load_inplace {
        return Err(ApiError::bad_request(
            format!("The lora adapter '{lora_name}' has already been loaded. If you want to load the adapter in place, set 'load_inplace' to True."),
            Some("lora_name"),
        ));
    }
    let replicas: Vec<_> = d
        .replicas()
        .into_iter()
        .filter(|r| r.takes_requests())
        .collect();
    if replicas.is_empty() {
        return Err(ApiError::unavailable(format!(
            "No replica of model `{}` is ready to load the adapter.",
            d.model_id
        )));
    }
    let request = pb::LoadAdapterRequest {
        name: name.clone(),
        source: lora_path.clone(),
        replace: b.load_inplace,
    };
    let calls = replicas.iter().map(|r| {
        let mut client = r.client();
        let request = request.clone();
        async move { client.load_adapter(request).await }
    });
    let answers = futures::future::join_all(calls).await;
    for (r, a) in replicas.iter().zip(&answers) {
        match a {
            Ok(resp) => r.set_adapters(resp.get_ref().adapters.clone()),
            Err(_) => r.note_adapter(&name, false),
        }
    }
    if let Some(Err(s)) = answers.iter().find(|a| a.is_err()) {
        return Err(ApiError::from_status(s));
    }
    d.adapters.register(&name, &lora_path);
    tracing::info!(model = %d.model_id, adapter = %name, source = %lora_path, "LoRA adapter loaded at run time");
    Ok(format!(
        "Success: LoRA adapter '{lora_name}' added successfully."
    ))
}

pub async fn unload(State(app): State<Arc<App>>, Body(body): Body) -> Result<String, ApiError> {
    let b: UnloadBody = fields(&body)?;
    let Some(lora_name) = b.lora_name.filter(|s| !s.is_empty()) else {
        return Err(ApiError::bad_request(
            "'lora_name' needs to be provided to unload a LoRA adapter.",
            None,
        ));
    };
    let not_found = || {
        ApiError::not_found(format!("The lora adapter '{lora_name}' cannot be found."))
            .with_param("lora_name")
    };
    let (d, name) =
        target(&app.models, &lora_name, b.base_model_name.as_deref()).map_err(|_| not_found())?;
    if !d.adapters.unregister(&name) {
        return Err(not_found());
    }
    for r in d.replicas() {
        let mut client = r.client();
        match client
            .unload_adapter(pb::UnloadAdapterRequest { name: name.clone() })
            .await
        {
            Ok(resp) => r.set_adapters(resp.into_inner().adapters),
            Err(s) => tracing::warn!(replica = %r.id, "unloading adapter {name}: {}", s.message()),
        }
    }
    Ok(format!(
        "Success: LoRA adapter '{lora_name}' removed successfully."
    ))
}
