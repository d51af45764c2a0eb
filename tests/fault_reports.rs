//! What a run reports when things go wrong or vary between runs, provoked
//! through the fault hooks of `src/cli/faults.rs` (built only with the
//! `test-faults` feature, which README's test command sets): an error from
//! inside Candle prints its message without a backtrace, and the peak memory
//! of a run is that run's, not the peak of an earlier run in the process.
#![cfg(feature = "test-faults")]

use std::path::Path;
use std::process::{Command, Output};

fn tiny_train(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let cfg = dir.join("tiny.toml");
    std::fs::write(
        &cfg,
        "methods = [\"dacs\"]\n[train]\niters = 2\nlog_interval = 1\n[data.synth]\nheight = 32\nwidth = 64\nval_size = 2\ndev_size = 2\ntest_size = 2\n",
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_omuda"));
    cmd.args(["train", "--config", cfg.to_str().unwrap(), "--out"])
        .arg(dir.join("out"))
        .args(extra)
        .env("TERM", "dumb")
        .env_remove("RUST_LIB_BACKTRACE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn a_candle_error_prints_its_message_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let res = tiny_train(
        dir.path(),
        &[],
        &[("RUST_BACKTRACE", "1"), ("OMUDA_TEST_CANDLE_ERROR_AT", "1")],
    );
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: shape mismatch in matmul"),
        "last line: {last:?}\n{err}"
    );
    // The error line is the last line: no frames after it.
    for frame_marker in ["stack backtrace", "  0: ", "at ./", "rust_begin_unwind"] {
        assert!(!err.contains(frame_marker), "{frame_marker:?} in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

fn peaks(log: &Path) -> Vec<f64> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "step")
        .map(|v| v["peak_mem_mib"].as_f64().unwrap())
        .collect()
}

#[test]
#[cfg(target_os = "linux")]
fn peak_memory_is_reported_per_run_of_a_multi_seed_process() {
    let dir = tempfile::tempdir().unwrap();
    // Seed 0 touches 400 MiB at its first step; seed 1 (same process) does not.
    let res = tiny_train(
        dir.path(),
        &["--seeds", "0,1"],
        &[("OMUDA_TEST_BALLOON", "0:400")],
    );
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let out = dir.path().join("out");
    let first = peaks(&out.join("seed_0/dacs/log.jsonl"));
    let second = peaks(&out.join("seed_1/dacs/log.jsonl"));
    assert_eq!((first.len(), second.len()), (2, 2));
    assert!(first.iter().all(|&m| m > 400.0), "seed 0 peaks {first:?}");
    // The tiny run itself stays far below the balloon.
    assert!(
        second.iter().all(|&m| m < 300.0),
        "seed 1 peaks {second:?} carry seed 0's balloon (seed 0: {first:?})"
    );
}
