//! Serve's autoscaling policy for one deployment. Every
//! `metrics_interval_s` the deployment's ongoing requests (in flight at
//! its replicas plus queued in the router) are sampled; their average
//! over `look_back_period_s`, against `target_ongoing_requests` per
//! running replica, gives the replicas wanted:
//! `ceil(running × (1 + (ratio − 1) × factor))`, `factor` being
//! `upscaling_factor` or `downscaling_factor`, clamped to
//! `[min_replicas, max_replicas]`. A change applies once the wish has held
//! for `upscale_delay_s` / `downscale_delay_s`; scaling up from zero
//! replicas applies at once (a request is waiting).

use crate::config::resolve::AutoscalingConfig;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Autoscaler {
    samples: VecDeque<(Instant, f64)>,
    next_sample: Option<Instant>,
    above_since: Option<Instant>,
    below_since: Option<Instant>,
}

fn secs(s: f64) -> Duration {
    crate::config::duration(s)
}

impl Autoscaler {
    pub fn new() -> Self {
        Autoscaler {
            samples: VecDeque::new(),
            next_sample: None,
            above_since: None,
            below_since: None,
        }
    }

    /// Records `ongoing` when a metrics interval has passed (at once when
    /// `now_anyway`: requests wait for a deployment scaled to zero).
    pub fn observe(&mut self, c: &AutoscalingConfig, now: Instant, ongoing: f64, now_anyway: bool) {
        if !now_anyway && self.next_sample.is_some_and(|t| now < t) {
            return;
        }
        self.next_sample = Some(now + secs(c.metrics_interval_s));
        self.samples.push_back((now, ongoing));
        let window = secs(c.look_back_period_s).max(secs(c.metrics_interval_s));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > window)
        {
            self.samples.pop_front();
        }
    }

    /// Ongoing requests averaged over the look-back window.
    pub fn average(&self) -> Option<f64> {
        if self.samples.is_empty() {
            return None;
        }
        Some(self.samples.iter().map(|(_, v)| v).sum::<f64>() / self.samples.len() as f64)
    }

    /// The replicas wanted now, before any delay.
    pub fn desired(c: &AutoscalingConfig, average: f64, running: u32, target: u32) -> u32 {
        let wanted = if running == 0 {
            if average > 0.0 {
                1
            } else {
                target
            }
        } else {
            let ratio = average / (f64::from(running) * c.target_ongoing_requests);
            let factor = if ratio >= 1.0 {
                c.upscaling_factor
            } else {
                c.downscaling_factor
            };
            let smoothed = 1.0 + (ratio - 1.0) * factor;
            // A hair below an integer is that integer (float noise).
            (f64::from(running) * smoothed - 1e-9).ceil().max(0.0) as u32
        };
        wanted.clamp(c.min_replicas, c.max_replicas.max(c.min_replicas))
    }

    /// The target after this tick: `target` unless a change has been
    /// wanted long enough.
    pub fn decide(
        &mut self,
        c: &AutoscalingConfig,
        now: Instant,
        target: u32,
        running: u32,
    ) -> u32 {
        let Some(average) = self.average() else {
            return target;
        };
        let desired = Self::desired(c, average, running, target);
        if desired > target {
            self.below_since = None;
            if target == 0 {
                self.above_since = None;
                return desired;
            }
            let since = *self.above_since.get_or_insert(now);
            if now.duration_since(since) >= secs(c.upscale_delay_s) {
                self.above_since = None;
                return desired;
            }
        } else if desired < target {
            self.above_since = None;
            let since = *self.below_since.get_or_insert(now);
            if now.duration_since(since) >= secs(c.downscale_delay_s) {
                self.below_since = None;
                return desired;
            }
        } else {
            self.above_since = None;
            self.below_since = None;
        }
        target
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AutoscalingConfig {
        AutoscalingConfig {
            target_ongoing_requests: 2.0,
            min_replicas: 1,
            initial_replicas: None,
            max_replicas: 10,
            upscale_delay_s: 30.0,
            downscale_delay_s: 600.0,
            upscaling_factor: 1.0,
            downscaling_factor: 1.0,
            metrics_interval_s: 10.0,
            look_back_period_s: 30.0,
        }
    }

    #[test]
    fn desired_replicas_follow_ongoing_requests_over_the_target() {
        let c = config();
        // 2 replicas, 12 ongoing, target 2 each: 6 replicas.
        assert_eq!(Autoscaler::desired(&c, 12.0, 2, 2), 6);
        assert_eq!(Autoscaler::desired(&c, 4.0, 2, 2), 2);
        assert_eq!(Autoscaler::desired(&c, 1.0, 2, 2), 1);
        assert_eq!(Autoscaler::desired(&c, 0.0, 3, 3), 1, "clamped to min");
        assert_eq!(Autoscaler::desired(&c, 1000.0, 2, 2), 10, "clamped to max");
        // Ray's example: target 1, 2 replicas, 3 ongoing → 3 replicas.
        let one = AutoscalingConfig {
            target_ongoing_requests: 1.0,
            ..config()
        };
        assert_eq!(Autoscaler::desired(&one, 3.0, 2, 2), 3);
        // A smaller factor moves part of the way.
        let slow = AutoscalingConfig {
            upscaling_factor: 0.5,
            ..config()
        };
        assert_eq!(Autoscaler::desired(&slow, 12.0, 2, 2), 4);
        // From zero: one replica as soon as anything waits.
        let zero = AutoscalingConfig {
            min_replicas: 0,
            ..config()
        };
        assert_eq!(Autoscaler::desired(&zero, 0.5, 0, 0), 1);
        assert_eq!(Autoscaler::desired(&zero, 0.0, 0, 0), 0);
    }

    #[test]
    fn changes_wait_for_their_delays() {
        let c = config();
        let mut a = Autoscaler::new();
        let t0 = Instant::now();
        a.observe(&c, t0, 8.0, false);
        assert_eq!(a.decide(&c, t0, 1, 1), 1);
        // Samples within the interval are skipped.
        a.observe(&c, t0 + secs(5.0), 100.0, false);
        assert_eq!(a.average(), Some(8.0));
        a.observe(&c, t0 + secs(10.0), 8.0, false);
        assert_eq!(a.decide(&c, t0 + secs(10.0), 1, 1), 1);
        a.observe(&c, t0 + secs(30.0), 8.0, false);
        assert_eq!(a.decide(&c, t0 + secs(30.0), 1, 1), 4);
        // Quiet: the downscale waits 600 s.
        let mut t = t0 + secs(40.0);
        for _ in 0..4 {
            a.observe(&c, t, 0.0, false);
            t += secs(10.0);
        }
        assert_eq!(a.decide(&c, t, 4, 4), 4);
        assert_eq!(a.decide(&c, t + secs(599.0), 4, 4), 4);
        assert_eq!(a.decide(&c, t + secs(600.0), 4, 4), 1);
    }

    #[test]
    fn scaling_up_from_zero_is_immediate() {
        let c = AutoscalingConfig {
            min_replicas: 0,
            ..config()
        };
        let mut a = Autoscaler::new();
        let t0 = Instant::now();
        a.observe(&c, t0, 0.0, false);
        assert_eq!(a.decide(&c, t0, 0, 0), 0);
        // A request arrives within the metrics interval: sampled at once.
        a.observe(&c, t0 + secs(1.0), 1.0, true);
        assert_eq!(a.decide(&c, t0 + secs(1.0), 0, 0), 1);
    }
}
