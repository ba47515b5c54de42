//! The worker thread pool the kernels run on.
//!
//! Kernels parallelise with rayon's global pool; this module sizes it once
//! (a replica's thread count is its `num_cpus` share).

use std::sync::OnceLock;

static CONFIGURED: OnceLock<usize> = OnceLock::new();

/// Sizes the global pool to `n` threads (0 = one per core). Only the first
/// call has an effect; returns the thread count actually in use.
pub fn init(n: usize) -> usize {
    *CONFIGURED.get_or_init(|| {
        let mut builder = rayon::ThreadPoolBuilder::new();
        if n > 0 {
            builder = builder.num_threads(n);
        }
        // Fails only if the global pool already exists; either way the
        // pool's actual size is what rayon reports.
        let _ = builder.build_global();
        rayon::current_num_threads()
    })
}

/// Threads the kernels run on.
pub fn count() -> usize {
    rayon::current_num_threads()
}
