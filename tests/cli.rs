//! The `omuda` binary end to end at tiny size: train, files written, eval of
//! the checkpoint, and clear errors for bad input.

use std::path::Path;
use std::process::Command;

fn omuda() -> Command {
    Command::new(env!("CARGO_BIN_EXE_omuda"))
}

fn write_tiny_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("tiny.toml");
    std::fs::write(
        &path,
        "[train]\niters = 3\nlog_interval = 1\n[data.synth]\nheight = 32\nwidth = 64\nval_size = 4\ndev_size = 4\ntest_size = 4\n[schedule]\nwarmup_iters = 1\n",
    )
    .unwrap();
    path
}

#[test]
fn train_then_eval_writes_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_tiny_config(dir.path());
    let out = dir.path().join("run");
    let res = omuda()
        .args([
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--method",
            "source_only,dacs",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&res.stdout);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("summary"), "{stdout}");
    assert!(
        stderr.contains("iter 3/3"),
        "plain progress lines when not on a terminal: {stderr}"
    );
    for m in ["source_only", "dacs"] {
        let metrics: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(m).join("metrics.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(metrics["method"], m);
        assert_eq!(
            metrics["target_test"]["per_class_iou"]
                .as_array()
                .unwrap()
                .len(),
            19
        );
        assert!(metrics["target_test"]["miou"].as_f64().is_some());
        assert!(out
            .join(m)
            .join("checkpoint")
            .join("student.safetensors")
            .is_file());
    }
    assert!(out.join("dacs/checkpoint/teacher.safetensors").is_file());

    let res = omuda()
        .args([
            "eval",
            "--checkpoint",
            out.join("dacs/checkpoint").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        res.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(stdout.contains("dacs (iteration 3)"), "{stdout}");
    // The evaluation of the restored checkpoint equals the one written after training.
    let trained: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("dacs/metrics.json")).unwrap())
            .unwrap();
    let evaluated: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("dacs/checkpoint/eval.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(trained["target_test"], evaluated["target_test"]);

    // --save-predictions: one colourised PNG per target-test image, in the
    // Cityscapes colours, and the same scores.
    let shown = dir.path().join("shown");
    let res = omuda()
        .args(["eval", "--checkpoint"])
        .arg(out.join("dacs/checkpoint"))
        .arg("--save-predictions")
        .arg(&shown)
        .arg("--out")
        .arg(dir.path().join("eval2.json"))
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let n = evaluated["target_test"]["num_images"].as_u64().unwrap() as usize;
    let mut files: Vec<_> = std::fs::read_dir(&shown)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files.len(), n, "{files:?}");
    assert_eq!(files[0], "test_0000.png");
    let palette = omuda::core::data::classes::CITYSCAPES_PALETTE;
    let img = image::open(shown.join(&files[0])).unwrap().to_rgb8();
    assert!(img.pixels().all(|p| palette.contains(&p.0)));
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("eval2.json")).unwrap())
            .unwrap();
    assert_eq!(again["target_test"], evaluated["target_test"]);
}

#[test]
fn unknown_config_key_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[train]\niterations = 3\n").unwrap();
    let res = omuda()
        .args(["train", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!res.status.success());
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        stderr.contains("iterations") && stderr.contains("bad.toml"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn unknown_method_and_missing_checkpoint_are_clear_errors() {
    let res = omuda()
        .args(["train", "--method", "dacz", "--iters", "1"])
        .output()
        .unwrap();
    assert!(!res.status.success());
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        stderr.contains("dacz") && stderr.contains("source_only"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let res = omuda()
        .args(["eval", "--checkpoint", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!res.status.success());
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(stderr.contains("state.json"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn config_prints_the_resolved_defaults() {
    let res = omuda().args(["config"]).output().unwrap();
    assert!(res.status.success());
    let text = String::from_utf8_lossy(&res.stdout);
    let parsed = omuda::RunConfig::from_toml_str(&text, "printed").unwrap();
    assert_eq!(parsed, omuda::RunConfig::default());
}

#[test]
fn resume_refuses_other_flags_and_non_run_folders() {
    let dir = tempfile::tempdir().unwrap();
    let res = omuda()
        .args([
            "train",
            "--resume",
            dir.path().to_str().unwrap(),
            "--iters",
            "3",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        !res.status.success() && stderr.contains("--iters"),
        "{stderr}"
    );
    let res = omuda()
        .args(["train", "--resume", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        !res.status.success() && stderr.contains("no config.toml"),
        "{stderr}"
    );
}

/// A tiny training run's command line with extra flags.
fn tiny_train(dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let cfg = dir.join("tiny.toml");
    std::fs::write(
        &cfg,
        "methods = [\"dacs\"]\n[train]\niters = 2\nlog_interval = 1\n[data.synth]\nheight = 32\nwidth = 64\nval_size = 2\ndev_size = 2\ntest_size = 2\n",
    )
    .unwrap();
    omuda()
        .args(["train", "--config", cfg.to_str().unwrap(), "--out"])
        .arg(dir.join("out"))
        .args(extra)
        .env("TERM", "dumb")
        .output()
        .unwrap()
}

#[test]
fn quiet_prints_only_results_and_json_logs_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let res = tiny_train(dir.path(), &["--quiet"]);
    let (out, err) = (
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr),
    );
    assert!(res.status.success(), "{err}");
    assert!(err.trim().is_empty(), "--quiet printed: {err}");
    assert!(out.contains("mIoU") && out.contains("summary"), "{out}");

    let res = tiny_train(dir.path(), &["--log-format", "json"]);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{err}");
    let objects: Vec<serde_json::Value> = err
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps = objects.iter().filter(|o| o["type"] == "step").count();
    assert_eq!(steps, 2, "{err}");
    assert!(objects.iter().all(|o| o["run"] == "dacs"), "{err}");

    let res = tiny_train(dir.path(), &["--log-format", "plain"]);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{err}");
    assert_eq!(err.matches("dacs iter ").count(), 2, "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "escape codes with TERM=dumb: {err}"
    );
}

/// `omuda bench` times any network of the zoo (from its seeded
/// initialisation: the built-in pretrained weights fit only the benchmark's
/// network), and `--memory` reports one row per phase.
#[test]
fn bench_runs_another_network_and_measures_memory() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let res = omuda()
        .args([
            "bench",
            "--model",
            "segformer_mitb0",
            "--crop",
            "32",
            "--batch",
            "1",
        ])
        .args(["--iters", "1", "--warmup", "0", "--no-uda", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(json.is_file());
    let mem = dir.path().join("memory.json");
    let res = omuda()
        .args([
            "bench",
            "--memory",
            "--model",
            "segformer_tiny",
            "--crop",
            "128x256",
        ])
        .args(["--batch", "2", "--json"])
        .arg(&mem)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&mem).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    for r in rows {
        assert!(r["peak_mib"].as_f64().unwrap() >= r["before_mib"].as_f64().unwrap());
    }
    // The graph-recording forward holds more than the graph-free one.
    assert!(report["ratio_graph_to_graph_free"].as_f64().unwrap() > 1.0);
}

/// Output into a pipe that closes early (`| head -1`) ends omuda quietly,
/// without a panic.
#[test]
fn a_closed_pipe_ends_quietly() {
    let bin = env!("CARGO_BIN_EXE_omuda");
    let res = Command::new("sh")
        .arg("-c")
        // 5000 lines, far more than a pipe buffers.
        .arg(format!(
            "'{bin}' compare --preset synth-dacs --plugins none,cam,fdm,cdm,cam+fdm+cdm \
             --seeds $(seq -s, 0 999) --out '{}' --list | head -1",
            std::env::temp_dir().join("omuda-closed-pipe").display()
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&res.stdout).lines().count(), 1);
}
