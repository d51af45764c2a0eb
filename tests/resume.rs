//! Run management end to end with the `omuda` binary at tiny size: a run
//! killed with SIGKILL (between iterations, or in the middle of writing a
//! checkpoint) and resumed ends bit-identical to an uninterrupted one; a
//! non-finite loss or gradient stops the run with a clear message and keeps
//! the last good checkpoint, or is skipped and counted.
//!
//! The kills and non-finite values come from the binary's fault injection,
//! built only with the `test-faults` feature (README's test command sets it).
#![cfg(feature = "test-faults")]

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// 2N iterations with N = 4; checkpoints every 2, evaluation every 4.
const ITERS: usize = 8;

fn omuda() -> Command {
    Command::new(env!("CARGO_BIN_EXE_omuda"))
}

fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("tiny.toml");
    std::fs::write(
        &path,
        format!(
            "{extra}\n[train]\niters = {ITERS}\nlog_interval = 1\neval_interval = 4\ncheckpoint_interval = 2\nkeep_last = 2\ndebug_interval = 4\n\
             [data.synth]\nheight = 32\nwidth = 64\nval_size = 4\ndev_size = 4\ntest_size = 4\n[schedule]\nwarmup_iters = 1\n"
        ),
    )
    .unwrap();
    path
}

fn train(cfg: &Path, out: &Path) -> std::process::Output {
    let res = omuda()
        .args([
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--method",
            "dacs",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    res
}

/// Start a training with `env` set, wait for the stderr line `marker`, then
/// SIGKILL it. Returns the stderr seen.
fn train_and_kill_at(cfg: &Path, out: &Path, env: (&str, String), marker: &str) -> String {
    let mut child = omuda()
        .args([
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--method",
            "dacs",
            "--out",
            out.to_str().unwrap(),
        ])
        .env(env.0, &env.1)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    let mut found = false;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(marker) {
            found = true;
            break;
        }
    }
    assert!(found, "the run never printed {marker:?}:\n{seen}");
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status:?}");
    seen
}

fn resume(out: &Path) -> String {
    let res = omuda()
        .args(["train", "--resume", out.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr).into_owned();
    assert!(res.status.success(), "{stderr}");
    stderr
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

/// (iter, lr, losses) of every step line of a `log.jsonl`, and the eval lines.
fn logged(
    out: &Path,
) -> (
    Vec<(u64, serde_json::Value, serde_json::Value)>,
    Vec<serde_json::Value>,
) {
    let text = std::fs::read_to_string(out.join("dacs/log.jsonl")).unwrap();
    let mut steps = Vec::new();
    let mut evals = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        match v["type"].as_str().unwrap() {
            "step" => steps.push((
                v["iter"].as_u64().unwrap(),
                v["lr"].clone(),
                v["losses"].clone(),
            )),
            "eval" => evals.push(v),
            other => panic!("unexpected log line type {other}"),
        }
    }
    (steps, evals)
}

/// The resumed run `b` ends exactly where the uninterrupted run `a` ended.
fn assert_same_run(a: &Path, b: &Path) {
    for f in [
        "student.safetensors",
        "teacher.safetensors",
        "optimizer.safetensors",
    ] {
        let (x, y) = (
            std::fs::read(a.join("dacs/checkpoint").join(f)).unwrap(),
            std::fs::read(b.join("dacs/checkpoint").join(f)).unwrap(),
        );
        assert!(x == y, "{f} differs after resume");
    }
    let (sa, ea) = logged(a);
    let (sb, eb) = logged(b);
    assert_eq!(sa.len(), ITERS, "one log line per iteration");
    assert_eq!(sa, sb, "logged losses and lr differ after resume");
    assert_eq!(ea, eb);
    let (ma, mb) = (
        json(&a.join("dacs/metrics.json")),
        json(&b.join("dacs/metrics.json")),
    );
    assert_eq!(ma["target_test"], mb["target_test"]);
    assert_eq!(ma["target_curve"], mb["target_curve"]);
    assert_eq!(ma["best"], mb["best"]);
    // The TensorBoard curves hold each step once after the resume.
    let steps = |d: &Path| -> Vec<i64> {
        let mut v: Vec<i64> = omuda::tensorboard::event_files(&d.join("dacs/tb"))
            .unwrap()
            .iter()
            .flat_map(|f| omuda::tensorboard::read_events(f).unwrap())
            .filter(|e| e.scalars.iter().any(|(t, _)| t == "loss/loss_src"))
            .map(|e| e.step)
            .collect();
        v.sort();
        v
    };
    assert_eq!(steps(b), (1..=ITERS as i64).collect::<Vec<_>>());
}

/// A kill iteration drawn uniformly in (N/2, 3N/2), printed for reproduction.
fn random_kill_iteration() -> usize {
    use rand::Rng;
    let (lo, hi) = (ITERS / 4 + 1, 3 * ITERS / 4); // N = ITERS / 2, open interval
    let k = std::env::var("OMUDA_TEST_KILL_ITER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen_range(lo..hi));
    assert!(k > ITERS / 4 && k < 3 * ITERS / 4);
    eprintln!("killing after iteration {k} (set OMUDA_TEST_KILL_ITER to repeat)");
    k
}

fn exact_resume(extra_config: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), extra_config);
    let a = dir.path().join("a");
    train(&cfg, &a);

    // Killed between iterations at a random point, then resumed.
    let b = dir.path().join("b");
    let k = random_kill_iteration();
    train_and_kill_at(
        &cfg,
        &b,
        ("OMUDA_TEST_PAUSE_AT_ITER", k.to_string()),
        &format!("paused after iteration {k}"),
    );
    assert!(!b.join("dacs/metrics.json").exists());
    // The pause comes before the evaluation and checkpoint of iteration k.
    let last = ((k - 1) / 2) * 2;
    assert!(b
        .join(format!("dacs/checkpoints/iter_{last:08}/run.json"))
        .is_file());
    let stderr = resume(&b);
    assert!(
        stderr.contains("resuming from") && stderr.contains(&format!("(iteration {last}/{ITERS})")),
        "{stderr}"
    );
    assert_same_run(&a, &b);
    // Retention: the newest two periodic checkpoints.
    let kept: Vec<String> = std::fs::read_dir(b.join("dacs/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(b.join("dacs/best/run.json").is_file());

    // Killed while writing the checkpoint of iteration 6: the one of
    // iteration 4 stays loadable and the resume starts from it.
    let c = dir.path().join("c");
    train_and_kill_at(
        &cfg,
        &c,
        ("OMUDA_TEST_STOP_MID_CHECKPOINT", "6".into()),
        "stopped mid-checkpoint at iteration 6",
    );
    let ckpts = c.join("dacs/checkpoints");
    assert!(
        !ckpts.join("iter_00000006").exists(),
        "no partial checkpoint under the final name"
    );
    let temps: Vec<PathBuf> = std::fs::read_dir(&ckpts)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".iter_00000006.tmp")
        })
        .collect();
    assert_eq!(
        temps.len(),
        1,
        "the interrupted write is a temporary folder"
    );
    assert!(temps[0].join("student.safetensors").is_file() && !temps[0].join("run.json").exists());
    let res = omuda()
        .args([
            "eval",
            "--checkpoint",
            ckpts.join("iter_00000004").to_str().unwrap(),
            "--out",
            dir.path().join("e.json").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "previous checkpoint loadable: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    let stderr = resume(&c);
    assert!(stderr.contains("(iteration 4/8)"), "{stderr}");
    assert!(!temps[0].exists(), "the temporary is removed on resume");
    assert_same_run(&a, &c);
}

#[test]
fn dacs_killed_and_resumed_matches_uninterrupted_run() {
    exact_resume("");
}

#[test]
fn dacs_with_all_plugins_killed_and_resumed_matches_uninterrupted_run() {
    exact_resume("plugins = [\"cam\", \"fdm\", \"cdm\"]");
}

/// A comparison grid killed in the middle of a run and started again with
/// the same command: the finished run is reused, the interrupted one resumes
/// from its checkpoint and ends bit-identical to an uninterrupted grid.
#[test]
fn compare_killed_and_restarted_resumes_the_interrupted_run_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "methods = [\"dacs\"]");
    let compare = |out: &Path| {
        let mut c = omuda();
        c.args(["compare", "--preset", cfg.to_str().unwrap()])
            .args(["--plugins", "none,cdm", "--seeds", "0", "--out"])
            .arg(out);
        c
    };
    let reference = dir.path().join("reference");
    let res = compare(&reference).output().unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    // The first run of the grid finishes; the second (cdm) is killed after
    // iteration 5 (the finished run is reused, so it never reaches the hook).
    let out = dir.path().join("killed");
    let res = compare(&out).args(["--only", "0"]).output().unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let mut child = compare(&out)
        .env("OMUDA_TEST_PAUSE_AT_ITER", "5")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("test hook: paused after iteration 5") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        seen.contains("[cdm]") && !seen.contains("[none] seed 0: training"),
        "{seen}"
    );
    let res = compare(&out).output().unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{stderr}");
    assert!(stderr.contains("resuming from"), "{stderr}");
    for set in ["none", "cdm"] {
        let a = json(&reference.join("dacs").join(set).join("seed_0/run.json"));
        let b = json(&out.join("dacs").join(set).join("seed_0/run.json"));
        assert_eq!(a["target_test"], b["target_test"], "{set}");
        assert_eq!(a["target_curve"], b["target_curve"], "{set}");
        let weights = |o: &Path| {
            std::fs::read(
                o.join("dacs")
                    .join(set)
                    .join("seed_0/checkpoint/student.safetensors"),
            )
            .unwrap()
        };
        assert!(
            weights(&reference) == weights(&out),
            "{set}: final weights differ"
        );
    }
}

#[test]
fn non_finite_loss_or_gradient_stops_and_keeps_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    for (var, what) in [
        (
            "OMUDA_TEST_FORCE_NAN_AT",
            "iteration 5: loss `test_nan.loss` is NaN",
        ),
        (
            "OMUDA_TEST_FORCE_NAN_GRAD_AT",
            "iteration 5: the gradient of `",
        ),
    ] {
        let out = dir.path().join(var);
        let res = omuda()
            .args([
                "train",
                "--config",
                cfg.to_str().unwrap(),
                "--method",
                "dacs",
                "--out",
                out.to_str().unwrap(),
            ])
            .env(var, "5")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert!(!res.status.success());
        assert!(stderr.contains(what), "{stderr}");
        assert!(
            stderr.contains("training stopped") && stderr.contains("iter_00000004 (iteration 4)"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!out.join("dacs/metrics.json").exists());
        // The kept checkpoint resumes (without the hook the run finishes).
        assert!(out
            .join("dacs/checkpoints/iter_00000004/student.safetensors")
            .is_file());
        let log = std::fs::read_to_string(out.join("dacs/log.jsonl")).unwrap();
        assert!(
            log.lines().last().unwrap().contains("\"type\":\"error\""),
            "{log}"
        );
        let stderr = resume(&out);
        assert!(stderr.contains("(iteration 4/8)"), "{stderr}");
        assert!(out.join("dacs/metrics.json").is_file());
    }

    // Skip policy: the update is skipped, counted and logged; the run finishes.
    let cfg = write_config(dir.path(), "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[train]\n", "[train]\nnonfinite = \"skip\"\n");
    std::fs::write(&cfg, text).unwrap();
    let out = dir.path().join("skip");
    let res = omuda()
        .args([
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--method",
            "dacs",
            "--out",
            out.to_str().unwrap(),
        ])
        .env("OMUDA_TEST_FORCE_NAN_GRAD_AT", "3")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{stderr}");
    assert!(
        stderr.contains("skipped the update of iteration 3"),
        "{stderr}"
    );
    assert_eq!(json(&out.join("dacs/metrics.json"))["nonfinite_skipped"], 1);
    let log = std::fs::read_to_string(out.join("dacs/log.jsonl")).unwrap();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("\"type\":\"skipped\""))
            .count(),
        1
    );
}
