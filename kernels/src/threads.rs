//! The worker threads the kernels run on.
//!
//! A forward pass is a long chain of short parallel regions (four matrix
//! products and an attention per layer, ~150 per decoded token), so the cost
//! of starting a region matters as much as the work in it. This is a small
//! fork-join pool built for that: the calling thread takes part in every
//! region, workers claim tasks from an atomic counter, and idle workers spin
//! for a short while before parking, so back-to-back regions never pay a
//! futex wake-up. A replica's pool size is its `num_cpus` share.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long an idle worker spins before parking.
const SPIN: Duration = Duration::from_micros(200);

/// A region's work: `f(i)` for every task `i < tasks`.
struct Region {
    f: *const (dyn Fn(usize) + Sync),
    tasks: usize,
    next: AtomicUsize,
    done: AtomicUsize,
}

// SAFETY: `f` points to a `Sync` closure that outlives the region (see
// `Pool::run`, which does not return before every task has finished).
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    /// Claims and runs tasks until none are left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.tasks {
                return;
            }
            // SAFETY: the closure is alive until `done == tasks` (run waits).
            unsafe { (*self.f)(i) };
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

struct Shared {
    /// The current region, replaced by each `run`.
    region: Mutex<Option<Arc<Region>>>,
    /// Bumped when a new region is published.
    generation: AtomicUsize,
    wake: Condvar,
    parked: Mutex<()>,
    shutdown: AtomicBool,
}

pub struct Pool {
    shared: Arc<Shared>,
    threads: usize,
    /// Serializes callers (one region at a time).
    caller: Mutex<()>,
}

impl Pool {
    /// A pool of `threads` threads in total: the caller plus `threads - 1`
    /// workers.
    pub fn new(threads: usize) -> Pool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            region: Mutex::new(None),
            generation: AtomicUsize::new(0),
            wake: Condvar::new(),
            parked: Mutex::new(()),
            shutdown: AtomicBool::new(false),
        });
        for i in 1..threads {
            let s = shared.clone();
            let spawned = thread::Builder::new()
                .name(format!("llm-serve-worker-{i}"))
                .spawn(move || worker(s));
            if spawned.is_err() {
                tracing::warn!("could not start kernel worker thread {i}; continuing with fewer");
            }
        }
        Pool {
            shared,
            threads,
            caller: Mutex::new(()),
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(i)` for `i` in `0..tasks` on the pool and returns when all
    /// are done. Panics in `f` are not caught: kernels do not panic on
    /// checked inputs.
    pub fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if tasks == 0 {
            return;
        }
        if tasks == 1 || self.threads == 1 {
            (0..tasks).for_each(f);
            return;
        }
        let _one_at_a_time = self.caller.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: erase the closure's lifetime; the region is dropped from
        // the shared slot and all tasks finish before this function returns.
        let f: *const (dyn Fn(usize) + Sync) = unsafe {
            std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f)
        };
        let region = Arc::new(Region {
            f,
            tasks,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
        });
        *self.shared.region.lock().unwrap_or_else(|p| p.into_inner()) = Some(region.clone());
        self.shared.generation.fetch_add(1, Ordering::Release);
        {
            let _g = self.shared.parked.lock().unwrap_or_else(|p| p.into_inner());
            self.shared.wake.notify_all();
        }
        region.work();
        while region.done.load(Ordering::Acquire) < tasks {
            std::hint::spin_loop();
        }
        *self.shared.region.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        let _g = self.shared.parked.lock().unwrap_or_else(|p| p.into_inner());
        self.shared.wake.notify_all();
    }
}

fn worker(s: Arc<Shared>) {
    let mut seen = s.generation.load(Ordering::Acquire);
    loop {
        // Spin for a new region, then park.
        let start = Instant::now();
        loop {
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            if s.generation.load(Ordering::Acquire) != seen {
                break;
            }
            if start.elapsed() > SPIN {
                let g = s.parked.lock().unwrap_or_else(|p| p.into_inner());
                if s.generation.load(Ordering::Acquire) == seen
                    && !s.shutdown.load(Ordering::Acquire)
                {
                    let _g = s
                        .wake
                        .wait_timeout(g, Duration::from_millis(100))
                        .unwrap_or_else(|p| p.into_inner());
                }
                break;
            }
            std::hint::spin_loop();
        }
        let now = s.generation.load(Ordering::Acquire);
        if now == seen {
            continue;
        }
        seen = now;
        let region = s.region.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(r) = region {
            r.work();
        }
    }
}

static GLOBAL: OnceLock<Pool> = OnceLock::new();

fn default_threads() -> usize {
    std::env::var("LLM_SERVE_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

/// Sizes the kernels' pool to `n` threads (0 = one per core, or
/// `LLM_SERVE_THREADS`). Only the first call has an effect; returns the
/// thread count in use.
pub fn init(n: usize) -> usize {
    let n = if n == 0 { default_threads() } else { n };
    let pool = GLOBAL.get_or_init(|| Pool::new(n));
    // Libraries that use rayon (the GEMM crate) share the same budget.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(pool.threads())
        .build_global();
    pool.threads()
}

/// The kernels' pool (sized on first use if `init` was not called).
pub fn pool() -> &'static Pool {
    GLOBAL.get_or_init(|| Pool::new(default_threads()))
}

/// Threads the kernels run on.
pub fn count() -> usize {
    pool().threads()
}

/// Runs `f(i)` for `i` in `0..tasks` across the pool.
pub fn parallel_for(tasks: usize, f: impl Fn(usize) + Sync) {
    pool().run(tasks, &f);
}

/// Runs `f(chunk_index, chunk)` over `data` split into chunks of `chunk`
/// elements (the last may be shorter), chunks in parallel.
pub fn parallel_chunks_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let chunk = chunk.max(1);
    let len = data.len();
    let base = SendPtr(data.as_mut_ptr());
    parallel_for(len.div_ceil(chunk), |c| {
        let start = c * chunk;
        let n = chunk.min(len - start);
        // SAFETY: chunks are disjoint and inside `data`, which stays
        // mutably borrowed until every task has finished.
        let part = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), n) };
        f(c, part)
    });
}

struct SendPtr<T>(*mut T);
// SAFETY: used only to hand disjoint parts of one slice to pool tasks.
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Send> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}
