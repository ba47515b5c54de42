//! The HTTP proxy: one listener for every application, routing each
//! request by the longest matching `route_prefix` to that application's
//! router (the OpenAI API) with the prefix stripped. It also answers
//! `/-/routes`, `/-/healthz` and `/metrics` itself, enforces
//! `request_timeout_s` (408) and the keep-alive timeout, counts Serve's
//! HTTP metrics and writes the access log.

mod routes;

pub use routes::Routes;

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use llm_serve_router::app::REQUEST_ID;
use llm_serve_router::{ApiError, Metrics};
use serde_json::json;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// How the proxy behaves (`http_options`) and where it runs.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    pub request_timeout: Option<Duration>,
    pub keep_alive_timeout: Duration,
    pub node_id: String,
    pub node_ip: String,
}

pub struct Proxy {
    routes: Arc<Routes>,
    metrics: Arc<Metrics>,
    options: ProxyOptions,
    draining: AtomicBool,
}

impl Proxy {
    pub fn new(routes: Arc<Routes>, metrics: Arc<Metrics>, options: ProxyOptions) -> Arc<Self> {
        Arc::new(Proxy {
            routes,
            metrics,
            options,
            draining: AtomicBool::new(false),
        })
    }

    /// Accepts connections until `shutdown`, then stops accepting and
    /// waits up to `grace` for open requests to finish.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
    ) {
        let graceful = GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.options.keep_alive_timeout);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let stream = match accepted {
                        Ok((s, _)) => s,
                        Err(e) => {
                            tracing::warn!("cannot accept a connection: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let proxy = self.clone();
                    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let proxy = proxy.clone();
                        async move { Ok::<_, Infallible>(proxy.handle(req.map(Body::new)).await) }
                    });
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!("connection ended: {e}");
                        }
                    });
                }
                _ = &mut shutdown => break,
            }
        }
        drop(listener);
        self.draining.store(true, Ordering::SeqCst);
        tokio::select! {
            _ = graceful.shutdown() => {}
            _ = tokio::time::sleep(grace) => {
                tracing::warn!("requests still open after {grace:?}; closing them");
            }
        }
    }

    async fn handle(&self, mut req: Request<Body>) -> Response<Body> {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let request_id = request_id(&req);
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            req.headers_mut().insert(REQUEST_ID, v);
        }
        let ongoing = Ongoing::new(
            self.metrics
                .serve
                .ongoing_http(&self.options.node_id, &self.options.node_ip),
        );
        // Counted and logged as 499 if the client leaves before the
        // response headers (this future is dropped then).
        let mut exchange = Exchange {
            metrics: self.metrics.clone(),
            method: method.clone(),
            path: path.clone(),
            request_id: request_id.clone(),
            route: String::new(),
            application: String::new(),
            started,
            answered: false,
        };
        let (route, application, mut response) = match path.as_str() {
            "/-/routes" => (
                path.clone(),
                String::new(),
                json_response(StatusCode::OK, json!(self.routes.table())),
            ),
            "/-/healthz" => (path.clone(), String::new(), self.healthz()),
            "/metrics" => (path.clone(), String::new(), self.render_metrics().await),
            _ => match self.routes.lookup(&path) {
                None => (
                    String::new(),
                    String::new(),
                    ApiError::not_found(format!(
                        "Path '{path}' not found. Ping http://.../-/routes for available routes."
                    ))
                    .into_response_body(),
                ),
                Some((r, rest)) => {
                    *req.uri_mut() = below_prefix(req.uri(), &rest);
                    exchange.route = r.prefix.clone();
                    exchange.application = r.app.clone();
                    let response = self.forward(r.service, req).await;
                    (r.prefix, r.app, response)
                }
            },
        };
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID, v);
        }
        let status = response.status();
        exchange.route = route;
        exchange.application = application;
        exchange.record(status.as_u16(), "");
        // The ongoing-requests gauge drops when the body is done; a stream
        // still going at the request timeout is cut there.
        let streaming = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let timeout = self
            .options
            .request_timeout
            .filter(|_| streaming)
            .map(|t| started + t);
        let (parts, body) = response.into_parts();
        Response::from_parts(parts, guarded_body(body, ongoing, timeout, request_id))
    }

    async fn forward(&self, service: axum::Router, req: Request<Body>) -> Response<Body> {
        let call = service.oneshot(req);
        let result = match self.options.request_timeout {
            Some(t) => match tokio::time::timeout(t, call).await {
                Ok(r) => r,
                Err(_) => return ApiError::timeout(t.as_secs_f64()).into_response_body(),
            },
            None => call.await,
        };
        match result {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }

    fn healthz(&self) -> Response<Body> {
        if self.draining.load(Ordering::SeqCst) {
            text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "This node is being drained.",
            )
        } else {
            text_response(StatusCode::OK, "success")
        }
    }

    async fn render_metrics(&self) -> Response<Body> {
        match self.metrics.render(&self.routes.deployments()).await {
            Ok(text) => {
                let mut r = text_response(StatusCode::OK, text);
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            Err(e) => ApiError::internal(e).into_response_body(),
        }
    }
}

/// Holds the ongoing-requests gauge up for as long as it lives.
struct Ongoing(prometheus::Gauge);

impl Ongoing {
    fn new(gauge: prometheus::Gauge) -> Self {
        gauge.inc();
        Ongoing(gauge)
    }
}

impl Drop for Ongoing {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Status recorded for a client that left before its response (nginx's
/// and Ray Serve's 499).
const CLIENT_CLOSED: u16 = 499;

/// One request's metrics and access line, recorded once: when its
/// response starts, or — if the client leaves before — when the request
/// is dropped.
struct Exchange {
    metrics: Arc<Metrics>,
    method: axum::http::Method,
    path: String,
    request_id: String,
    route: String,
    application: String,
    started: Instant,
    answered: bool,
}

impl Exchange {
    fn record(&mut self, status: u16, note: &str) {
        if self.answered {
            return;
        }
        self.answered = true;
        let code = status.to_string();
        let (route, app, method) = (&self.route, &self.application, self.method.as_str());
        let m = &self.metrics.serve;
        m.num_http_requests
            .with_label_values(&[route, method, app, &code])
            .inc();
        if status != StatusCode::OK.as_u16() {
            m.num_http_error_requests
                .with_label_values(&[route, &code, method, app])
                .inc();
        }
        let ms = self.started.elapsed().as_secs_f64() * 1e3;
        m.http_request_latency_ms
            .with_label_values(&[method, route, app, &code])
            .observe(ms);
        let logged = !self.path.starts_with("/-/") && self.path != "/metrics";
        if crate::logs::access_log_enabled() && logged {
            tracing::info!(
                request_id = %self.request_id,
                route = %route,
                application = %app,
                "{method} {status} {ms:.1}ms{note}"
            );
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.record(CLIENT_CLOSED, " (client disconnected before the response)");
    }
}

/// The client's `X-Request-ID`, or a new one.
fn request_id(req: &Request<Body>) -> String {
    req.headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 256)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

/// The request's URI with its path replaced by `path` (the query kept).
fn below_prefix(uri: &Uri, path: &str) -> Uri {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    pq.parse().unwrap_or_else(|_| uri.clone())
}

/// A body that holds the ongoing-requests gauge until it ends, and ends
/// at the request deadline (dropping the rest, which cancels the
/// request on its replica).
fn guarded_body(
    body: Body,
    ongoing: Ongoing,
    deadline: Option<Instant>,
    request_id: String,
) -> Body {
    let done = ongoing;
    let stream = body.into_data_stream();
    let cut = async move {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending::<()>().await,
        }
        tracing::warn!(request_id = %request_id, "request_timeout_s reached while streaming; closing the response");
    };
    let stream = stream.take_until(Box::pin(cut)).map(move |chunk| {
        let _held = &done;
        chunk
    });
    Body::from_stream(stream)
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn text_response(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Body::from(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

trait IntoResponseBody {
    fn into_response_body(self) -> Response<Body>;
}

impl IntoResponseBody for ApiError {
    fn into_response_body(self) -> Response<Body> {
        json_response(self.status, self.body())
    }
}
