//! What a run leaves to look at, with the `omuda` binary at tiny size:
//! `omuda predict` outputs, debug image grids, and the multi-seed summary.

use std::path::{Path, PathBuf};
use std::process::Command;

use omuda::core::data::classes::{CITYSCAPES_PALETTE, NUM_CLASSES};

fn omuda() -> Command {
    Command::new(env!("CARGO_BIN_EXE_omuda"))
}

fn tiny_config(dir: &Path, train: &str) -> PathBuf {
    let path = dir.join("tiny.toml");
    std::fs::write(
        &path,
        format!("[train]\n{train}\n[data.synth]\nheight = 32\nwidth = 64\nval_size = 4\ndev_size = 4\ntest_size = 4\n[schedule]\nwarmup_iters = 1\n"),
    )
    .unwrap();
    path
}

fn run_ok(cmd: &mut Command) -> String {
    let res = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr).into_owned();
    assert!(
        res.status.success(),
        "stdout:\n{}\nstderr:\n{stderr}",
        String::from_utf8_lossy(&res.stdout)
    );
    String::from_utf8_lossy(&res.stdout).into_owned()
}

#[test]
fn predict_writes_colour_trainid_and_overlay_pngs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), "iters = 3\ndebug_interval = 2");
    let out = dir.path().join("run");
    run_ok(omuda().args([
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--method",
        "dacs",
        "--out",
        out.to_str().unwrap(),
    ]));

    // Debug grid of iteration 2: one column per tile, one row per batch image.
    let grid = image::open(out.join("dacs/debug/iter_00000002.png"))
        .unwrap()
        .to_rgb8();
    assert!(
        grid.width() > 8 * 96 && grid.height() > 2 * 48,
        "{}×{}",
        grid.width(),
        grid.height()
    );
    assert!(!out.join("dacs/debug/iter_00000003.png").exists());

    // Two input images: a gradient and a flat colour.
    let (w, h) = (64u32, 32u32);
    let a = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 4) as u8, (y * 8) as u8, 90]));
    let b = image::RgbImage::from_pixel(w, h, image::Rgb([120, 120, 120]));
    let inputs = dir.path().join("in");
    std::fs::create_dir_all(&inputs).unwrap();
    a.save(inputs.join("a.png")).unwrap();
    b.save(inputs.join("b.png")).unwrap();
    let pred = dir.path().join("pred");
    run_ok(omuda().args([
        "predict",
        "--checkpoint",
        out.join("dacs/checkpoint").to_str().unwrap(),
        "--out",
        pred.to_str().unwrap(),
        "--opacity",
        "0.5",
        inputs.join("a.png").to_str().unwrap(),
        inputs.join("b.png").to_str().unwrap(),
    ]));
    for (stem, input) in [("a", &a), ("b", &b)] {
        let ids = image::open(pred.join(format!("{stem}_trainid.png"))).unwrap();
        assert!(
            matches!(ids, image::DynamicImage::ImageLuma8(_)),
            "trainIds are 8-bit grey"
        );
        let ids = ids.to_luma8();
        let colour = image::open(pred.join(format!("{stem}_color.png")))
            .unwrap()
            .to_rgb8();
        let over = image::open(pred.join(format!("{stem}_overlay.png")))
            .unwrap()
            .to_rgb8();
        assert_eq!((ids.width(), ids.height()), (w, h));
        for ((id, c), (o, i)) in ids
            .pixels()
            .zip(colour.pixels())
            .zip(over.pixels().zip(input.pixels()))
        {
            let id = id.0[0] as usize;
            assert!(id < NUM_CLASSES, "trainId {id}");
            assert_eq!(
                c.0, CITYSCAPES_PALETTE[id],
                "colour PNG is the palette of the trainId PNG"
            );
            for ch in 0..3 {
                let want = (0.5 * i.0[ch] as f32 + 0.5 * c.0[ch] as f32).round() as i32;
                assert!((o.0[ch] as i32 - want).abs() <= 1, "overlay at opacity 0.5");
            }
        }
    }

    // Bad input is an error naming the file.
    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"not a png").unwrap();
    let res = omuda()
        .args([
            "predict",
            "--checkpoint",
            out.join("dacs/checkpoint").to_str().unwrap(),
            "--out",
            pred.to_str().unwrap(),
            bad.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!res.status.success());
    assert!(String::from_utf8_lossy(&res.stderr).contains("bad.png"));
}

#[test]
fn multi_seed_training_writes_mean_std_and_median_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), "iters = 2\ndebug_interval = 0");
    let out = dir.path().join("seeds");
    let stdout = run_ok(omuda().args([
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--method",
        "dacs",
        "--seeds",
        "0,1,2",
        "--out",
        out.to_str().unwrap(),
    ]));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let m = &summary["methods"][0];
    assert_eq!(m["method"], "dacs");
    let per_seed: Vec<f64> = m["target_miou"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(per_seed.len(), 3);
    // Each seed's value is the one in its own metrics.json.
    for (i, seed) in [0, 1, 2].iter().enumerate() {
        let metrics: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("seed_{seed}/dacs/metrics.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(
            metrics["target_test"]["miou"].as_f64().unwrap(),
            per_seed[i]
        );
        assert_eq!(metrics["seed"], *seed);
    }
    let mean = per_seed.iter().sum::<f64>() / 3.0;
    let std = (per_seed.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
    assert!((m["mean"].as_f64().unwrap() - mean).abs() < 1e-9);
    assert!((m["std"].as_f64().unwrap() - std).abs() < 1e-9);
    let mut sorted: Vec<(f64, u64)> = per_seed.iter().copied().zip([0u64, 1, 2]).collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    assert_eq!(m["median_seed"], sorted[1].1);
    let median_ckpt = PathBuf::from(m["median_checkpoint"].as_str().unwrap());
    assert_eq!(
        median_ckpt,
        out.join(format!("seed_{}/dacs/checkpoint", sorted[1].1))
    );
    assert!(median_ckpt.join("student.safetensors").is_file());
    assert!(
        stdout.contains("±") && stdout.contains("median seed"),
        "{stdout}"
    );

    // Resuming a finished multi-seed run trains nothing and writes the same summary.
    let res = omuda()
        .args(["train", "--resume", out.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{stderr}");
    assert_eq!(stderr.matches("finished earlier").count(), 3, "{stderr}");
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(again, summary);
}

#[test]
fn debug_grid_shows_the_cam_mask() {
    let dir = tempfile::tempdir().unwrap();
    let mut widths = Vec::new();
    // CAM's masked term (weight 1; the default 0 draws no mask).
    for (name, plugins) in [
        ("plain", "[]"),
        ("cam", "[\"cam\"]\n[plugin.cam]\nweight = 1.0"),
    ] {
        let cfg = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "plugins = {plugins}\n[train]\niters = 2\ndebug_interval = 2\n[data.synth]\nheight = 32\nwidth = 64\nval_size = 4\ndev_size = 4\ntest_size = 4\n[schedule]\nwarmup_iters = 1\n"
            ),
        )
        .unwrap();
        let out = dir.path().join(name);
        run_ok(omuda().args([
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--method",
            "dacs",
            "--out",
            out.to_str().unwrap(),
        ]));
        let grid = image::open(out.join("dacs/debug/iter_00000002.png"))
            .unwrap()
            .to_rgb8();
        widths.push((grid.width(), grid.height()));
    }
    // CAM adds one tile per row: a wider grid of the same height.
    assert_eq!(widths[0].1, widths[1].1, "{widths:?}");
    assert!(widths[1].0 > widths[0].0, "{widths:?}");
}
