//! `omuda prepare` and `omuda train` on datasets on disk, end to end at tiny
//! size (fixture trees of 64×32 PNGs written by the tests).

use std::path::Path;
use std::process::Command;

use omuda::core::data::png_io::{write_gray8, write_rgb8, write_u16};

const W: usize = 64;
const H: usize = 32;

fn omuda() -> Command {
    Command::new(env!("CARGO_BIN_EXE_omuda"))
}

fn image(seed: usize) -> Vec<u8> {
    (0..W * H * 3)
        .map(|i| ((i * 13 + seed * 101) % 253) as u8)
        .collect()
}

/// Raw ids: `top` above row 12, `left` | `right` below (split at `split`).
fn ids(top: u8, left: u8, right: u8, split: usize) -> Vec<u8> {
    (0..W * H)
        .map(|p| {
            let (y, x) = (p / W, p % W);
            if y < 12 {
                top
            } else if x < split {
                left
            } else {
                right
            }
        })
        .collect()
}

fn gta_tree(root: &Path, n: usize) {
    for i in 0..n {
        write_rgb8(&root.join(format!("images/{i:05}.png")), W, H, &image(i)).unwrap();
        write_gray8(
            &root.join(format!("labels/{i:05}.png")),
            W,
            H,
            &ids(23, 7, 26, 20 + 6 * i),
        )
        .unwrap();
    }
}

fn cityscapes_tree(root: &Path, split: &str, n: usize) {
    for i in 0..n {
        let base = format!("bonn_{i:06}_000019");
        write_rgb8(
            &root.join(format!("leftImg8bit/{split}/bonn/{base}_leftImg8bit.png")),
            W,
            H,
            &image(40 + i),
        )
        .unwrap();
        let l = ids(23, 7, 26, 30);
        write_gray8(
            &root.join(format!("gtFine/{split}/bonn/{base}_gtFine_labelIds.png")),
            W,
            H,
            &l,
        )
        .unwrap();
    }
}

#[test]
fn prepare_lists_all_problems_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("gta");
    gta_tree(&root, 4);
    std::fs::write(root.join("images/00000.png"), b"not a png").unwrap();
    write_gray8(&root.join("labels/00001.png"), W, H, &vec![99u8; W * H]).unwrap();
    std::fs::remove_file(root.join("labels/00002.png")).unwrap();
    let res = omuda()
        .args(["prepare", root.to_str().unwrap(), "--kind", "gta"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success(), "{stderr}");
    assert!(stderr.contains("images/00000.png: corrupt PNG"), "{stderr}");
    assert!(
        stderr.contains("labels/00001.png: unknown label id 99"),
        "{stderr}"
    );
    assert!(
        stderr.contains("images/00002.png: missing label"),
        "{stderr}"
    );
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!root.join("sample_class_stats.json").exists());
    // An unknown kind is a clear error.
    let res = omuda()
        .args(["prepare", root.to_str().unwrap(), "--kind", "gta6"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        !res.status.success() && stderr.contains("unknown dataset kind \"gta6\""),
        "{stderr}"
    );
}

/// `--skip-bad`: the frames with a problem are listed and left out, the
/// statistics cover the others, opening the dataset skips the listed frames
/// and says so; a clean `prepare` removes the list; problems with the
/// dataset as a whole still fail.
#[test]
fn prepare_skip_bad_lists_and_leaves_out_the_bad_frames() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("gta");
    gta_tree(&root, 5);
    std::fs::write(root.join("images/00000.png"), b"not a png").unwrap();
    write_gray8(&root.join("labels/00001.png"), W, H, &vec![99u8; W * H]).unwrap();
    write_gray8(&root.join("labels/00009.png"), W, H, &ids(23, 7, 26, 20)).unwrap();
    let prepare = |extra: &[&str]| {
        omuda()
            .arg("prepare")
            .arg(&root)
            .args(["--kind", "gta"])
            .args(extra)
            .output()
            .unwrap()
    };
    let res = prepare(&["--skip-bad"]);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{stderr}");
    assert!(stderr.contains("images/00000.png: corrupt PNG"), "{stderr}");
    assert!(
        stderr.contains("labels/00009.png: orphan label"),
        "{stderr}"
    );
    assert!(
        stderr.contains("3 problem(s); 2 frame(s) left out")
            && stderr.contains("excluded_frames.json"),
        "{stderr}"
    );
    let list: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("excluded_frames.json")).unwrap())
            .unwrap();
    let files: Vec<&str> = list["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["file"].as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(files.contains(&"images/00000.png") && files.contains(&"labels/00001.png"));
    let stats: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("sample_class_stats.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(stats.as_array().unwrap().len(), 3);
    // Opening the dataset leaves the listed frames out.
    let ds = omuda::core::data::datasets::Dataset::open(
        omuda::core::data::datasets::DatasetKind::Gta,
        &root,
        "",
    )
    .unwrap();
    let keys: Vec<&str> = ds.frames.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(keys, ["00002", "00003", "00004"]);
    // Fixed data: a clean prepare removes the list.
    std::fs::remove_file(root.join("images/00000.png")).unwrap();
    std::fs::remove_file(root.join("labels/00000.png")).unwrap();
    std::fs::remove_file(root.join("labels/00009.png")).unwrap();
    write_gray8(&root.join("labels/00001.png"), W, H, &ids(23, 7, 26, 20)).unwrap();
    let res = prepare(&[]);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{stderr}");
    assert!(
        stderr.contains("removed") && !root.join("excluded_frames.json").exists(),
        "{stderr}"
    );
    // A problem with the dataset as a whole is not skipped.
    std::fs::remove_dir_all(root.join("images")).unwrap();
    std::fs::create_dir(root.join("images")).unwrap();
    let res = prepare(&["--skip-bad"]);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success(), "{stderr}");
    assert!(
        stderr.contains("no PNG images found") && stderr.contains("as a whole"),
        "{stderr}"
    );
}

#[test]
fn prepare_synthia_writes_the_three_stats_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("synthia");
    for i in 0..2 {
        write_rgb8(&root.join(format!("RGB/{i:07}.png")), W, H, &image(i)).unwrap();
        // 16-bit RGB: class id in R (1 sky, 3 road), instance id in G.
        let lbl: Vec<u16> = (0..W * H)
            .flat_map(|p| [if p < W * 10 { 1 } else { 3 }, p as u16, 0])
            .collect();
        write_u16(&root.join(format!("GT/LABELS/{i:07}.png")), W, H, 3, &lbl).unwrap();
    }
    let res = omuda()
        .args([
            "prepare",
            root.to_str().unwrap(),
            "--kind",
            "synthia",
            "--convert",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{stderr}");
    assert!(stderr.contains("2 labels converted"), "{stderr}");
    let swc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("samples_with_class.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(swc["10"].as_array().unwrap().len(), 2);
    assert_eq!(swc["10"][0][1].as_u64(), Some((W * 10) as u64));
    assert_eq!(swc["0"][1][1].as_u64(), Some((W * (H - 10)) as u64));
    assert!(root.join("sample_class_stats.json").is_file());
    assert!(root.join("sample_class_stats_dict.json").is_file());
    assert!(root.join("GT/LABELS/0000001_labelTrainIds.png").is_file());
}

#[test]
fn train_on_datasets_on_disk_with_rcs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    gta_tree(&d.join("gta"), 3);
    cityscapes_tree(&d.join("cs"), "train", 2);
    cityscapes_tree(&d.join("cs"), "val", 2);
    let res = omuda()
        .args(["prepare", d.join("gta").to_str().unwrap(), "--kind", "gta"])
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let cfg = d.join("files.toml");
    let gta = d.join("gta");
    let cs = d.join("cs");
    std::fs::write(
        &cfg,
        format!(
            r#"
[train]
iters = 2
log_interval = 1
[schedule]
warmup_iters = 1
[data]
dataset = "files"
[data.source]
kind = "gta"
root = "{}"
scale = [64, 32]
crop = [32, 32]
[data.target]
kind = "cityscapes"
root = "{}"
scale = [64, 32]
crop = [32, 32]
[data.val]
kind = "cityscapes"
root = "{}"
split = "val"
scale = [64, 32]
[data.rcs]
min_pixels = 100
[data.loader]
workers = 2
prefetch = 2
"#,
            gta.display(),
            cs.display(),
            cs.display()
        ),
    )
    .unwrap();
    let train_dacs = |out: &Path| {
        omuda()
            .args([
                "train",
                "--config",
                cfg.to_str().unwrap(),
                "--method",
                "dacs",
            ])
            .args(["--out", out.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = d.join("run");
    let res = train_dacs(&out);
    let stdout = String::from_utf8_lossy(&res.stdout);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let metrics: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("dacs").join("metrics.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(metrics["target_test"]["num_images"].as_u64(), Some(2));
    // A truncated val image stops the run before its first iteration, and
    // nothing is written.
    let city = std::fs::read_dir(cs.join("leftImg8bit/val"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut val_images: Vec<_> = std::fs::read_dir(&city)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    val_images.sort();
    let bytes = std::fs::read(&val_images[0]).unwrap();
    std::fs::write(&val_images[0], &bytes[..bytes.len() - 30]).unwrap();
    let out2 = d.join("run2");
    let res = train_dacs(&out2);
    let stderr = String::from_utf8_lossy(&res.stderr);
    let name = val_images[0].file_name().unwrap().to_str().unwrap();
    assert!(!res.status.success(), "{stderr}");
    assert!(
        stderr.contains("data.val (checked before training)") && stderr.contains(name),
        "{stderr}"
    );
    assert!(!out2.exists(), "a run that fails its checks writes nothing");
    std::fs::write(&val_images[0], &bytes).unwrap();
    // A files config without [data.val] names the missing key.
    std::fs::write(
        &cfg,
        format!(
            "[data]\ndataset = \"files\"\n[data.source]\nkind = \"gta\"\nroot = \"{}\"\n",
            gta.display()
        ),
    )
    .unwrap();
    let res = omuda()
        .args(["train", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        !res.status.success() && stderr.contains("data.target is required"),
        "{stderr}"
    );
}
