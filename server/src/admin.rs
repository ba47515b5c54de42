//! The admin REST API (Ray's dashboard port, 8265):
//! `PUT /api/serve/applications/` deploys a `ServeDeploySchema` (checked
//! whole first; a bad config changes nothing and is answered 400 naming
//! the field), `GET` answers `ServeInstanceDetails`, `DELETE` deletes every
//! application. `POST /api/llm-serve/shutdown` stops the daemon.

use crate::control::ControllerHandle;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use std::sync::Arc;
use tokio::sync::Notify;

pub struct AdminState {
    pub controller: ControllerHandle,
    /// Notified when a client asks the daemon to stop.
    pub shutdown: Arc<Notify>,
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
        .with_state(state)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({"error": message}))).into_response()
}

async fn deploy(State(s): State<Arc<AdminState>>, body: axum::body::Bytes) -> Response {
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
