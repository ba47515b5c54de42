//! Serve's model-multiplexing metrics, under Ray's names and labels
//! (`deployment`, `replica`, `application`; `model_id` for the registered
//! ids), and vLLM's `lora_requests_info` (as `llm_serve:`), from each
//! replica's `Stats` at scrape time. Replicas without LoRA report none.

use crate::metrics::{histogram, labels, Snapshot, PREFIX};
use prometheus::proto::{Counter, Gauge, Metric, MetricFamily, MetricType};
use std::time::{SystemTime, UNIX_EPOCH};

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn serve_labels(s: &Snapshot) -> [(&str, &str); 3] {
    [
        ("deployment", &s.labels.deployment),
        ("replica", &s.replica),
        ("application", &s.labels.application),
    ]
}

fn value(kind: MetricType, v: f64, pairs: &[(&str, &str)]) -> Metric {
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    if kind == MetricType::COUNTER {
        let mut c = Counter::default();
        c.set_value(v);
        m.set_counter(c);
    } else {
        let mut g = Gauge::default();
        g.set_value(v);
        m.set_gauge(g);
    }
    m
}

/// The multiplex families of every replica that serves adapters.
pub(crate) fn families(snaps: &[Snapshot]) -> Vec<MetricFamily> {
    let lora: Vec<(&Snapshot, &llm_serve_proto::Multiplex)> = snaps
        .iter()
        .filter_map(|s| s.stats.multiplex.as_ref().map(|m| (s, m)))
        .collect();
    if lora.is_empty() {
        return Vec::new();
    }
    use MetricType::{COUNTER, GAUGE, HISTOGRAM};
    let scalar = |name: &str,
                  help: &str,
                  kind: MetricType,
                  f: &dyn Fn(&Snapshot, &llm_serve_proto::Multiplex) -> f64| {
        let metrics = lora
            .iter()
            .map(|(s, m)| value(kind, f(s, m), &serve_labels(s)))
            .collect();
        family(name, help, kind, metrics)
    };
    let histograms = |name: &str,
                      help: &str,
                      pick: &dyn Fn(
        &llm_serve_proto::Multiplex,
    ) -> Option<&llm_serve_proto::Histogram>| {
        let metrics = lora
            .iter()
            .filter_map(|(s, m)| {
                let h = pick(m)?;
                let mut metric = Metric::default();
                metric.set_label(labels(&serve_labels(s)));
                metric.set_histogram(histogram(h));
                Some(metric)
            })
            .collect();
        family(name, help, HISTOGRAM, metrics)
    };
    let mut registered = Vec::new();
    let mut info = Vec::new();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    for (s, m) in &lora {
        for id in &s.stats.loaded_adapters {
            let mut pairs = serve_labels(s).to_vec();
            pairs.push(("model_id", id));
            registered.push(value(GAUGE, 1.0, &pairs));
        }
        let max = m.max_adapters.to_string();
        let running = m.running_adapters.join(",");
        let waiting = m.waiting_adapters.join(",");
        info.push(value(
            GAUGE,
            now,
            &[
                ("model_name", &s.model),
                ("engine", &s.replica),
                ("max_lora", &max),
                ("running_lora_adapters", &running),
                ("waiting_lora_adapters", &waiting),
            ],
        ));
    }
    vec![
        histograms(
            "serve_multiplexed_model_load_latency_ms",
            "The time it takes to load a model.",
            &|m| m.load_latency_ms.as_ref(),
        ),
        histograms(
            "serve_multiplexed_model_unload_latency_ms",
            "The time it takes to unload a model.",
            &|m| m.unload_latency_ms.as_ref(),
        ),
        scalar(
            "serve_num_multiplexed_models",
            "The number of models loaded on the current replica.",
            GAUGE,
            &|s, _| s.stats.loaded_adapters.len() as f64,
        ),
        scalar(
            "serve_multiplexed_models_load_counter_total",
            "The counter for loaded models on the current replica.",
            COUNTER,
            &|_, m| m.loads as f64,
        ),
        scalar(
            "serve_multiplexed_models_unload_counter_total",
            "The counter for unloaded models on the current replica.",
            COUNTER,
            &|_, m| m.unloads as f64,
        ),
        scalar(
            "serve_multiplexed_get_model_requests_counter_total",
            "The counter for get model requests on the current replica.",
            COUNTER,
            &|_, m| m.requests as f64,
        ),
        family(
            "serve_registered_multiplexed_model_id",
            "The model id registered on the current replica.",
            GAUGE,
            registered,
        ),
        family(
            &format!("{PREFIX}lora_requests_info"),
            "Running stats on lora requests.",
            GAUGE,
            info,
        ),
    ]
}
