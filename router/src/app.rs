//! The HTTP application: routes, shared state, and the middleware every
//! request goes through (request ids, API key, body limit, metrics).

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::openai;
use crate::replicas::Models;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The request-id header, honoured when the client sends one.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How the router is set up.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// Clients must send `Authorization: Bearer <key>` (not for /health
    /// and /metrics).
    pub api_key: Option<String>,
    /// Request bodies above this many bytes get a 413.
    pub max_body_bytes: usize,
    /// A request body must have arrived whole within this long (a 408
    /// otherwise), so a client that stalls mid-body cannot hold a
    /// connection forever.
    pub body_read_timeout: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            api_key: None,
            max_body_bytes: 32 * 1024 * 1024,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
        }
    }
}

/// How long a request body may take to arrive by default.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

impl RouterConfig {
    /// The largest message of the replica protocol the router accepts
    /// from a replica: room for a reply several times the largest
    /// request (token ids and texts grow when converted).
    pub fn max_replica_message_bytes(&self) -> usize {
        self.max_body_bytes.saturating_mul(4).max(64 << 20)
    }
}

/// State shared by every request.
pub struct App {
    pub models: Models,
    pub config: RouterConfig,
    /// Shared with every other application of the proxy.
    pub metrics: Arc<Metrics>,
}

impl App {
    pub fn new(config: RouterConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(App {
            models: Models::default(),
            config,
            metrics,
        })
    }
}

/// Per-request facts the handlers need.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub request_id: String,
}

/// A JSON object body sent as `application/json` (415 otherwise, so no
/// cross-site form or `text/plain` post reaches a handler), read within
/// the size limit (413 above it) and the read timeout (408), and a JSON
/// object (400 otherwise).
pub struct Body(pub Value);

impl FromRequest<Arc<App>> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, ApiError> {
        require_json(req.headers())?;
        let c = &app.config;
        let bytes = read_body(req.into_body(), c.max_body_bytes, c.body_read_timeout).await?;
        Ok(Body(crate::openai::parse_object(&bytes)?))
    }
}

/// Whether a `Content-Type` is JSON (`application/json`, or
/// `application/<x>+json`), parameters such as `charset` allowed.
pub fn is_json_content_type(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"))
}

/// A 415 unless the request says its body is JSON.
pub fn require_json(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(axum::http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    match given {
        Some(t) if is_json_content_type(t) => Ok(()),
        Some(t) => Err(ApiError::unsupported_media_type(format!(
            "Content-Type must be application/json, got `{t}`."
        ))),
        None => Err(ApiError::unsupported_media_type(
            "Content-Type must be application/json; the request has none.",
        )),
    }
}

/// Reads a whole body of at most `limit` bytes within `timeout`.
pub async fn read_body(
    body: axum::body::Body,
    limit: usize,
    timeout: Duration,
) -> Result<axum::body::Bytes, ApiError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "TimeoutError",
            format!(
                "The request body did not arrive within {} s.",
                timeout.as_secs_f64()
            ),
        )),
        Ok(Err(e)) if is_length_limit(&e) => Err(ApiError::payload_too_large(limit)),
        Ok(Err(e)) => Err(ApiError::bad_request(
            format!("Cannot read the request body: {e}"),
            None,
        )),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

/// Whether reading a body failed on the size limit.
fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// The router's HTTP application over `app`.
pub fn router(app: Arc<App>) -> axum::Router {
    axum::Router::new()
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
        let body = json!({"status": "unavailable", "models_not_ready": not_ready});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    StatusCode::OK.into_response()
}

async fn version() -> Json<Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION")}))
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
