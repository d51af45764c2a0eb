//! Every shipped preset parses and resolves, the published recipes hold the
//! values of the published DACS (mmseg re-implementation), DAFormer, HRDA and
//! MIC configurations, and `omuda config show` prints the resolved
//! configuration of a preset or a file.

use omuda::core::data::config::DataSource;
use std::process::Command;

use omuda::presets::{preset_names, resolve, PRESETS};
use omuda::RunConfig;

#[test]
fn every_preset_parses_resolves_and_round_trips() {
    assert!(PRESETS.len() >= 15, "{:?}", preset_names());
    for (name, _) in PRESETS {
        let cfg = resolve(name, "--config").unwrap_or_else(|e| panic!("preset {name}: {e}"));
        let back = RunConfig::from_toml_str(&cfg.to_toml().unwrap(), "round-trip").unwrap();
        assert_eq!(back, cfg, "preset {name}");
        for m in &cfg.methods {
            assert!(
                omuda::METHOD_NAMES.contains(&m.as_str()),
                "preset {name}: method {m}"
            );
        }
        if name.starts_with("synth-") {
            assert_eq!(cfg.data.dataset, DataSource::Synth, "{name}");
            assert!(cfg.train.iters <= 800, "{name}: synth presets stay small");
        } else {
            // Published recipes: 40k iterations, batch 2, eval every 4000, AdamW 6e-5 with 1500 warm-up.
            assert_eq!(cfg.data.dataset, DataSource::Files, "{name}");
            assert_eq!(
                (
                    cfg.train.iters,
                    cfg.train.batch_size,
                    cfg.train.eval_interval
                ),
                (40_000, 2, 4000),
                "{name}"
            );
            assert_eq!(
                (
                    cfg.schedule.lr,
                    cfg.schedule.warmup_iters,
                    cfg.schedule.power
                ),
                (6e-5, 1500, 1.0),
                "{name}"
            );
            assert_eq!(
                cfg.optimizer.multipliers("decode_head.conv_seg.weight").0,
                10.0,
                "{name}"
            );
        }
    }
    let e = resolve("no-such-preset", "--config")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no-such-preset") && e.contains("daformer-gta2cs"),
        "{e}"
    );
}

#[test]
fn published_recipes_hold_the_reference_values() {
    let p = |n: &str| resolve(n, "x").unwrap();
    for src in ["gta2cs", "synthia2cs"] {
        let dacs = p(&format!("dacs-{src}"));
        assert_eq!(
            (dacs.uda.ema_alpha, dacs.seed, dacs.model.name.as_str()),
            (0.99, 0, "dlv2_r101")
        );
        assert!(dacs.data.rcs.is_none() && dacs.uda.pseudo_label_crop.is_none());
        // DeepLab re-implementation: BN gets weight decay (no `norm` key).
        assert_eq!(dacs.optimizer.multipliers("backbone.bn1.weight").1, 1.0);

        let d = p(&format!("daformer-{src}"));
        assert_eq!(
            (d.uda.ema_alpha, d.seed, d.methods[0].as_str()),
            (0.999, 0, "daformer")
        );
        assert_eq!(d.uda.pseudo_label_crop, Some([15, 120]));
        let rcs = d.data.rcs.clone().unwrap();
        assert_eq!(
            (rcs.class_temp, rcs.min_pixels, rcs.min_crop_ratio),
            (0.01, 3000, 0.5)
        );
        assert_eq!((d.fd.lambda, d.fd.min_ratio, d.fd.layer), (0.005, 0.75, -1));
        assert_eq!(d.fd.thing_classes, [6, 7, 11, 12, 13, 14, 15, 16, 17, 18]);
        assert_eq!(d.data.source.as_ref().unwrap().crop, Some([512, 512]));
        assert_eq!(
            d.optimizer
                .multipliers("segformer.encoder.block.0.0.layer_norm_1.weight")
                .1,
            0.0
        );

        for (m, seed) in [("hrda", 1), ("mic_hrda", 2)] {
            let h = p(&format!("{m}-{src}"));
            assert_eq!(
                (h.seed, h.uda.ema_alpha, h.methods[0].as_str()),
                (seed, 0.999, m)
            );
            assert_eq!(h.uda.pseudo_margins, Some([30, 240, 30, 30]));
            assert_eq!(h.data.rcs.as_ref().unwrap().min_crop_ratio, 2.0);
            assert_eq!(h.data.source.as_ref().unwrap().crop, Some([1024, 1024]));
            assert_eq!(h.data.target.as_ref().unwrap().scale, Some([2048, 1024]));
            assert_eq!(
                (h.hrda.hr_crop, h.hrda.hr_loss_weight, h.hrda.context_scale),
                ([512, 512], 0.1, 0.5)
            );
            assert_eq!(
                (
                    h.mic.block_size,
                    h.mic.reference_height,
                    h.mic.mask_ratio,
                    h.mic.lambda
                ),
                (64, 1024, 0.7, 1.0)
            );
        }
    }
    assert_eq!(
        p("daformer-gta2cs").data.source.as_ref().unwrap().scale,
        Some([1280, 720])
    );
    assert_eq!(
        p("daformer-synthia2cs").data.source.as_ref().unwrap().scale,
        Some([1280, 760])
    );
    assert_eq!(
        p("hrda-gta2cs").data.source.as_ref().unwrap().scale,
        Some([2560, 1440])
    );
}

#[test]
fn config_show_prints_the_resolved_preset_and_lists_presets() {
    let bin = env!("CARGO_BIN_EXE_omuda");
    let out = Command::new(bin)
        .args(["config", "show", "synth-daformer"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    // Fully resolved: the preset's keys and every default it did not state.
    let cfg = RunConfig::from_toml_str(&text, "stdout").unwrap();
    assert_eq!(cfg, resolve("synth-daformer", "x").unwrap());
    assert!(
        text.contains("[mic]") && text.contains("[fd]") && text.contains("[hrda]"),
        "{text}"
    );
    let out = Command::new(bin).args(["config", "list"]).output().unwrap();
    let list = String::from_utf8(out.stdout).unwrap();
    assert_eq!(list.lines().collect::<Vec<_>>(), preset_names());
    // A file path works the same way; a wrong name is a clear error.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x.toml");
    std::fs::write(&f, "methods = [\"mic_dacs\"]\n").unwrap();
    let out = Command::new(bin)
        .args(["config", "show", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("mic_dacs"));
    let out = Command::new(bin)
        .args(["config", "show", "synth-nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("synth-nope"));
    // The plain `omuda config` still prints the built-in configuration.
    let out = Command::new(bin).args(["config"]).output().unwrap();
    let cfg = RunConfig::from_toml_str(&String::from_utf8(out.stdout).unwrap(), "stdout").unwrap();
    assert_eq!(cfg, RunConfig::default());
}
