//! Errors as clients see them: OpenAI's JSON shape
//! `{"error": {"message", "type", "param", "code"}}` with the HTTP status
//! in `code`, and the router's own setup errors.

use crate::wire::{ErrorBody, ErrorDetail};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use llm_serve_proto::status_param;

/// An error answered to an API client.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's error `type` (`BadRequestError`, `NotFoundError`, ...).
    pub kind: &'static str,
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// 400: the request is wrong; `param` names the field.
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            param: param.map(str::to_owned),
            ..ApiError::new(StatusCode::BAD_REQUEST, "BadRequestError", message)
        }
    }

    /// 404 for a model this server does not serve (vLLM's wording).
    pub fn model_not_found(model: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFoundError",
            format!("The model `{model}` does not exist."),
        )
        .with_param("model")
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "NotFoundError", message)
    }

    pub fn unauthorized() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "AuthenticationError",
            "Incorrect API key provided. Send it as `Authorization: Bearer <key>`.",
        )
    }

    pub fn payload_too_large(limit: usize) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLargeError",
            format!("The request body is larger than the limit of {limit} bytes."),
        )
    }

    /// 415: the body is not sent as JSON.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaTypeError",
            message,
        )
    }

    /// 413 for a reply of the replica protocol over its size limit.
    pub fn reply_too_large(detail: &str) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLargeError",
            format!("The result is too large to send ({detail}); ask for less at a time."),
        )
    }

    /// 503: no replica can take the request now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableError",
            message,
        )
    }

    /// 408: the request took longer than the server's request timeout.
    pub fn timeout(seconds: f64) -> Self {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "TimeoutError",
            format!("Request timed out after {seconds} s (the server's request_timeout_s)."),
        )
    }

    /// 500 with a generic message; the detail goes to the log only.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {detail}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "Internal server error",
        )
    }

    /// The client-facing error for a replica's gRPC status.
    pub fn from_status(s: &tonic::Status) -> Self {
        use tonic::Code;
        if let Some(detail) = message_size_error(s) {
            return ApiError::reply_too_large(&detail);
        }
        match s.code() {
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => ApiError {
                param: status_param(s),
                ..ApiError::new(StatusCode::BAD_REQUEST, "BadRequestError", s.message())
            },
            Code::NotFound => ApiError {
                param: status_param(s),
                ..ApiError::new(StatusCode::NOT_FOUND, "NotFoundError", s.message())
            },
            Code::Unavailable | Code::ResourceExhausted => {
                ApiError::unavailable(format!("No replica can take the request: {}", s.message()))
            }
            Code::DeadlineExceeded => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "TimeoutError",
                "Request server side timeout",
            ),
            Code::Unimplemented => ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "NotImplementedError",
                s.message(),
            ),
            _ => ApiError::internal(format!("replica error {:?}: {}", s.code(), s.message())),
        }
    }

    /// The `{"error": {...}}` body, typed.
    pub fn wire(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: ErrorDetail {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.status.as_u16(),
            },
        }
    }

    /// The `{"error": {...}}` body as a JSON value (for the server's own
    /// responses).
    pub fn body(&self) -> serde_json::Value {
        // An error body is strings and a number: serializing it cannot fail.
        serde_json::to_value(self.wire()).unwrap_or_default()
    }

    /// The `{"error": {...}}` body as JSON text (for streams).
    pub fn body_text(&self) -> String {
        // As in `body`, this cannot fail.
        serde_json::to_string(&self.wire()).unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.wire())).into_response()
    }
}

/// The sizes named by tonic's error for a message over its limit
/// (`decoded message length too large: found N bytes, the limit is: M
/// bytes`), if `s` is one.
fn message_size_error(s: &tonic::Status) -> Option<String> {
    let m = s.message();
    let at = m.find("message length too large: ")?;
    Some(m[at + "message length too large: ".len()..].to_string())
}

/// Errors setting the router up (not request errors).
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("replica address {addr}: {detail}")]
    ReplicaAddress { addr: String, detail: String },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The body as it was written before it was typed.
    fn literal(e: &ApiError) -> serde_json::Value {
        json!({
            "error": {
                "message": e.message,
                "type": e.kind,
                "param": e.param,
                "code": e.status.as_u16(),
            }
        })
    }

    #[test]
    fn the_body_is_openais_error_object() {
        for e in [
            ApiError::bad_request("`n` must be \"1\".", Some("n")),
            ApiError::model_not_found("x/y"),
            ApiError::unavailable("no replica"),
            ApiError::timeout(2.5),
        ] {
            assert_eq!(e.body_text(), literal(&e).to_string());
            assert_eq!(e.body(), literal(&e));
            assert_eq!(e.body().to_string(), literal(&e).to_string());
        }
    }
}
