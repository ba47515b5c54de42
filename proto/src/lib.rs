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

/// A NOT_FOUND status naming `param` (an adapter that does not exist).
pub fn not_found(param: &str, message: impl Into<String>) -> tonic::Status {
    let mut status = tonic::Status::not_found(message);
    if let Ok(v) = param.parse() {
        status.metadata_mut().insert(PARAM_METADATA, v);
    }
    status
}

/// The parameter an INVALID_ARGUMENT or NOT_FOUND status names, if any.
pub fn status_param(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get(PARAM_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The largest request a replica reads (a prompt is bounded by the HTTP
/// body limit well below this; the bound keeps a misbehaving caller from
/// sizing an allocation).
pub const MAX_REQUEST_MESSAGE_BYTES: usize = 1 << 30;

/// Metadata key carrying the deployment's secret on every call to a
/// replica; a replica started with a secret refuses calls without it.
pub const SECRET_METADATA: &str = "x-llm-serve-replica-secret";

/// The environment variable that hands a replica its secret.
pub const SECRET_ENV: &str = "LLM_SERVE_REPLICA_SECRET";

/// Adds the secret to every outgoing call (the router's side).
#[derive(Clone, Debug, Default)]
pub struct PresentSecret(Option<tonic::metadata::AsciiMetadataValue>);

impl PresentSecret {
    /// `None` sends no secret (a replica started without one).
    pub fn new(secret: Option<&str>) -> Self {
        PresentSecret(secret.and_then(|s| s.parse().ok()))
    }
}

impl tonic::service::Interceptor for PresentSecret {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(SECRET_METADATA, v.clone());
        }
        Ok(req)
    }
}

/// Refuses calls that do not carry the secret (the replica's side).
#[derive(Clone, Debug)]
pub struct RequireSecret(Option<Vec<u8>>);

impl RequireSecret {
    /// `None` lets every call through.
    pub fn new(secret: Option<String>) -> Self {
        RequireSecret(secret.filter(|s| !s.is_empty()).map(String::into_bytes))
    }
}

impl tonic::service::Interceptor for RequireSecret {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(want) = &self.0 else {
            return Ok(req);
        };
        let given = req
            .metadata()
            .get(SECRET_METADATA)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if constant_time_eq(given, want) {
            Ok(req)
        } else {
            Err(tonic::Status::unauthenticated(
                "this replica only answers the llm-serve that started it",
            ))
        }
    }
}

/// Equality that takes as long whatever the first differing byte (for
/// secrets and tokens).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    #[test]
    fn only_the_secret_gets_through() {
        let mut present = PresentSecret::new(Some("s3cret"));
        let mut wrong = PresentSecret::new(Some("s3cres"));
        let mut require = RequireSecret::new(Some("s3cret".into()));
        let ok = present
            .call(tonic::Request::new(()))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(require.call(ok).is_ok());
        let bad = wrong
            .call(tonic::Request::new(()))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            require.call(bad).map(|_| ()).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(require.call(tonic::Request::new(())).is_err());
        assert!(RequireSecret::new(None)
            .call(tonic::Request::new(()))
            .is_ok());
    }
}
