//! Reading request bodies: the `Body` extractor of the JSON endpoints and
//! the checks it is made of (JSON content type, size limit, read timeout,
//! a JSON object), which the server's admin API uses too. Kept apart from
//! `app` and `openai` so handlers can use it without an import cycle.

use crate::error::ApiError;
use crate::state::App;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

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
        Ok(Body(parse_object(&bytes)?))
    }
}

/// The body as a JSON object, or a 400 saying what is wrong with it.
pub fn parse_object(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("The request body is not valid JSON: {e}"), None)
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "The request body must be a JSON object.",
            None,
        ));
    }
    Ok(value)
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
