//! A deployment's effective settings: defaults, then each layer of options
//! in order of precedence (builder defaults < the application's code — an
//! LLMConfig's `deployment_config` — < the config's `deployments[]` entry).
//! `ray_actor_options`, `user_config` and `autoscaling_config` are replaced
//! whole, never merged key by key, as Ray Serve does.

use super::schema::{AutoscalingOptions, DeploymentOptions, LoggingConfig, NumReplicas};
use super::ConfigError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Autoscaling with every default filled in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutoscalingConfig {
    pub target_ongoing_requests: f64,
    pub min_replicas: u32,
    pub initial_replicas: Option<u32>,
    pub max_replicas: u32,
    pub upscale_delay_s: f64,
    pub downscale_delay_s: f64,
    pub upscaling_factor: f64,
    pub downscaling_factor: f64,
    pub metrics_interval_s: f64,
    pub look_back_period_s: f64,
}

impl AutoscalingConfig {
    fn from_options(o: &AutoscalingOptions, auto: bool) -> Self {
        // `num_replicas: auto` brings its own defaults (target 2, up to
        // 100 replicas); plain autoscaling uses Serve's (target 2, 1..1).
        AutoscalingConfig {
            target_ongoing_requests: o.target_ongoing_requests.unwrap_or(2.0),
            min_replicas: o.min_replicas.unwrap_or(1),
            initial_replicas: o.initial_replicas,
            max_replicas: o.max_replicas.unwrap_or(if auto { 100 } else { 1 }),
            upscale_delay_s: o.upscale_delay_s.unwrap_or(30.0),
            downscale_delay_s: o.downscale_delay_s.unwrap_or(600.0),
            upscaling_factor: o.upscaling_factor.unwrap_or(1.0),
            downscaling_factor: o.downscaling_factor.unwrap_or(1.0),
            metrics_interval_s: o.metrics_interval_s.unwrap_or(10.0),
            look_back_period_s: o.look_back_period_s.unwrap_or(30.0),
        }
    }

    /// Replicas to start with.
    fn initial(&self) -> u32 {
        self.initial_replicas.unwrap_or(self.min_replicas)
    }
}

/// `ray_actor_options` with defaults: one CPU per replica.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActorOptions {
    pub num_cpus: f64,
    pub num_gpus: f64,
    pub memory: f64,
    pub resources: BTreeMap<String, f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accelerator_type: Option<String>,
    pub runtime_env: Map<String, Value>,
}

impl Default for ActorOptions {
    fn default() -> Self {
        ActorOptions {
            num_cpus: 1.0,
            num_gpus: 0.0,
            memory: 0.0,
            resources: BTreeMap::new(),
            accelerator_type: None,
            runtime_env: Map::new(),
        }
    }
}

/// A deployment's settings as `GET /api/serve/applications/` shows them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploymentConfig {
    pub name: String,
    /// `None` while an autoscaler decides.
    pub num_replicas: Option<u32>,
    pub max_ongoing_requests: u64,
    /// -1: unbounded.
    pub max_queued_requests: i64,
    pub user_config: Option<Value>,
    pub autoscaling_config: Option<AutoscalingConfig>,
    pub graceful_shutdown_wait_loop_s: f64,
    pub graceful_shutdown_timeout_s: f64,
    pub health_check_period_s: f64,
    pub health_check_timeout_s: f64,
    pub ray_actor_options: ActorOptions,
    pub is_driver_deployment: bool,
    pub max_replicas_per_node: Option<u32>,
    pub placement_group_bundles: Option<Vec<BTreeMap<String, f64>>>,
    pub placement_group_strategy: Option<String>,
    pub logging_config: Option<LoggingConfig>,
}

impl DeploymentConfig {
    /// Replicas wanted before any autoscaling decision.
    pub fn initial_replicas(&self) -> u32 {
        match (&self.autoscaling_config, self.num_replicas) {
            (Some(a), _) => a.initial(),
            (None, Some(n)) => n,
            (None, None) => 1,
        }
    }
}

/// Folds `layers` (lowest precedence first) into one set of options,
/// applying Serve's rule that setting `num_replicas` drops a lower layer's
/// `autoscaling_config` and the reverse.
pub fn merge(layers: &[&DeploymentOptions]) -> DeploymentOptions {
    let mut out = DeploymentOptions::default();
    for l in layers {
        macro_rules! take {
            ($($f:ident),*) => { $( if l.$f.is_some() { out.$f = l.$f.clone(); } )* };
        }
        let sets_count = matches!(l.num_replicas, Some(NumReplicas::Count(_)));
        if sets_count && l.autoscaling_config.is_none() {
            out.autoscaling_config = None;
        }
        if l.autoscaling_config.is_some() && l.num_replicas.is_none() {
            if let Some(NumReplicas::Count(_)) = out.num_replicas {
                out.num_replicas = None;
            }
        }
        take!(
            name,
            num_replicas,
            max_ongoing_requests,
            max_queued_requests,
            user_config,
            autoscaling_config,
            graceful_shutdown_wait_loop_s,
            graceful_shutdown_timeout_s,
            health_check_period_s,
            health_check_timeout_s,
            ray_actor_options,
            logging_config,
            placement_group_bundles,
            placement_group_strategy,
            max_replicas_per_node
        );
    }
    out
}

/// Checks one layer's values where they were written (`path` is the
/// layer's own path, e.g. `applications[0].deployments[1]`).
pub fn validate(o: &DeploymentOptions, path: &str) -> Result<(), ConfigError> {
    let err = |field: &str, expected: &str| ConfigError::at(format!("{path}.{field}"), expected);
    if let (Some(NumReplicas::Count(_)), Some(_)) = (o.num_replicas, &o.autoscaling_config) {
        return Err(err(
            "num_replicas",
            "num_replicas cannot be a number when autoscaling_config is set (use \"auto\" or leave it out)",
        ));
    }
    if o.max_ongoing_requests == Some(0) {
        return Err(err("max_ongoing_requests", "expected a positive integer"));
    }
    if let Some(q) = o.max_queued_requests {
        if q < -1 || q == 0 {
            return Err(err(
                "max_queued_requests",
                "expected a positive integer, or -1 for no limit",
            ));
        }
    }
    for (field, v, positive) in [
        ("health_check_period_s", o.health_check_period_s, true),
        ("health_check_timeout_s", o.health_check_timeout_s, true),
        (
            "graceful_shutdown_wait_loop_s",
            o.graceful_shutdown_wait_loop_s,
            false,
        ),
        (
            "graceful_shutdown_timeout_s",
            o.graceful_shutdown_timeout_s,
            false,
        ),
    ] {
        if let Some(v) = v {
            let ok = v.is_finite()
                && v <= super::MAX_SECONDS
                && if positive { v > 0.0 } else { v >= 0.0 };
            if !ok {
                let what = if positive {
                    "a positive number of seconds"
                } else {
                    "a number of seconds >= 0"
                };
                return Err(err(
                    field,
                    &format!("expected {what} up to {}, got {v}", super::MAX_SECONDS),
                ));
            }
        }
    }
    if let Some(a) = &o.ray_actor_options {
        for (field, v) in [
            ("num_cpus", a.num_cpus),
            ("num_gpus", a.num_gpus),
            ("memory", a.memory),
            ("object_store_memory", a.object_store_memory),
        ] {
            if let Some(v) = v {
                if !v.is_finite() || v < 0.0 {
                    return Err(err(
                        &format!("ray_actor_options.{field}"),
                        &format!("expected a number >= 0, got {v}"),
                    ));
                }
            }
        }
        if let Some(g) = a.num_gpus {
            if g > 1.0 && g.fract() != 0.0 {
                return Err(err(
                    "ray_actor_options.num_gpus",
                    &format!("expected a fraction of one GPU (0 to 1) or a whole number of GPUs, got {g}"),
                ));
            }
        }
        for (k, v) in a.resources.iter().flatten() {
            if !v.is_finite() || *v < 0.0 {
                return Err(err(
                    &format!("ray_actor_options.resources.{k}"),
                    &format!("expected a number >= 0, got {v}"),
                ));
            }
        }
    }
    if let Some(a) = &o.autoscaling_config {
        let p = |f: &str| format!("autoscaling_config.{f}");
        if let Some(t) = a.target_ongoing_requests {
            if !t.is_finite() || t <= 0.0 {
                return Err(err(
                    &p("target_ongoing_requests"),
                    &format!("expected a positive number, got {t}"),
                ));
            }
        }
        if a.max_replicas == Some(0) {
            return Err(err(&p("max_replicas"), "expected a positive integer"));
        }
        let min = a.min_replicas.unwrap_or(1);
        if let Some(max) = a.max_replicas {
            if min > max {
                return Err(err(
                    &p("min_replicas"),
                    &format!("min_replicas ({min}) must not exceed max_replicas ({max})"),
                ));
            }
        }
        if let Some(i) = a.initial_replicas {
            let max = a.max_replicas.unwrap_or(u32::MAX);
            if i < min || i > max {
                return Err(err(
                    &p("initial_replicas"),
                    "expected a value between min_replicas and max_replicas",
                ));
            }
        }
        for (field, v) in [
            ("upscale_delay_s", a.upscale_delay_s),
            ("downscale_delay_s", a.downscale_delay_s),
            ("metrics_interval_s", a.metrics_interval_s),
            ("look_back_period_s", a.look_back_period_s),
        ] {
            if let Some(v) = v {
                if !(0.0..=super::MAX_SECONDS).contains(&v) {
                    return Err(err(
                        &p(field),
                        &format!(
                            "expected a number of seconds from 0 to {}, got {v}",
                            super::MAX_SECONDS
                        ),
                    ));
                }
            }
        }
        for (field, v) in [
            ("upscaling_factor", a.upscaling_factor),
            ("downscaling_factor", a.downscaling_factor),
        ] {
            if let Some(v) = v {
                if !v.is_finite() || v <= 0.0 {
                    return Err(err(
                        &p(field),
                        &format!("expected a positive number, got {v}"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The effective settings of deployment `name` from merged options.
pub fn resolve(name: &str, o: &DeploymentOptions) -> DeploymentConfig {
    let auto = o.num_replicas == Some(NumReplicas::Auto);
    let autoscaling_config = match (&o.autoscaling_config, auto) {
        (Some(a), _) => Some(AutoscalingConfig::from_options(a, auto)),
        (None, true) => Some(AutoscalingConfig::from_options(
            &AutoscalingOptions::default(),
            true,
        )),
        (None, false) => None,
    };
    let num_replicas = match (o.num_replicas, &autoscaling_config) {
        (Some(NumReplicas::Count(n)), None) => Some(n),
        (_, Some(_)) => None,
        (_, None) => Some(1),
    };
    let default_max_ongoing = if auto { 5 } else { 100 };
    let ray_actor_options = match &o.ray_actor_options {
        None => ActorOptions::default(),
        Some(a) => ActorOptions {
            num_cpus: a.num_cpus.unwrap_or(1.0),
            num_gpus: a.num_gpus.unwrap_or(0.0),
            memory: a.memory.unwrap_or(0.0),
            resources: a.resources.clone().unwrap_or_default(),
            accelerator_type: a.accelerator_type.clone(),
            runtime_env: a.runtime_env.clone().unwrap_or_default(),
        },
    };
    DeploymentConfig {
        name: name.to_string(),
        num_replicas,
        max_ongoing_requests: o.max_ongoing_requests.unwrap_or(default_max_ongoing),
        max_queued_requests: o.max_queued_requests.unwrap_or(-1),
        user_config: o.user_config.clone(),
        autoscaling_config,
        graceful_shutdown_wait_loop_s: o.graceful_shutdown_wait_loop_s.unwrap_or(2.0),
        graceful_shutdown_timeout_s: o.graceful_shutdown_timeout_s.unwrap_or(20.0),
        health_check_period_s: o.health_check_period_s.unwrap_or(10.0),
        health_check_timeout_s: o.health_check_timeout_s.unwrap_or(30.0),
        ray_actor_options,
        is_driver_deployment: false,
        max_replicas_per_node: o.max_replicas_per_node,
        placement_group_bundles: o.placement_group_bundles.clone(),
        placement_group_strategy: o.placement_group_strategy.clone(),
        logging_config: o.logging_config.clone(),
    }
}
