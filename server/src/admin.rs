//! The admin REST API (Ray's dashboard port, 8265):
//! `PUT /api/serve/applications/` deploys a `ServeDeploySchema` (checked
//! whole first; a bad config changes nothing and is answered 400 naming
//! the field), `GET` answers `ServeInstanceDetails`, `DELETE` deletes every
//! application. `POST /api/llm-serve/shutdown` stops the daemon.
//!
//! It is the control plane, so it guards itself against callers that are
//! not the operator: with a token configured every route wants
//! `Authorization: Bearer <token>`; a `Host` that is not an IP address,
//! `localhost` or the configured host is refused (a web page that
//! rebinds its own name to 127.0.0.1 cannot reach it); and the routes
//! that change state take JSON bodies only, so no cross-site form or
//! `text/plain` post gets in.

use crate::control::ControllerHandle;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The largest body the admin API reads (a deploy config).
pub const MAX_BODY_BYTES: usize = 8 << 20;
/// How long a body may take to arrive.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

pub struct AdminState {
    pub controller: ControllerHandle,
    /// Notified when a client asks the daemon to stop.
    pub shutdown: Arc<Notify>,
    /// Callers must present it as a bearer token.
    pub token: Option<String>,
    /// The host name the API was bound to, also accepted in `Host`.
    pub bound_host: String,
}

pub fn router(state: Arc<AdminState>) -> axum::Router {
    axum::Router::new()
        .route(
            "/api/serve/applications/",
            get(details).put(deploy).delete(delete_all),
        )
        .route(
            "/api/serve/applications",
            get(details).put(deploy).delete(delete_all),
        )
        .route("/api/llm-serve/shutdown", post(shutdown))
        .route("/api/version", get(version))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({"error": message}))).into_response()
}

/// The host part of a `Host` header (`name`, `1.2.3.4`, `[::1]`, each
/// with an optional port).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Whether a request addressed to `host` may reach the admin API.
pub fn host_allowed(host: &str, bound_host: &str) -> bool {
    let name = host_name(host);
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || name.eq_ignore_ascii_case(bound_host)
}

/// Host check, token check, and JSON-only bodies on the routes that
/// change state, before any handler runs.
async fn guard(State(s): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    if let Some(host) = req.headers().get(header::HOST) {
        let host = host.to_str().unwrap_or("");
        if !host_allowed(host, &s.bound_host) {
            return error(
                StatusCode::FORBIDDEN,
                format!("Host `{host}` is not allowed: the admin API answers requests addressed to an IP address, localhost or {}.", s.bound_host),
            );
        }
    }
    if let Some(token) = &s.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let matches = given
            .is_some_and(|g| llm_serve_proto::constant_time_eq(g.as_bytes(), token.as_bytes()));
        if !matches {
            return error(
                StatusCode::UNAUTHORIZED,
                "The admin API needs its token: send `Authorization: Bearer <token>` (the CLI takes --token or LLM_SERVE_ADMIN_TOKEN).".into(),
            );
        }
    }
    if matches!(*req.method(), Method::POST | Method::PUT) {
        if let Err(e) = llm_serve_router::app::require_json(req.headers()) {
            return error(e.status, e.message);
        }
    }
    next.run(req).await
}

async fn deploy(State(s): State<Arc<AdminState>>, req: Request) -> Response {
    let body =
        match llm_serve_router::app::read_body(req.into_body(), MAX_BODY_BYTES, BODY_READ_TIMEOUT)
            .await
        {
            Ok(b) => b,
            Err(e) => return error(e.status, e.message),
        };
    let text = match std::str::from_utf8(&body) {
        Ok(t) => t,
        Err(_) => return error(StatusCode::BAD_REQUEST, "the body is not UTF-8 text".into()),
    };
    let checked = crate::config::parse_text(text).and_then(|v| crate::config::check(v, None));
    match checked {
        Ok(c) => {
            s.controller.deploy(c).await;
            StatusCode::OK.into_response()
        }
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            format!("The deploy config is not valid: {e}"),
        ),
    }
}

async fn details(State(s): State<Arc<AdminState>>) -> Response {
    match s.controller.details().await {
        Some(d) => Json(d).into_response(),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the controller has stopped".into(),
        ),
    }
}

async fn delete_all(State(s): State<Arc<AdminState>>) -> StatusCode {
    s.controller.delete_all().await;
    StatusCode::OK
}

/// `llm-serve shutdown`: Serve's shutdown deletes every application (so a
/// later `start` on the same state dir brings none back), then the daemon
/// stops.
async fn shutdown(State(s): State<Arc<AdminState>>) -> StatusCode {
    tracing::info!("Shutdown requested through the admin API.");
    s.controller.delete_all().await;
    s.shutdown.notify_one();
    StatusCode::OK
}

async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({"version": env!("CARGO_PKG_VERSION")}))
}

async fn not_found(req: axum::extract::Request) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("No route for {} {}.", req.method(), req.uri().path()),
    )
}
