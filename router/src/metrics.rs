//! `/metrics` in Prometheus' text format: the router's HTTP metrics, and
//! every replica's engine metrics under vLLM's names with an `llm_serve:`
//! prefix, labelled by `model_name` and `engine` (the replica).
//!
//! Engine metrics are read from the replicas (the `Stats` call) when
//! `/metrics` is scraped, so they are as fresh as the scrape. One
//! `Metrics` is shared by every application of a proxy, and also holds
//! Ray Serve's metrics (`serve_metrics`).
//!
//! This module depends on `replicas` (to scrape them), never the other way:
//! replicas record into `ServeMetrics` alone.

use crate::replicas::{Deployment, DeploymentLabels, ReplicaState};
use crate::serve_metrics::ServeMetrics;
use llm_serve_proto as pb;
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use std::sync::Arc;
use std::time::Duration;

/// The engine metrics' name prefix (vLLM's is `vllm:`).
pub const PREFIX: &str = "llm_serve:";
/// How long a scrape waits for a replica's counters.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// The proxy's metrics registry and what the router records in it.
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_latency: HistogramVec,
    pub serve: ServeMetrics,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route, method and status.",
            ),
            &["handler", "method", "status"],
        )?;
        let http_latency = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time to answer HTTP requests (to the end of the headers for streams).",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["handler", "method"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_latency.clone()))?;
        let serve = ServeMetrics::register(&registry)?;
        Ok(Metrics {
            registry,
            http_requests,
            http_latency,
            serve,
        })
    }

    pub fn observe_http(&self, handler: &str, method: &str, status: u16, latency: Duration) {
        self.http_requests
            .with_label_values(&[handler, method, &status.to_string()])
            .inc();
        self.http_latency
            .with_label_values(&[handler, method])
            .observe(latency.as_secs_f64());
    }

    /// The whole exposition: HTTP and Serve metrics, then the engine of
    /// each replica of `deployments`.
    pub async fn render(
        &self,
        deployments: &[Arc<Deployment>],
    ) -> Result<String, prometheus::Error> {
        let mut snapshots = Vec::new();
        let mut calls = Vec::new();
        for d in deployments {
            for r in d.replicas() {
                if matches!(r.state(), ReplicaState::Ready | ReplicaState::Draining) {
                    let model = d.model_id.clone();
                    let labels = d.labels().clone();
                    calls.push(async move {
                        let mut client = r.client();
                        let stats =
                            tokio::time::timeout(STATS_TIMEOUT, client.stats(pb::StatsRequest {}))
                                .await;
                        match stats {
                            Ok(Ok(s)) => Some(Snapshot {
                                model,
                                replica: r.id.clone(),
                                labels,
                                stats: s.into_inner(),
                            }),
                            Ok(Err(e)) => {
                                tracing::warn!(replica = %r.id, "stats: {}", e.message());
                                None
                            }
                            Err(_) => {
                                tracing::warn!(replica = %r.id, "stats: no answer in time");
                                None
                            }
                        }
                    });
                }
            }
        }
        for s in futures::future::join_all(calls).await.into_iter().flatten() {
            snapshots.push(s);
        }
        let mut families = self.registry.gather();
        families.extend(engine_families(&snapshots));
        families.extend(crate::multiplex_metrics::families(&snapshots));
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// A deployment records into the proxy's Serve counters.
impl From<Arc<Metrics>> for ServeMetrics {
    fn from(m: Arc<Metrics>) -> Self {
        m.serve.clone()
    }
}

impl From<&Metrics> for ServeMetrics {
    fn from(m: &Metrics) -> Self {
        m.serve.clone()
    }
}

/// One replica's counters, with its model and replica id.
pub(crate) struct Snapshot {
    pub model: String,
    pub replica: String,
    pub labels: DeploymentLabels,
    pub stats: pb::StatsResponse,
}

pub(crate) fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(format!("{PREFIX}{name}"));
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn scalar_family(
    snaps: &[Snapshot],
    name: &str,
    help: &str,
    kind: MetricType,
    value: impl Fn(&pb::StatsResponse) -> f64,
) -> MetricFamily {
    let metrics = snaps
        .iter()
        .map(
            |Snapshot {
                 model,
                 replica: engine,
                 stats: s,
                 ..
             }| {
                let mut m = Metric::default();
                m.set_label(labels(&[("model_name", model), ("engine", engine)]));
                match kind {
                    MetricType::COUNTER => {
                        let mut c = Counter::default();
                        c.set_value(value(s));
                        m.set_counter(c);
                    }
                    _ => {
                        let mut g = Gauge::default();
                        g.set_value(value(s));
                        m.set_gauge(g);
                    }
                }
                m
            },
        )
        .collect();
    family(name, help, kind, metrics)
}

/// vLLM's engine metrics for every replica snapshot.
fn engine_families(snaps: &[Snapshot]) -> Vec<MetricFamily> {
    if snaps.is_empty() {
        return Vec::new();
    }
    use MetricType::{COUNTER, GAUGE};
    let mut out = vec![
        scalar_family(
            snaps,
            "num_requests_running",
            "Requests in model execution batches.",
            GAUGE,
            |s| s.num_requests_running as f64,
        ),
        scalar_family(
            snaps,
            "num_requests_waiting",
            "Requests waiting to be processed.",
            GAUGE,
            |s| s.num_requests_waiting as f64,
        ),
        scalar_family(
            snaps,
            "kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            GAUGE,
            |s| s.kv_cache_usage,
        ),
        scalar_family(
            snaps,
            "prefix_cache_queries_total",
            "Prefix cache queries, in terms of number of queried tokens.",
            COUNTER,
            |s| s.prefix_cache_queries as f64,
        ),
        scalar_family(
            snaps,
            "prefix_cache_hits_total",
            "Prefix cache hits, in terms of number of cached tokens.",
            COUNTER,
            |s| s.prefix_cache_hits as f64,
        ),
        scalar_family(
            snaps,
            "num_preemptions_total",
            "Cumulative number of preemptions.",
            COUNTER,
            |s| s.num_preemptions as f64,
        ),
        scalar_family(
            snaps,
            "prompt_tokens_total",
            "Number of prefill tokens processed.",
            COUNTER,
            |s| s.prompt_tokens as f64,
        ),
        scalar_family(
            snaps,
            "generation_tokens_total",
            "Number of generation tokens processed.",
            COUNTER,
            |s| s.generation_tokens as f64,
        ),
    ];
    let mut success = Vec::new();
    for Snapshot {
        model,
        replica: engine,
        stats: s,
        ..
    } in snaps
    {
        let mut reasons: Vec<_> = s.request_success.iter().collect();
        reasons.sort();
        for (reason, &count) in reasons {
            let mut m = Metric::default();
            m.set_label(labels(&[
                ("model_name", model),
                ("engine", engine),
                ("finished_reason", reason),
            ]));
            let mut c = Counter::default();
            c.set_value(count as f64);
            m.set_counter(c);
            success.push(m);
        }
    }
    out.push(family(
        "request_success_total",
        "Count of successfully processed requests.",
        COUNTER,
        success,
    ));
    // Histograms, in the order the first replica lists them.
    for first in &snaps[0].stats.histograms {
        let metrics = snaps
            .iter()
            .filter_map(
                |Snapshot {
                     model,
                     replica: engine,
                     stats: s,
                     ..
                 }| {
                    let h = s.histograms.iter().find(|h| h.name == first.name)?;
                    let mut m = Metric::default();
                    m.set_label(labels(&[("model_name", model), ("engine", engine)]));
                    m.set_histogram(histogram(h));
                    Some(m)
                },
            )
            .collect();
        out.push(family(
            &first.name,
            &first.help,
            MetricType::HISTOGRAM,
            metrics,
        ));
    }
    out
}

pub(crate) fn histogram(h: &pb::Histogram) -> Histogram {
    let mut out = Histogram::default();
    let mut cumulative = 0u64;
    let mut buckets = Vec::with_capacity(h.bounds.len());
    for (i, &bound) in h.bounds.iter().enumerate() {
        cumulative += h.counts.get(i).copied().unwrap_or(0);
        let mut b = Bucket::default();
        b.set_upper_bound(bound);
        b.set_cumulative_count(cumulative);
        buckets.push(b);
    }
    out.set_bucket(buckets);
    out.set_sample_count(h.counts.iter().sum());
    out.set_sample_sum(h.sum);
    out
}
