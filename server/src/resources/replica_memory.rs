//! How much of the node's memory an engine replica reserves, and how much
//! of that its KV cache gets: the weights, the KV cache and a reserve for
//! activations and the runtime must fit in the share, so replicas placed
//! together never promise more memory than the node has.
//!
//! With `ray_actor_options.memory` the share is given and the KV cache
//! takes what the weights and the reserve leave (vLLM's
//! `gpu_memory_utilization` arithmetic); without it the share is derived
//! from the KV budget the engine would have taken (`kv_cache_memory_bytes`,
//! or `kv_cache_memory_fraction` of the node's memory).

/// Memory kept for activations, scratch buffers, the tokenizer and the
/// process itself, beyond weights and KV cache.
pub const RUNTIME_RESERVE_BYTES: u64 = 256 << 20;

/// What a replica is placed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaMemory {
    /// Reserved against the node's `memory` resource.
    pub share_bytes: u64,
    /// Handed to the engine as its `kv_cache_memory_bytes`.
    pub kv_cache_bytes: u64,
}

/// What the replica's deployment asks for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryAsk {
    /// `ray_actor_options.memory` in bytes (0: not set).
    pub actor_memory_bytes: f64,
    /// The weight files' size, when known (a hub model not yet in the
    /// cache counts as 0 until it has been downloaded).
    pub weights_bytes: u64,
    /// `engine_kwargs.kv_cache_memory_bytes`.
    pub kv_cache_memory_bytes: Option<u64>,
    /// `engine_kwargs.kv_cache_memory_fraction`.
    pub kv_cache_memory_fraction: f64,
    /// The node's `memory` resource.
    pub node_memory_bytes: f64,
}

/// The replica's share and KV budget, or why the share cannot hold it.
pub fn replica_memory(ask: &MemoryAsk) -> Result<ReplicaMemory, String> {
    let fixed = ask.weights_bytes.saturating_add(RUNTIME_RESERVE_BYTES);
    if ask.actor_memory_bytes > 0.0 {
        let share = ask.actor_memory_bytes as u64;
        let room = share.saturating_sub(fixed);
        let kv = match ask.kv_cache_memory_bytes {
            Some(kv) if kv > room => {
                return Err(format!(
                    "engine_kwargs.kv_cache_memory_bytes ({kv}) does not fit in ray_actor_options.memory ({share}) after the weights ({} bytes) and the runtime reserve ({RUNTIME_RESERVE_BYTES} bytes); raise memory or lower kv_cache_memory_bytes",
                    ask.weights_bytes
                ))
            }
            Some(kv) => kv,
            None if room == 0 => {
                return Err(format!(
                    "ray_actor_options.memory ({share}) leaves no room for a KV cache after the weights ({} bytes) and the runtime reserve ({RUNTIME_RESERVE_BYTES} bytes)",
                    ask.weights_bytes
                ))
            }
            None => room,
        };
        return Ok(ReplicaMemory {
            share_bytes: share,
            kv_cache_bytes: kv,
        });
    }
    let kv = ask.kv_cache_memory_bytes.unwrap_or_else(|| {
        (ask.node_memory_bytes.max(0.0) * ask.kv_cache_memory_fraction.clamp(0.0, 1.0)) as u64
    });
    Ok(ReplicaMemory {
        share_bytes: fixed.saturating_add(kv),
        kv_cache_bytes: kv,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn ask() -> MemoryAsk {
        MemoryAsk {
            actor_memory_bytes: 0.0,
            weights_bytes: 100 << 20,
            kv_cache_memory_bytes: None,
            kv_cache_memory_fraction: 0.25,
            node_memory_bytes: (16 * GIB) as f64,
        }
    }

    #[test]
    fn without_a_memory_option_the_share_holds_weights_kv_and_reserve() {
        let m = replica_memory(&ask()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.kv_cache_bytes, 4 * GIB);
        assert_eq!(m.share_bytes, 4 * GIB + (100 << 20) + RUNTIME_RESERVE_BYTES);
        let explicit = MemoryAsk {
            kv_cache_memory_bytes: Some(GIB),
            ..ask()
        };
        let m = replica_memory(&explicit).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.kv_cache_bytes, GIB);
        assert_eq!(m.share_bytes, GIB + (100 << 20) + RUNTIME_RESERVE_BYTES);
    }

    #[test]
    fn a_memory_option_is_the_share_and_the_kv_cache_takes_the_rest() {
        let given = MemoryAsk {
            actor_memory_bytes: (2 * GIB) as f64,
            ..ask()
        };
        let m = replica_memory(&given).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.share_bytes, 2 * GIB);
        assert_eq!(
            m.kv_cache_bytes,
            2 * GIB - (100 << 20) - RUNTIME_RESERVE_BYTES
        );
        let too_small = MemoryAsk {
            actor_memory_bytes: (300 << 20) as f64,
            ..ask()
        };
        assert!(replica_memory(&too_small)
            .unwrap_err()
            .contains("leaves no room"));
        let kv_too_big = MemoryAsk {
            kv_cache_memory_bytes: Some(2 * GIB),
            ..given
        };
        assert!(replica_memory(&kv_too_big)
            .unwrap_err()
            .contains("does not fit"));
    }
}
