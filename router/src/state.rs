//! What every request handler shares: the router's setup (`RouterConfig`),
//! its state (`App`: the served models and the metrics) and the per-request
//! facts the middleware hands to handlers (`RequestContext`). It lives apart
//! from `app` (which wires the handlers into routes) so the handlers can
//! use it without depending on the module that depends on them.

use crate::metrics::Metrics;
use crate::replicas::Models;
use axum::http::HeaderName;
use std::sync::Arc;
use std::time::Duration;

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
    /// Serve vLLM's `/v1/load_lora_adapter` and `/v1/unload_lora_adapter`
    /// (`LLM_SERVE_ALLOW_RUNTIME_LORA_UPDATING`, as vLLM's
    /// `VLLM_ALLOW_RUNTIME_LORA_UPDATING`).
    pub allow_runtime_lora_updating: bool,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            api_key: None,
            max_body_bytes: 32 * 1024 * 1024,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            allow_runtime_lora_updating: false,
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
