//! The compute pool: where a command's tensor work runs on the CPU.
//!
//! The CPU kernels (gemm's matrix products and omuda's own fused ops) split
//! their work with rayon. Called from a thread outside rayon's pool, every
//! such op hands its work to the pool's threads and puts the calling thread to
//! sleep until they finish: two futex round trips per op, hundreds of ops per
//! forward pass, and one more thread competing for the cores than there are
//! cores. [`in_compute_pool`] runs the whole command on a worker of a pool
//! instead, so each op's first share runs on the calling thread itself and
//! only the other shares are handed over. Measured on `omuda bench --model
//! segformer_mitb0` (2 threads): about 25 % off the training step (docs/performance.md).
//!
//! The pool is separate from rayon's global pool: a data-loader thread that
//! uses rayon while the command's thread waits for its batch gets the global
//! pool's threads, so a 1-thread compute pool cannot deadlock on it.

/// Stack of each compute-pool thread: the autograd's recursive graph walk
/// over a deep network needs more than a spawned thread's default 2 MiB (the
/// main thread has 8 MiB). Only the pages used are committed.
const STACK_BYTES: usize = 64 << 20;

/// Runs `f` on a thread of a new rayon pool with Candle's thread count (the
/// threads gemm splits a product over: `RAYON_NUM_THREADS`, else the physical
/// cores), waiting for its result. If the pool cannot be started, `f` runs on
/// the calling thread (slower, same results).
pub fn in_compute_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let threads = candle_core::utils::get_num_threads().max(1);
    match rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("omuda-compute-{i}"))
        .stack_size(STACK_BYTES)
        .build()
    {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_on_a_pool_worker_with_the_thread_count() {
        let (index, threads) =
            in_compute_pool(|| (rayon::current_thread_index(), rayon::current_num_threads()));
        assert!(index.is_some(), "not on a pool worker");
        assert_eq!(threads, candle_core::utils::get_num_threads().max(1));
    }

    /// A thread outside the pool that uses rayon while the pool's only
    /// worker waits for it finishes: it gets the global pool.
    #[test]
    fn an_outside_thread_using_rayon_does_not_deadlock() {
        use rayon::prelude::*;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let sum = pool.install(|| {
            std::thread::spawn(|| (0..1000u64).into_par_iter().sum::<u64>())
                .join()
                .unwrap()
        });
        assert_eq!(sum, 499_500);
    }
}
