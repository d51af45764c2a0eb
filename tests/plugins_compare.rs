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
    assert!(dacs.join("cdm").join("seed1").join("run.json").is_file());
    // Each run leaves what `omuda train` leaves: the log, TensorBoard files,
    // the final and best checkpoints.
    let run = dacs.join("cam+cdm").join("seed0");
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
