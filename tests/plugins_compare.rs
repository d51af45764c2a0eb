//! `omuda compare` end to end at tiny size: every (plugin set, seed) trained,
//! the report files written, finished runs reused on a second call, and clear
//! errors for bad plugin sets.

use std::process::Command;

fn omuda() -> Command {
    Command::new(env!("CARGO_BIN_EXE_omuda"))
}

#[test]
fn compare_writes_reports_and_reuses_finished_runs() {
    let dir = tempfile::tempdir().unwrap();
    let preset = dir.path().join("tiny.toml");
    std::fs::write(
        &preset,
        "methods = [\"dacs\"]\n[train]\niters = 2\nlog_interval = 1\neval_interval = 1\n[data.synth]\nheight = 32\nwidth = 64\nval_size = 2\ndev_size = 2\ntest_size = 2\n[schedule]\nwarmup_iters = 1\n",
    )
    .unwrap();
    let out = dir.path().join("cmp");
    let args = [
        "compare",
        "--preset",
        preset.to_str().unwrap(),
        "--plugins",
        "none,cdm,cam+cdm",
        "--seeds",
        "0,1",
        "--out",
        out.to_str().unwrap(),
    ];
    let res = omuda().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{stderr}");
    let dacs = out.join("dacs");
    for f in [
        "compare.md",
        "compare.json",
        "compare_gains.png",
        "compare_curves.png",
    ] {
        assert!(dacs.join(f).is_file(), "{f} missing");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dacs.join("compare.json")).unwrap()).unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["plugins"], "none");
    assert!(rows[0]["gain"].is_null());
    for r in rows {
        assert_eq!(r["miou"].as_array().unwrap().len(), 2);
        assert_eq!(r["per_class_iou"].as_array().unwrap().len(), 19);
    }
    // The paired gain is the mean of the per-seed differences.
    let m = |r: &serde_json::Value, i: usize| r["miou"][i].as_f64().unwrap();
    let g = &rows[2]["gain"];
    let expect = ((m(&rows[2], 0) - m(&rows[0], 0)) + (m(&rows[2], 1) - m(&rows[0], 1))) / 2.0;
    assert!((g["mean"].as_f64().unwrap() - expect).abs() < 1e-9);
    let md = std::fs::read_to_string(dacs.join("compare.md")).unwrap();
    assert!(
        md.contains("| cam+cdm |") && md.contains("mean ± std"),
        "{md}"
    );
    // One folder per (set, seed).
    assert!(dacs.join("cdm").join("seed_1").join("run.json").is_file());
    // Each run leaves what `omuda train` leaves: the log, TensorBoard files,
    // the final and best checkpoints.
    let run = dacs.join("cam+cdm").join("seed_0");
    let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    let steps = log
        .lines()
        .filter(|l| l.contains("\"type\":\"step\""))
        .count();
    assert_eq!(steps, 2, "{log}");
    assert!(log.contains("\"type\":\"eval\""), "{log}");
    assert!(!omuda::tensorboard::event_files(&run.join("tb"))
        .unwrap()
        .is_empty());
    for ckpt in ["checkpoint", "best"] {
        assert!(
            run.join(ckpt).join("student.safetensors").is_file(),
            "{ckpt}"
        );
        assert!(
            run.join(ckpt).join("hook_cdm.safetensors").is_file(),
            "{ckpt}"
        );
    }
    // `omuda plot` reads compare runs like train runs.
    let res = omuda()
        .args(["plot", dacs.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(dacs.join("plots/total_loss.png").is_file());
    // `weights inspect` takes a checkpoint folder (its student and config).
    let res = omuda()
        .args([
            "weights",
            "inspect",
            run.join("checkpoint").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&res.stdout);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(text.contains("0 missing, 0 unexpected"), "{text}");
    let res = omuda()
        .args(["weights", "inspect", run.to_str().unwrap()])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&res.stderr);
    assert!(
        !res.status.success() && e.contains("student.safetensors"),
        "{e}"
    );

    // A second call trains nothing.
    let res = omuda().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{stderr}");
    assert_eq!(stderr.matches("reusing").count(), 6, "{stderr}");
    assert!(!stderr.contains("training 2 iterations"), "{stderr}");
    // A setting of CAM changes the runs that attach CAM only: the others are
    // reused.
    let res = omuda()
        .args(args)
        .args(["--set", "plugin.cam.weight=0.5"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{stderr}");
    assert_eq!(stderr.matches("reusing").count(), 4, "{stderr}");
    assert_eq!(
        stderr.matches("training 2 iterations").count(),
        2,
        "{stderr}"
    );
    assert!(stderr.matches("[cam+cdm]").count() >= 2, "{stderr}");

    let res = omuda()
        .args([
            "compare",
            "--preset",
            preset.to_str().unwrap(),
            "--plugins",
            "none,cutmix",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!res.status.success());
    assert!(String::from_utf8_lossy(&res.stderr).contains("cutmix"));
    let res = omuda()
        .args(["compare", "--preset", "no-such-preset"])
        .output()
        .unwrap();
    assert!(!res.status.success());
    assert!(String::from_utf8_lossy(&res.stderr).contains("synth-dacs"));
}

/// The tiny preset of the grid tests.
fn tiny_preset(dir: &std::path::Path) -> std::path::PathBuf {
    let preset = dir.join("tiny.toml");
    std::fs::write(
        &preset,
        "methods = [\"dacs\"]\n[train]\niters = 2\nlog_interval = 1\neval_interval = 1\n[data.synth]\nheight = 32\nwidth = 64\nval_size = 2\ndev_size = 2\ntest_size = 2\n[schedule]\nwarmup_iters = 1\n",
    )
    .unwrap();
    preset
}

/// compare.json without the wall times, which differ between runs.
fn results_of(path: &std::path::Path) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for row in v["rows"].as_array_mut().unwrap() {
        row.as_object_mut().unwrap().remove("train_seconds_mean");
    }
    v
}

#[test]
fn two_processes_split_a_grid_and_collect_the_same_table() {
    let dir = tempfile::tempdir().unwrap();
    let preset = tiny_preset(dir.path());
    let grid = |out: &std::path::Path, extra: &[&str]| {
        let mut c = omuda();
        c.args([
            "compare",
            "--preset",
            preset.to_str().unwrap(),
            "--plugins",
            "none,cdm",
            "--seeds",
            "0,1",
            "--out",
            out.to_str().unwrap(),
        ])
        .args(extra);
        c
    };
    let one = dir.path().join("one");
    let res = grid(&one, &[]).output().unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );

    let split = dir.path().join("split");
    let res = grid(&split, &["--list"]).output().unwrap();
    let list = String::from_utf8_lossy(&res.stdout);
    assert_eq!(list.lines().count(), 4, "{list}");
    assert!(list.lines().all(|l| l.ends_with("to do")), "{list}");
    assert!(
        list.contains("cdm\t1\t") && list.contains("seed_1"),
        "{list}"
    );
    // Two processes at once on one output folder.
    let spawn = |shard: &str| {
        grid(&split, &["--shard", shard])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("0/2"), spawn("1/2"));
    for r in [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()] {
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    let res = grid(&split, &["--collect"]).output().unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert_eq!(
        results_of(&split.join("dacs/compare.json")),
        results_of(&one.join("dacs/compare.json"))
    );
    let res = grid(&split, &["--list"]).output().unwrap();
    let list = String::from_utf8_lossy(&res.stdout);
    assert!(list.lines().all(|l| l.ends_with("done")), "{list}");

    // Two processes on the whole grid: each run is trained once, by one of them.
    let both = dir.path().join("both");
    let spawn = || {
        grid(&both, &[])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let mut trained = 0;
    for r in [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()] {
        let e = String::from_utf8_lossy(&r.stderr).to_string();
        assert!(r.status.success(), "{e}");
        trained += e.matches("training 2 iterations").count();
    }
    assert_eq!(trained, 4, "every run trained exactly once");
    assert!(!both.join("dacs/none/seed_0/claim").exists());

    // A subset leaves the others missing, and says so.
    let part = dir.path().join("part");
    let res = grid(&part, &["--only", "0,1"]).output().unwrap();
    let text = String::from_utf8_lossy(&res.stdout);
    assert!(res.status.success());
    assert!(
        text.contains("2 of 4 runs finished") && text.contains("missing: 2"),
        "{text}"
    );
    assert!(!part.join("dacs/compare.json").exists());
}

#[test]
fn one_seed_says_n_a_and_source_only_refuses_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let preset = tiny_preset(dir.path());
    let out = dir.path().join("cmp");
    let res = omuda()
        .args([
            "compare",
            "--preset",
            preset.to_str().unwrap(),
            "--plugins",
            "none,cdm",
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
    let md = std::fs::read_to_string(out.join("dacs/compare.md")).unwrap();
    assert!(md.contains("± n/a") && md.contains("n/a (1 seed)"), "{md}");
    let res = omuda()
        .args([
            "compare",
            "--preset",
            "synth-source_only",
            "--plugins",
            "none,cam",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&res.stderr);
    assert!(
        !res.status.success() && e.contains("\"cam\"") && e.contains("source_only"),
        "{e}"
    );
}
