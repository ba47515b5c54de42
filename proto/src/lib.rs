//! The replica wire protocol (gRPC over loopback) between the router and
//! engine replicas, with the conventions both sides share for errors.

#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, missing_docs)]
mod generated {
    tonic::include_proto!("llm_serve.replica.v1");
}

pub use generated::*;

/// Metadata key naming the request parameter an INVALID_ARGUMENT status is
/// about (the `param` of an OpenAI error).
pub const PARAM_METADATA: &str = "x-llm-serve-param";

/// An INVALID_ARGUMENT status naming `param`.
pub fn invalid_argument(param: &str, message: impl Into<String>) -> tonic::Status {
    let mut status = tonic::Status::invalid_argument(message);
    if let Ok(v) = param.parse() {
        status.metadata_mut().insert(PARAM_METADATA, v);
    }
    status
}

/// The parameter an INVALID_ARGUMENT status names, if any.
pub fn status_param(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get(PARAM_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
