//! `omuda synth export` → `omuda prepare` → training and evaluation on the
//! files loader: the exported copy is the built-in pair on disk.

use std::path::Path;
use std::process::{Command, Output};

fn omuda() -> Command {
    Command::new(env!("CARGO_BIN_EXE_omuda"))
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A small pair, the same for the export and the built-in runs.
const SMALL: [&str; 12] = [
    "--set",
    "data.synth.height=32",
    "--set",
    "data.synth.width=64",
    "--set",
    "data.synth.train_size=8",
    "--set",
    "data.synth.dev_size=3",
    "--set",
    "data.synth.test_size=4",
    "--set",
    "train.iters=2",
];

fn test_miou(metrics: &Path) -> (f64, f64) {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(metrics).unwrap()).unwrap();
    (
        m["target_test"]["miou"].as_f64().unwrap(),
        m["target_dev"]["miou"].as_f64().unwrap(),
    )
}

#[test]
fn an_export_prepares_trains_and_scores_like_the_builtin_pair() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for layout in ["gta", "cityscapes"] {
        let out = ok(omuda()
            .args(["synth", "export", "--layout", layout, "--out"])
            .arg(d.join(layout))
            .args(SMALL)
            .output()
            .unwrap());
        assert!(out.contains("[data."), "{out}");
    }
    ok(omuda()
        .arg("prepare")
        .arg(d.join("gta"))
        .args(["--kind", "gta"])
        .output()
        .unwrap());
    ok(omuda()
        .arg("prepare")
        .arg(d.join("cityscapes"))
        .args(["--kind", "cityscapes", "--splits", "train,dev,val"])
        .output()
        .unwrap());
    let (gta, cs) = (d.join("gta"), d.join("cityscapes"));
    let files = d.join("files.toml");
    std::fs::write(
        &files,
        format!(
            r#"base = "synth-dacs"
[data]
dataset = "files"
[data.source]
kind = "gta"
root = "{g}"
scale = [64, 32]
crop = [32, 64]
[data.target]
kind = "cityscapes"
root = "{c}"
scale = [64, 32]
crop = [32, 64]
[data.dev]
kind = "cityscapes"
root = "{c}"
split = "dev"
scale = [64, 32]
[data.val]
kind = "cityscapes"
root = "{c}"
split = "val"
scale = [64, 32]
[data.loader]
workers = 1
prefetch = 2
"#,
            g = gta.display(),
            c = cs.display()
        ),
    )
    .unwrap();
    // Training on the export runs through the files loader.
    let run_files = d.join("run_files");
    ok(omuda()
        .args(["train", "--method", "dacs", "--config"])
        .arg(&files)
        .arg("--out")
        .arg(&run_files)
        .args(SMALL)
        .output()
        .unwrap());
    assert!(run_files.join("dacs/metrics.json").is_file());
    // A checkpoint trained on the built-in pair scores exactly the same on
    // the exported test and dev splits as on the generated ones.
    let run_synth = d.join("run_synth");
    ok(omuda()
        .args([
            "train",
            "--method",
            "dacs",
            "--config",
            "synth-dacs",
            "--out",
        ])
        .arg(&run_synth)
        .args(SMALL)
        .output()
        .unwrap());
    let eval_json = d.join("eval_files.json");
    ok(omuda()
        .args(["eval", "--checkpoint"])
        .arg(run_synth.join("dacs/checkpoint"))
        .arg("--config")
        .arg(&files)
        .arg("--out")
        .arg(&eval_json)
        .args(SMALL)
        .output()
        .unwrap());
    let on_disk = test_miou(&eval_json);
    let built_in = test_miou(&run_synth.join("dacs/metrics.json"));
    assert_eq!(on_disk, built_in);
    // Exporting again into the filled folder is refused, naming it.
    let res = omuda()
        .args(["synth", "export", "--layout", "gta", "--out"])
        .arg(&gta)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    assert!(
        stderr.contains("not an empty folder") && stderr.contains("gta"),
        "{stderr}"
    );
}
