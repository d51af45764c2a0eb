//! Configuration layers: `base` inheritance (chained, cycles reported),
//! `--set` overrides (typed, unknown keys named with the valid ones),
//! shortest float printing that reads back to the same configuration, and
//! `--iters` scaling the schedule.

use std::process::Command;

use omuda::layers::resolve;
use omuda::RunConfig;

fn omuda() -> Command {
    Command::new(env!("CARGO_BIN_EXE_omuda"))
}

fn sets(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_file_with_a_base_states_only_what_differs() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("b.toml");
    let c = dir.path().join("c.toml");
    std::fs::write(&b, "base = \"synth-daformer\"\n[fd]\nlambda = 0.05\n").unwrap();
    std::fs::write(&c, "base = \"b.toml\"\n[train]\niters = 40\n").unwrap();
    let cfg = resolve(Some(c.to_str().unwrap()), &[], "--config").unwrap();
    let daformer = omuda::presets::resolve("synth-daformer", "x").unwrap();
    assert_eq!(cfg.fd.lambda, 0.05);
    assert_eq!(cfg.train.iters, 40);
    assert_eq!(cfg.methods, daformer.methods);
    assert_eq!(cfg.model, daformer.model);
    assert_eq!(cfg.data.rcs, daformer.data.rcs);
    // RunConfig::from_file follows the chain too.
    assert_eq!(RunConfig::from_file(&c).unwrap(), cfg);

    std::fs::write(&b, "base = \"c.toml\"\n").unwrap();
    let e = resolve(Some(c.to_str().unwrap()), &[], "--config")
        .unwrap_err()
        .to_string();
    assert!(e.contains("cycle") && e.contains("b.toml"), "{e}");
    std::fs::write(&b, "base = \"no-such-preset\"\n").unwrap();
    let e = resolve(Some(c.to_str().unwrap()), &[], "--config")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no-such-preset") && e.contains("synth-dacs"),
        "{e}"
    );
}

#[test]
fn every_preset_reads_back_from_its_printed_form() {
    for name in omuda::presets::preset_names() {
        let cfg = omuda::presets::resolve(name, "x").unwrap();
        let text = cfg.to_toml().unwrap();
        // No float noise such as 0.6000000238418579.
        for line in text.lines() {
            if let Some((_, v)) = line.split_once(" = ") {
                if v.parse::<f64>().is_ok() {
                    assert!(v.len() <= 12, "{name}: {line}");
                }
            }
        }
        assert_eq!(
            RunConfig::from_toml_str(&text, name).unwrap(),
            cfg,
            "{name}"
        );
    }
    let text = RunConfig::default().to_toml().unwrap();
    assert!(text.contains("shift = 0.6\n"), "{text}");
    assert!(text.contains("pseudo_threshold = 0.968\n"), "{text}");
}

#[test]
fn set_overrides_take_typed_values_and_name_bad_keys() {
    let cfg = resolve(
        Some("synth-dacs"),
        &sets(&[
            "train.iters=40",
            "plugins=[\"cam\", \"cdm\"]",
            "plugin.cam.bg_mask_ratio=0.5",
            "data.rcs.min_pixels=50",
            "model.weights=none",
        ]),
        "--config",
    )
    .unwrap();
    assert_eq!(cfg.train.iters, 40);
    assert_eq!(cfg.plugins, ["cam", "cdm"]);
    assert_eq!(cfg.plugin.cam.bg_mask_ratio, 0.5);
    assert_eq!(cfg.data.rcs.as_ref().unwrap().min_pixels, 50);
    assert_eq!(cfg.model.weights.as_deref(), Some("none"));
    assert_eq!(cfg.overrides.len(), 5);
    // The overrides are recorded in the saved configuration.
    let text = cfg.to_toml().unwrap();
    assert!(text.contains("train.iters=40"), "{text}");

    let e = resolve(None, &sets(&["train.itres=3"]), "--config")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--set train.itres=3") && e.contains("itres") && e.contains("iters"),
        "{e}"
    );
    let e = resolve(None, &sets(&["train.iters=abc"]), "--config")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--set train.iters=abc") && e.contains("abc"),
        "{e}"
    );
    let e = resolve(None, &sets(&["seed.x=1"]), "--config")
        .unwrap_err()
        .to_string();
    assert!(e.contains("seed") && e.contains("not a table"), "{e}");
    let e = resolve(None, &sets(&["train.iters"]), "--config")
        .unwrap_err()
        .to_string();
    assert!(e.contains("KEY=VALUE"), "{e}");
    // Values out of range are checked once all overrides are applied, so every
    // problem is listed, with the overrides that led to them.
    let e = resolve(
        Some("synth-dacs"),
        &sets(&[
            "schedule.lr=-1e-4",
            "uda.pseudo_threshold=2.0",
            "plugins=[\"cam\", \"cam\"]",
        ]),
        "--config",
    )
    .unwrap_err()
    .to_string();
    for part in [
        "3 problems",
        "--set schedule.lr=-1e-4",
        "schedule.lr = -0.0001",
        "uda.pseudo_threshold = 2",
        "\"cam\" twice",
    ] {
        assert!(e.contains(part), "{part:?} not in: {e}");
    }
    // A later override may repair what an earlier one broke.
    let cfg = resolve(
        None,
        &sets(&["schedule.lr=-1", "schedule.lr=1e-4"]),
        "--config",
    )
    .unwrap();
    assert_eq!(cfg.schedule.lr, 1e-4);
}

#[test]
fn iters_scales_the_schedule_unless_set_explicitly() {
    let mut cfg = RunConfig::default();
    let line = cfg.scale_to_iters(200).unwrap();
    assert_eq!(cfg.train.iters, 200);
    assert_eq!(cfg.schedule.warmup_iters, 20);
    assert_eq!(cfg.train.eval_interval, 50);
    assert_eq!(cfg.train.checkpoint_interval, 50);
    assert_eq!(cfg.train.debug_interval, 100);
    assert!(line.contains("schedule.warmup_iters 80 -> 20"), "{line}");
    let mut cfg = resolve(None, &sets(&["schedule.warmup_iters=5"]), "x").unwrap();
    cfg.scale_to_iters(200);
    assert_eq!(cfg.schedule.warmup_iters, 5);
    assert_eq!(cfg.train.eval_interval, 50);
    assert!(RunConfig::default().scale_to_iters(800).is_none());
}

#[test]
fn config_show_takes_set_and_prints_a_diff_against_the_base() {
    let out = omuda()
        .args([
            "config",
            "show",
            "synth-daformer",
            "--set",
            "train.iters=40",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("iters = 40"), "{text}");
    // synth-daformer is `base = "synth-dacs"` plus DAFormer's settings.
    let out = omuda()
        .args(["config", "show", "--diff", "synth-daformer"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("methods = [\"daformer\"]"), "{text}");
    assert!(text.contains("[fd]\nlambda = 0.05"), "{text}");
    assert!(text.contains("[data.rcs]"), "{text}");
    assert!(
        !text.contains("[data.synth") && !text.contains("[eval]"),
        "{text}"
    );
}

#[test]
fn seed_and_seeds_together_are_refused() {
    let out = omuda()
        .args(["train", "--seed", "1", "--seeds", "0,1", "--iters", "1"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("--seeds"), "{e}");
}
