//! A folder dataset with classes of its own (3 here) trains, evaluates,
//! predicts and compares with every method and plugin: `model.num_classes`
//! comes from the dataset's spec, and thing-class lists are checked only by
//! the parts that use them.

use std::path::Path;
use std::process::Command;

use omuda_core::data::png_io::{write_gray8, write_rgb8};

fn omuda() -> Command {
    Command::new(env!("CARGO_BIN_EXE_omuda"))
}

/// `n` 32×64 frames of three bands (sky 2 on top, car 1, road 0 below) and
/// their spec, with classes of its own.
fn dataset(dir: &Path, split: &str, n: usize) -> std::path::PathBuf {
    let (w, h) = (64usize, 32usize);
    for i in 0..n {
        let label: Vec<u8> = (0..h * w)
            .map(|k| {
                let y = k / w;
                if y < h / 4 + i % 3 {
                    2
                } else if y < h / 2 {
                    1
                } else {
                    0
                }
            })
            .collect();
        let colours = [[128u8, 64, 128], [0, 0, 142], [70, 130, 180]];
        let image: Vec<u8> = label
            .iter()
            .enumerate()
            .flat_map(|(k, &c)| colours[c as usize].map(|v| v.wrapping_add((k % 7) as u8)))
            .collect();
        write_rgb8(&dir.join(format!("{split}/images/f{i}.png")), w, h, &image).unwrap();
        write_gray8(
            &dir.join(format!("{split}/masks/f{i}_mask.png")),
            w,
            h,
            &label,
        )
        .unwrap();
    }
    let spec = dir.join(format!("{split}.toml"));
    std::fs::write(
        &spec,
        format!(
            "name = \"own-{split}\"\nroot = \"{split}\"\nimages = \"images/*.png\"\nlabels = \"masks/*_mask.png\"\n\
             classes = [\"road\", \"car\", \"sky\"]\npalette = [[128, 64, 128], [0, 0, 142], [70, 130, 180]]\n"
        ),
    )
    .unwrap();
    spec
}

#[test]
fn a_three_class_folder_dataset_runs_with_every_method_and_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let train = dataset(dir.path(), "train", 6);
    let val = dataset(dir.path(), "val", 3);
    let config = dir.path().join("run.toml");
    // No model.num_classes: it comes from the spec.
    std::fs::write(
        &config,
        format!(
            "methods = [\"source_only\", \"dacs\", \"daformer\", \"mic_dacs\", \"oracle\"]\n\
             plugins = [\"cam\", \"fdm\", \"cdm\"]\n\
             [model]\nweights = \"none\"\n\
             [plugin]\nthing_classes = [1]\n[fd]\nthing_classes = [1]\n\
             [data]\ndataset = \"files\"\n\
             [data.source]\nkind = \"folder\"\nroot = \"{t}\"\ncrop = [32, 32]\n\
             [data.target]\nkind = \"folder\"\nroot = \"{t}\"\ncrop = [32, 32]\n\
             [data.val]\nkind = \"folder\"\nroot = \"{v}\"\n\
             [train]\niters = 2\nbatch_size = 1\n[schedule]\nwarmup_iters = 1\n",
            t = train.display(),
            v = val.display()
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let res = omuda()
        .args([
            "train",
            "--config",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(res.status.success(), "{stderr}");
    for m in ["source_only", "dacs", "daformer", "mic_dacs", "oracle"] {
        let metrics: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(m).join("metrics.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            metrics["target_test"]["class_names"],
            serde_json::json!(["road", "car", "sky"]),
            "{m}"
        );
    }
    assert!(stdout.contains("sky"), "{stdout}");

    // eval and predict on a checkpoint.
    let ckpt = out.join("dacs/checkpoint");
    let shown = dir.path().join("shown");
    let res = omuda()
        .args(["eval", "--checkpoint", ckpt.to_str().unwrap()])
        .arg("--save-predictions")
        .arg(&shown)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    // The val frames' predictions, named by frame, in the spec's colours.
    let shown_files: Vec<_> = std::fs::read_dir(&shown).unwrap().collect();
    assert!(!shown_files.is_empty());
    for f in shown_files {
        let img = image::open(f.unwrap().path()).unwrap().to_rgb8();
        assert!(img
            .pixels()
            .all(|p| [[128, 64, 128], [0, 0, 142], [70, 130, 180]].contains(&p.0)));
    }
    let preds = dir.path().join("preds");
    let res = omuda()
        .args(["predict", "--checkpoint", ckpt.to_str().unwrap(), "--out"])
        .arg(&preds)
        .arg(dir.path().join("val/images/f0.png"))
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(std::fs::read_dir(&preds).unwrap().count() >= 2);
    // A folder of PNG and JPEG images, outputs keeping its subfolders.
    let imgs = dir.path().join("imgs");
    std::fs::create_dir_all(imgs.join("sub")).unwrap();
    std::fs::copy(dir.path().join("val/images/f1.png"), imgs.join("b.png")).unwrap();
    let rgb = image::open(dir.path().join("val/images/f2.png"))
        .unwrap()
        .to_rgb8();
    rgb.save(imgs.join("sub/a.jpg")).unwrap();
    let preds = dir.path().join("preds2");
    let res = omuda()
        .args(["predict", "--checkpoint", ckpt.to_str().unwrap(), "--out"])
        .arg(&preds)
        .arg(&imgs)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(preds.join("b_color.png").is_file());
    assert!(preds.join("sub/a_color.png").is_file());
    assert!(preds.join("sub/a_trainid.png").is_file());

    // compare with a plugin set.
    let res = omuda()
        .args([
            "compare",
            "--preset",
            config.to_str().unwrap(),
            "--plugins",
            "none,cdm",
        ])
        .args(["--set", "methods=[\"dacs\"]", "--out"])
        .arg(dir.path().join("cmp"))
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let md = std::fs::read_to_string(dir.path().join("cmp/dacs/compare.md")).unwrap();
    assert!(md.contains("| road | car | sky |"), "{md}");

    // A class count that contradicts the spec is named with both numbers.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("[model]\n", "[model]\nnum_classes = 19\n"),
    )
    .unwrap();
    let res = omuda()
        .args([
            "train",
            "--config",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&res.stderr);
    assert!(
        !res.status.success() && e.contains("model.num_classes = 19") && e.contains("3 classes"),
        "{e}"
    );
}

#[test]
fn thing_classes_are_checked_only_where_they_are_used() {
    // DACS alone with 3 classes and the default (Cityscapes) thing lists: fine.
    let mut cfg = omuda::RunConfig {
        methods: vec!["dacs".into()],
        ..Default::default()
    };
    cfg.model.num_classes = 3;
    cfg.data.dataset = omuda::core::data::config::DataSource::Files;
    let problems = cfg.problems().join("\n");
    assert!(!problems.contains("thing_classes"), "{problems}");
    // With a part that uses them, the key is named.
    cfg.methods = vec!["daformer".into()];
    cfg.plugins = vec!["cam".into()];
    let problems = cfg.problems().join("\n");
    assert!(problems.contains("fd.thing_classes"), "{problems}");
    assert!(problems.contains("plugin.thing_classes"), "{problems}");
}
