//! The `omuda` command-line tool.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Candle's element-wise pool spins between ops by default; on few cores the
    // spinning worker competes with the matmul threads. Set before any Candle op.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
    }
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
