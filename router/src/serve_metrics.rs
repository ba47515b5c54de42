//! Ray Serve's metrics (without the `ray_` prefix) under their documented
//! names and labels. The router records the deployment-side ones as
//! requests go to replicas; the proxy and the controller (in the server)
//! record theirs on the same registry, so one scrape shows them all.
//!
//! The counters are their own module, apart from the proxy-wide `Metrics`,
//! so `replicas` can record into them without depending on `metrics`
//! (which reads the replicas' engine stats when scraped).

use prometheus::{
    Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// Latency buckets in milliseconds, Ray Serve's defaults.
pub const LATENCY_BUCKETS_MS: [f64; 20] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0, 1000.0, 2000.0, 5000.0,
    10000.0, 60000.0, 120000.0, 300000.0, 600000.0, 3600000.0,
];

/// Ray Serve's counters. A clone shares the counters (prometheus' metric
/// vectors are handles), so each deployment keeps one.
#[derive(Clone)]
pub struct ServeMetrics {
    // Recorded by the router, per replica.
    pub deployment_request_counter: IntCounterVec,
    pub deployment_error_counter: IntCounterVec,
    pub deployment_processing_latency_ms: HistogramVec,
    pub replica_processing_queries: IntGaugeVec,
    pub deployment_queued_queries: IntGaugeVec,
    pub num_ongoing_requests_at_replicas: IntGaugeVec,
    pub num_router_requests: IntCounterVec,
    // Recorded by the controller.
    pub deployment_replica_healthy: GaugeVec,
    pub deployment_replica_starts: IntCounterVec,
    // Recorded by the HTTP proxy.
    pub num_http_requests: IntCounterVec,
    pub num_http_error_requests: IntCounterVec,
    pub num_deployment_http_error_requests: IntCounterVec,
    pub http_request_latency_ms: HistogramVec,
    pub num_ongoing_http_requests: GaugeVec,
}

const REPLICA: [&str; 4] = ["deployment", "replica", "route", "application"];
const REPLICA_NO_ROUTE: [&str; 3] = ["deployment", "replica", "application"];
const HANDLE: [&str; 4] = ["deployment", "application", "handle", "actor_id"];

fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn int_gauge(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<GaugeVec> {
    let g = GaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram_ms(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<HistogramVec> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS_MS.to_vec()),
        labels,
    )?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

impl ServeMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(ServeMetrics {
            deployment_request_counter: counter(
                r,
                "serve_deployment_request_counter_total",
                "The number of queries that have been processed in this replica.",
                &REPLICA,
            )?,
            deployment_error_counter: counter(
                r,
                "serve_deployment_error_counter_total",
                "The number of exceptions that have occurred in this replica.",
                &REPLICA,
            )?,
            deployment_processing_latency_ms: histogram_ms(
                r,
                "serve_deployment_processing_latency_ms",
                "The latency for queries to be processed.",
                &REPLICA,
            )?,
            replica_processing_queries: int_gauge(
                r,
                "serve_replica_processing_queries",
                "The current number of queries being processed.",
                &REPLICA_NO_ROUTE,
            )?,
            deployment_queued_queries: int_gauge(
                r,
                "serve_deployment_queued_queries",
                "The current number of queries to this deployment waiting to be assigned to a replica.",
                &HANDLE,
            )?,
            num_ongoing_requests_at_replicas: int_gauge(
                r,
                "serve_num_ongoing_requests_at_replicas",
                "The current number of requests to this deployment that have been submitted to a replica.",
                &HANDLE,
            )?,
            num_router_requests: counter(
                r,
                "serve_num_router_requests_total",
                "The number of requests processed by the router.",
                &["deployment", "route", "application", "handle", "actor_id"],
            )?,
            deployment_replica_healthy: gauge(
                r,
                "serve_deployment_replica_healthy",
                "Tracks whether this deployment replica is healthy. 1 means healthy, 0 means unhealthy.",
                &REPLICA_NO_ROUTE,
            )?,
            deployment_replica_starts: counter(
                r,
                "serve_deployment_replica_starts_total",
                "The number of times this replica has been restarted due to failure.",
                &REPLICA_NO_ROUTE,
            )?,
            num_http_requests: counter(
                r,
                "serve_num_http_requests_total",
                "The number of HTTP requests processed.",
                &["route", "method", "application", "status_code"],
            )?,
            num_http_error_requests: counter(
                r,
                "serve_num_http_error_requests_total",
                "The number of non-200 HTTP responses.",
                &["route", "error_code", "method", "application"],
            )?,
            num_deployment_http_error_requests: counter(
                r,
                "serve_num_deployment_http_error_requests_total",
                "The number of non-200 HTTP responses returned by each deployment.",
                &["deployment", "error_code", "method", "route", "application"],
            )?,
            http_request_latency_ms: histogram_ms(
                r,
                "serve_http_request_latency_ms",
                "The end-to-end latency of HTTP requests (measured from the Serve HTTP proxy).",
                &["method", "route", "application", "status_code"],
            )?,
            num_ongoing_http_requests: gauge(
                r,
                "serve_num_ongoing_http_requests",
                "The number of ongoing requests in the HTTP proxy.",
                &["node_id", "node_ip_address"],
            )?,
        })
    }

    /// Drops a stopped replica's series, so a scrape lists live replicas.
    pub fn forget_replica(&self, deployment: &str, replica: &str, application: &str) {
        let _ = self.replica_processing_queries.remove_label_values(&[
            deployment,
            replica,
            application,
        ]);
        let _ = self.deployment_replica_healthy.remove_label_values(&[
            deployment,
            replica,
            application,
        ]);
    }

    /// A gauge for the proxy's ongoing requests on this node.
    pub fn ongoing_http(&self, node_id: &str, node_ip: &str) -> Gauge {
        self.num_ongoing_http_requests
            .with_label_values(&[node_id, node_ip])
    }
}
