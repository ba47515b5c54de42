//! Ray Serve's multiplex rule for requests that name a LoRA adapter
//! (`apply_multiplex_routing`): prefer the replicas that hold the adapter
//! (loaded or loading) while one of them has room; an adapter no replica
//! holds goes to the replicas holding the fewest adapters (so one replica
//! loads it, and concurrent requests for it follow); once a request has
//! waited out its matching window (1 to 2 s, drawn per request against a
//! thundering herd), any replica with room will do, fewest adapters first.
//! A pure function of what the router knows: no replicas, no clock.

use std::time::Duration;

/// Ray's `RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S`.
pub const MATCHING_TIMEOUT: Duration = Duration::from_secs(1);

/// A request's matching window: uniform in `[T, 2T)`.
pub fn matching_window() -> Duration {
    MATCHING_TIMEOUT.mul_f64(rand::random_range(1.0..2.0))
}

/// What the rule needs to know of one ready replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// It holds the adapter (loaded or loading).
    pub holds: bool,
    /// Adapters it holds.
    pub adapters: usize,
    /// It is below `max_ongoing_requests`.
    pub has_room: bool,
}

/// The replicas (indices into `replicas`) the request may go to now, to
/// be picked from by power of two choices; empty: wait for room.
pub fn candidates(replicas: &[Candidate], waited: Duration, window: Duration) -> Vec<usize> {
    let holders: Vec<usize> = (0..replicas.len()).filter(|&i| replicas[i].holds).collect();
    if !holders.is_empty() && waited < window {
        return holders
            .into_iter()
            .filter(|&i| replicas[i].has_room)
            .collect();
    }
    let room: Vec<usize> = (0..replicas.len())
        .filter(|&i| replicas[i].has_room)
        .collect();
    let fewest = room.iter().map(|&i| replicas[i].adapters).min();
    room.into_iter()
        .filter(|&i| Some(replicas[i].adapters) == fewest)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(holds: bool, adapters: usize, has_room: bool) -> Candidate {
        Candidate {
            holds,
            adapters,
            has_room,
        }
    }

    const W: Duration = Duration::from_millis(1500);

    #[test]
    fn holders_first_while_they_have_room() {
        let r = [c(false, 0, true), c(true, 3, true), c(true, 1, true)];
        assert_eq!(candidates(&r, Duration::ZERO, W), [1, 2]);
        // A saturated holder: the other holder.
        let r = [c(false, 0, true), c(true, 3, false), c(true, 1, true)];
        assert_eq!(candidates(&r, Duration::ZERO, W), [2]);
    }

    #[test]
    fn a_saturated_holder_is_waited_for_until_the_window_ends() {
        let r = [c(true, 1, false), c(false, 2, true), c(false, 0, true)];
        assert!(candidates(&r, Duration::from_millis(900), W).is_empty());
        // After the window: the replica with room and the fewest adapters.
        assert_eq!(candidates(&r, W, W), [2]);
    }

    #[test]
    fn an_adapter_nobody_holds_goes_to_the_fewest_adapters() {
        let r = [
            c(false, 2, true),
            c(false, 0, true),
            c(false, 0, true),
            c(false, 0, false),
        ];
        assert_eq!(candidates(&r, Duration::ZERO, W), [1, 2]);
        // Nobody has room: wait.
        let r = [c(false, 2, false), c(false, 0, false)];
        assert!(candidates(&r, Duration::ZERO, W).is_empty());
    }

    #[test]
    fn windows_fall_in_one_to_two_timeouts() {
        for _ in 0..100 {
            let w = matching_window();
            assert!(w >= MATCHING_TIMEOUT && w < 2 * MATCHING_TIMEOUT, "{w:?}");
        }
    }
}
