//! The HTTP application: the routes that wire the OpenAI handlers
//! (`openai`) and the router's own endpoints together, and the middleware
//! every request goes through (request ids, API key, metrics). The state
//! and extractors the handlers use live in `state` and `extract`, which
//! depend on no handler; this module is the only one that depends on
//! `openai`.

use crate::error::ApiError;
use crate::openai;
use crate::wire::{Unavailable, Version};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use std::sync::Arc;
use std::time::Instant;

// The state and extractors once defined here, at their old paths.
pub use crate::extract::{is_json_content_type, read_body, require_json, Body};
pub use crate::state::{App, RequestContext, RouterConfig, DEFAULT_BODY_READ_TIMEOUT, REQUEST_ID};

/// The router's HTTP application over `app`.
pub fn router(app: Arc<App>) -> axum::Router {
    let mut routes = axum::Router::new();
    if app.config.allow_runtime_lora_updating {
        routes = routes
            .route("/v1/load_lora_adapter", post(openai::lora_adapters::load))
            .route(
                "/v1/unload_lora_adapter",
                post(openai::lora_adapters::unload),
            );
    }
    routes
        .route("/v1/chat/completions", post(openai::chat::chat_completions))
        .route("/v1/completions", post(openai::completions::completions))
        .route("/v1/models", get(openai::models::list))
        .route("/v1/models/{*model}", get(openai::models::retrieve))
        .route("/tokenize", post(openai::tokenize::tokenize))
        .route("/detokenize", post(openai::tokenize::detokenize))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/version", get(version))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), authorize))
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

/// Request ids, access logs and HTTP metrics around every request.
async fn observe(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 256)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let handler = handler_label(&path);
    req.extensions_mut().insert(RequestContext {
        request_id: request_id.clone(),
    });
    let mut response = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    let status = response.status();
    app.metrics
        .observe_http(handler, method.as_str(), status.as_u16(), started.elapsed());
    tracing::debug!(
        request_id = %request_id,
        method = %method,
        path = %path,
        status = status.as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1e3,
        "router access"
    );
    response
}

/// The route a path belongs to, for metric labels (bounded cardinality).
fn handler_label(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/completions" => "/v1/completions",
        "/v1/models" => "/v1/models",
        p if p.starts_with("/v1/models/") => "/v1/models/{model}",
        "/tokenize" => "/tokenize",
        "/detokenize" => "/detokenize",
        "/health" => "/health",
        "/metrics" => "/metrics",
        "/version" => "/version",
        _ => "other",
    }
}

/// The API key check; /health and /metrics stay open.
async fn authorize(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if let Some(key) = &app.config.api_key {
        let open = matches!(req.uri().path(), "/health" | "/metrics");
        let given = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let matches =
            given.is_some_and(|g| llm_serve_proto::constant_time_eq(g.as_bytes(), key.as_bytes()));
        if !open && !matches {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// 200 when every model has a ready replica, else 503.
async fn health(State(app): State<Arc<App>>) -> Response {
    let models = app.models.all();
    let not_ready: Vec<String> = models
        .iter()
        .filter(|d| !d.is_ready())
        .map(|d| d.model_id.clone())
        .collect();
    if models.is_empty() || !not_ready.is_empty() {
        let body = Unavailable {
            status: "unavailable",
            models_not_ready: not_ready,
        };
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    StatusCode::OK.into_response()
}

async fn version() -> Json<Version> {
    Json(Version {
        version: env!("CARGO_PKG_VERSION"),
    })
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    match app.metrics.render(&app.models.all()).await {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "No route for {} {}.",
        req.method(),
        req.uri().path()
    ))
}
