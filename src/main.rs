//! The `omuda` command-line tool.

mod cli;

use std::process::ExitCode;

/// glibc malloc settings that keep freed large blocks in the heap for reuse
/// (the same as `.cargo/config.toml` sets for `cargo run`/`cargo test`). Without
/// them every tensor above the mmap threshold is a fresh `mmap` whose pages are
/// faulted in and zeroed on first touch, every step.
///
/// `arena_max=1` puts every thread on the main (`brk`) heap. The commands run
/// on a compute-pool worker, not the main thread, and a non-main arena's heaps
/// hold at most 64 MiB: every larger tensor (the DAFormer head's 1024-channel
/// maps at 512²) was a fresh `mmap` despite the threshold, a `munmap` with a
/// TLB shootdown when freed, and a page fault per 4 KiB in between.
pub const MALLOC_TUNABLES: &str =
    "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296:glibc.malloc.top_pad=268435456:glibc.malloc.arena_max=1";

/// glibc reads `GLIBC_TUNABLES` only at start-up: when it is unset, replace
/// this process by itself with it set. Setting `GLIBC_TUNABLES` (even to an
/// empty string) keeps the allocator's defaults.
#[cfg(target_os = "linux")]
fn exec_with_malloc_tunables() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        eprintln!("note: cannot find the omuda binary to restart it with GLIBC_TUNABLES; running with malloc defaults");
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", MALLOC_TUNABLES)
        .exec();
    // `exec` only returns on failure.
    eprintln!("note: cannot restart with GLIBC_TUNABLES ({err}); running with malloc defaults");
}

/// A closed pipe (`omuda compare --list | head`) ends the process quietly, as
/// it ends any Unix tool, instead of a panic at the next print: the Rust
/// runtime ignores SIGPIPE, and this restores the default action.
#[cfg(unix)]
fn restore_default_sigpipe() {
    extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    const SIGPIPE: i32 = 13;
    const SIG_DFL: usize = 0;
    // SAFETY: signal(2) with the default action, before any thread starts.
    unsafe {
        signal(SIGPIPE, SIG_DFL);
    }
}

fn main() -> ExitCode {
    #[cfg(unix)]
    restore_default_sigpipe();
    #[cfg(target_os = "linux")]
    exec_with_malloc_tunables();
    // Candle's element-wise pool spins between ops by default; on few cores the
    // spinning worker competes with the matmul threads. Set before any Candle op.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
    }
    // Errors print their message and causes, never a backtrace: Candle
    // captures one in its errors whenever RUST_BACKTRACE is set, which is
    // governed by RUST_LIB_BACKTRACE first. Panics still honour RUST_BACKTRACE.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    // Every command runs on a compute-pool worker (see `omuda_core::threads`).
    match omuda_core::threads::in_compute_pool(cli::run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
