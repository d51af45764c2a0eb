//! Datasets on disk: layouts, id mappings, the reference pipeline rules,
//! RCS, `prepare` statistics, bad input, loader determinism and evaluation.
//! Every fixture tree is written by the test itself (tiny 64×32 PNGs).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use omuda_core::data::datasets::{Dataset, DatasetKind};
use omuda_core::data::labels::{CITYSCAPES_ID_TO_TRAIN_ID, SYNTHIA_ID_TO_TRAIN_ID};
use omuda_core::data::pipeline::{
    choose_crop, crop_accepted, rescale_size, CropBox, PipelineConfig, Prepared,
};
use omuda_core::data::png_io::{
    read_label8, read_rgb, write_gray8, write_indexed8, write_rgb8, write_u16,
};
use omuda_core::data::prefetch::{DomainData, LoaderOptions, Producer, UdaLoader};
use omuda_core::data::prepare::{prepare, PrepareOptions};
use omuda_core::data::rcs::{candidate_files, class_probs, crop_has_class, RcsConfig, RcsSampler};
use omuda_core::data::stats::{read_sample_class_stats, read_samples_with_class, FrameStats};
use omuda_core::eval::dataset::{evaluate_dataset, DatasetEvalOptions, Protocol};
use omuda_core::eval::miou::ConfusionMatrix;
use omuda_core::eval::EvalConfig;

const W: usize = 64;
const H: usize = 32;

fn image(seed: usize) -> Vec<u8> {
    (0..W * H * 3)
        .map(|i| ((i * 31 + seed * 97) % 251) as u8)
        .collect()
}

/// A label of raw ids: sky on top, `left` | `right` in the middle band
/// (split at column `split`), `bottom` below.
fn id_label(sky: u16, left: u16, right: u16, bottom: u16, split: usize) -> Vec<u16> {
    let mut l = vec![0u16; W * H];
    for y in 0..H {
        for x in 0..W {
            l[y * W + x] = if y < 8 {
                sky
            } else if y < 24 {
                if x < split {
                    left
                } else {
                    right
                }
            } else {
                bottom
            };
        }
    }
    l
}

fn map_ids(ids: &[u16], table: &[(u16, u8)]) -> Vec<u8> {
    ids.iter()
        .map(|&i| table.iter().find(|p| p.0 == i).map_or(255, |p| p.1))
        .collect()
}

fn to_u8(v: &[u16]) -> Vec<u8> {
    v.iter().map(|&x| x as u8).collect()
}

fn hist(label: &[u8]) -> Vec<(u8, u64)> {
    let mut h = [0u64; 19];
    for &l in label {
        if (l as usize) < 19 {
            h[l as usize] += 1;
        }
    }
    h.iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(c, &n)| (c as u8, n))
        .collect()
}

/// GTA tree: frames 00001..=n, raw palette labels (Cityscapes ids); the
/// expected trainIds of each frame are returned.
fn gta_tree(root: &Path, n: usize) -> Vec<Vec<u8>> {
    let palette: Vec<[u8; 3]> = (0..256).map(|i| [i as u8, 0, 0]).collect();
    let mut want = Vec::new();
    for i in 1..=n {
        let ids = id_label(23, 7, 26, 0, 16 + 8 * i);
        write_rgb8(&root.join(format!("images/{i:05}.png")), W, H, &image(i)).unwrap();
        write_indexed8(
            &root.join(format!("labels/{i:05}.png")),
            W,
            H,
            &to_u8(&ids),
            &palette,
        )
        .unwrap();
        want.push(map_ids(&ids, &CITYSCAPES_ID_TO_TRAIN_ID));
    }
    want
}

/// SYNTHIA tree: 16-bit RGB labels with the class id in R and an instance id in G.
fn synthia_tree(root: &Path, n: usize) -> Vec<Vec<u8>> {
    let mut want = Vec::new();
    for i in 0..n {
        let ids = id_label(1, 3, 8, 0, 20 + 4 * i);
        let mut rgb = Vec::with_capacity(W * H * 3);
        for (p, &id) in ids.iter().enumerate() {
            rgb.extend_from_slice(&[id, 1000 + p as u16, 7]);
        }
        write_rgb8(&root.join(format!("RGB/{i:07}.png")), W, H, &image(i)).unwrap();
        write_u16(&root.join(format!("GT/LABELS/{i:07}.png")), W, H, 3, &rgb).unwrap();
        want.push(map_ids(&ids, &SYNTHIA_ID_TO_TRAIN_ID));
    }
    want
}

/// Cityscapes tree: `split` with `n` frames in city "aachen"; labelIds files,
/// or trainId files when `train_ids`.
fn cityscapes_tree(root: &Path, split: &str, n: usize, train_ids: bool) -> Vec<Vec<u8>> {
    let mut want = Vec::new();
    for i in 0..n {
        let base = format!("aachen_{i:06}_000019");
        let ids = id_label(23, 7, 24, 1, 24 + 4 * i);
        let tid = map_ids(&ids, &CITYSCAPES_ID_TO_TRAIN_ID);
        write_rgb8(
            &root.join(format!("leftImg8bit/{split}/aachen/{base}_leftImg8bit.png")),
            W,
            H,
            &image(i + 50),
        )
        .unwrap();
        if train_ids {
            write_gray8(
                &root.join(format!(
                    "gtFine/{split}/aachen/{base}_gtFine_labelTrainIds.png"
                )),
                W,
                H,
                &tid,
            )
            .unwrap();
        } else {
            write_gray8(
                &root.join(format!("gtFine/{split}/aachen/{base}_gtFine_labelIds.png")),
                W,
                H,
                &to_u8(&ids),
            )
            .unwrap();
        }
        want.push(tid);
    }
    want
}

fn quiet() -> (impl Fn(usize), impl Fn() + Sync) {
    (|_n: usize| {}, || {})
}

fn run_prepare(
    kind: DatasetKind,
    root: &Path,
    convert: bool,
) -> omuda_core::data::prepare::PrepareReport {
    let (t, k) = quiet();
    prepare(
        kind,
        root,
        &PrepareOptions {
            convert,
            ..PrepareOptions::default()
        },
        &t,
        &k,
    )
    .unwrap()
}

#[test]
fn gta_raw_palette_labels_map_to_train_ids() {
    let dir = tempfile::tempdir().unwrap();
    let want = gta_tree(dir.path(), 2);
    let ds = Dataset::open(DatasetKind::Gta, dir.path(), "").unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.frames[0].key, "00001");
    for (i, w) in want.iter().enumerate() {
        let s = ds.load(i).unwrap();
        assert_eq!((s.width, s.height), (W, H));
        assert_eq!(&s.label, w);
        assert_eq!(s.image, image(i + 1));
    }
    // id 23 → sky 10, 7 → road 0, 26 → car 13, 0 → ignore
    assert_eq!(want[0][0], 10);
    assert_eq!(want[0][8 * W], 0);
    assert_eq!(want[0][9 * W + W - 1], 13);
    assert_eq!(want[0][H * W - 1], 255);
}

#[test]
fn synthia_uses_the_first_png_channel_of_16_bit_labels() {
    let dir = tempfile::tempdir().unwrap();
    let want = synthia_tree(dir.path(), 2);
    let ds = Dataset::open(DatasetKind::Synthia, dir.path(), "").unwrap();
    let s = ds.load(1).unwrap();
    assert_eq!(s.label, want[1]);
    // SYNTHIA 1 → sky 10, 3 → road 0, 8 → car 13, 0 → ignore
    // (`lhoyer/MIC seg/tools/convert_datasets/synthia.py::convert_to_train_id`)
    assert_eq!(
        (
            s.label[0],
            s.label[8 * W],
            s.label[9 * W + W - 1],
            s.label[H * W - 1]
        ),
        (10, 0, 13, 255)
    );
}

#[test]
fn cityscapes_label_ids_are_mapped_and_train_id_files_preferred() {
    let dir = tempfile::tempdir().unwrap();
    let want = cityscapes_tree(dir.path(), "val", 2, false);
    let ds = Dataset::open(DatasetKind::Cityscapes, dir.path(), "val").unwrap();
    assert_eq!(ds.frames[1].key, "aachen_000001_000019");
    assert!(!ds.frames[0].label.as_ref().unwrap().is_train_ids);
    assert_eq!(ds.load(0).unwrap().label, want[0]);
    // A trainId file next to the labelIds file takes precedence.
    let tid_path = dir
        .path()
        .join("gtFine/val/aachen/aachen_000000_000019_gtFine_labelTrainIds.png");
    write_gray8(&tid_path, W, H, &vec![5u8; W * H]).unwrap();
    let ds = Dataset::open(DatasetKind::Cityscapes, dir.path(), "val").unwrap();
    assert!(ds.frames[0].label.as_ref().unwrap().is_train_ids);
    assert_eq!(ds.load(0).unwrap().label, vec![5u8; W * H]);
    assert_eq!(ds.load(1).unwrap().label, want[1]);
}

fn folder_spec(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("spec.toml");
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn folder_dataset_pairs_by_glob_key_and_maps_ids() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (i, sub) in ["a", "b"].iter().enumerate() {
        write_rgb8(&d.join(format!("imgs/{sub}/f{i}.png")), W, H, &image(i)).unwrap();
        let ids = id_label(9, 1, 7, 0, 32);
        write_gray8(
            &d.join(format!("masks/{sub}/f{i}_mask.png")),
            W,
            H,
            &to_u8(&ids),
        )
        .unwrap();
    }
    let spec = folder_spec(
        d,
        r#"
name = "streets"
images = "imgs/**/*.png"
labels = "masks/*/*_mask.png"
classes = ["road", "car", "sky"]
palette = [[128, 64, 128], [0, 0, 142], [70, 130, 180]]
ignore_index = 255
max_id = 9
[id_to_train_id]
1 = 0
7 = 1
9 = 2
"#,
    );
    let ds = Dataset::open(DatasetKind::Folder, &spec, "").unwrap();
    assert_eq!(ds.num_classes(), 3);
    assert_eq!(
        ds.frames.iter().map(|f| f.key.as_str()).collect::<Vec<_>>(),
        vec!["a/f0", "b/f1"]
    );
    let s = ds.load(1).unwrap();
    assert_eq!(
        (
            s.label[0],
            s.label[8 * W],
            s.label[9 * W + 40],
            s.label[H * W - 1]
        ),
        (2, 0, 1, 255)
    );
    // An id above max_id is an error naming the file and the id.
    write_gray8(&d.join("masks/a/f0_mask.png"), W, H, &vec![12u8; W * H]).unwrap();
    let e = ds.load(0).unwrap_err().to_string();
    assert!(
        e.contains("f0_mask.png") && e.contains("unknown label id 12"),
        "{e}"
    );
}

#[test]
fn folder_spec_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("imgs")).unwrap();
    // bad glob
    let spec = folder_spec(d, "name = \"x\"\nimages = \"imgs/[ab].png\"\n");
    let e = Dataset::open(DatasetKind::Folder, &spec, "")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("spec.toml") && e.contains("bad glob") && e.contains("not supported"),
        "{e}"
    );
    // empty folder: the glob matches nothing
    let spec = folder_spec(d, "name = \"x\"\nimages = \"imgs/*.png\"\n");
    let e = Dataset::open(DatasetKind::Folder, &spec, "")
        .unwrap_err()
        .to_string();
    assert!(e.contains("imgs") && e.contains("matches no file"), "{e}");
    // unknown key
    let spec = folder_spec(
        d,
        "name = \"x\"\nimages = \"imgs/*.png\"\nlables = \"l/*.png\"\n",
    );
    let e = Dataset::open(DatasetKind::Folder, &spec, "")
        .unwrap_err()
        .to_string();
    assert!(e.contains("lables"), "{e}");
    // a class listed twice
    let spec = folder_spec(
        d,
        "name = \"x\"\nimages = \"imgs/*.png\"\nclasses = [\"a\", \"b\", \"a\"]\npalette = [[0, 0, 0], [1, 1, 1], [2, 2, 2]]\n",
    );
    let e = Dataset::open(DatasetKind::Folder, &spec, "")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("spec.toml") && e.contains("a listed more than once"),
        "{e}"
    );
    // palette size
    let spec = folder_spec(
        d,
        "name = \"x\"\nimages = \"imgs/*.png\"\nclasses = [\"a\", \"b\"]\npalette = [[0, 0, 0]]\n",
    );
    let e = Dataset::open(DatasetKind::Folder, &spec, "")
        .unwrap_err()
        .to_string();
    assert!(e.contains("palette has 1 colours for 2 classes"), "{e}");
}

#[test]
fn mmcv_keep_ratio_rounding_golden_sizes() {
    // mmcv keep-ratio rescale under the `Resize` of the DAFormer and HRDA pipelines: GTA
    // 1914×1052 → 1280×704 (DAFormer), 2560×1407 (HRDA).
    assert_eq!(rescale_size(1914, 1052, [1280, 720]), (1280, 704));
    assert_eq!(rescale_size(1914, 1052, [2560, 1440]), (2560, 1407));
    // Cityscapes exact halving, and SYNTHIA identity / ×2 (the `Resize` scales of
    // `uda_synthia_to_cityscapes_512x512.py` and `uda_synthiaHR_to_cityscapesHR_1024x1024.py`).
    assert_eq!(rescale_size(2048, 1024, [1024, 512]), (1024, 512));
    assert_eq!(rescale_size(1280, 760, [1280, 760]), (1280, 760));
    assert_eq!(rescale_size(1280, 760, [2560, 1520]), (2560, 1520));
    // The scale tuple's order does not matter (long and short edges).
    assert_eq!(rescale_size(1914, 1052, [720, 1280]), (1280, 704));
    let p = PipelineConfig::daformer_gta();
    assert_eq!(p.resized_size(1914, 1052), (1280, 704));
    assert_eq!(p.output_size(1914, 1052), (512, 512));
}

/// A 20×20 label: left 10 columns class 0, right 10 columns class 1, except
/// rows 0..4 of the right half which are ignore.
fn crop_label() -> Vec<u8> {
    let mut l = vec![0u8; 400];
    for y in 0..20 {
        for x in 10..20 {
            l[y * 20 + x] = if y < 4 { 255 } else { 1 };
        }
    }
    l
}

#[test]
fn cat_max_ratio_acceptance_with_injected_boxes() {
    let l = crop_label();
    let b = |y, x| CropBox { y, x, h: 8, w: 8 };
    // Only class 0: rejected (one class).
    assert!(!crop_accepted(&l, 20, b(0, 0), 0.75, 255));
    // Class 1 plus ignore only: one non-ignore class → rejected.
    assert!(!crop_accepted(
        &l,
        20,
        CropBox {
            y: 0,
            x: 12,
            h: 4,
            w: 8
        },
        0.75,
        255
    ));
    // 4 columns of each class: 50 % < 75 % → accepted.
    assert!(crop_accepted(&l, 20, b(8, 6), 0.75, 255));
    // 6 of 8 columns class 0 = 75 %: not below 0.75 → rejected.
    assert!(!crop_accepted(&l, 20, b(8, 4), 0.75, 255));
    // Ignore pixels are excluded from the ratio: rows 0..8 at x 7..15 hold
    // 3·8 = 24 class-0, 5·4 = 20 class-1 and 20 ignore pixels → 24/44 < 0.75.
    assert!(crop_accepted(&l, 20, b(0, 7), 0.75, 255));

    // The first accepted box is used.
    let boxes = [b(0, 0), b(8, 4), b(8, 6), b(0, 0)];
    let mut i = 0;
    let chosen = choose_crop(&l, 20, 0.75, 255, || {
        i += 1;
        boxes[i - 1]
    });
    assert_eq!((chosen, i), (b(8, 6), 3));
    // All rejected: 1 + 10 re-draws, the 11th box used unchecked.
    let mut n = 0;
    let chosen = choose_crop(&l, 20, 0.75, 255, || {
        n += 1;
        b(0, n % 2)
    });
    assert_eq!(n, 11);
    assert_eq!(chosen, b(0, 1));
    // cat_max_ratio 1 disables the rule.
    let mut n = 0;
    choose_crop(&l, 20, 1.0, 255, || {
        n += 1;
        b(0, 0)
    });
    assert_eq!(n, 1);
}

#[test]
fn a_crop_larger_than_the_frame_is_an_error_unless_padding_is_asked_for() {
    let src = omuda_core::data::synth::Sample {
        image: vec![0; 32 * 64 * 3],
        label: vec![0; 32 * 64],
        height: 32,
        width: 64,
    };
    let mut cfg = PipelineConfig {
        scale: None,
        crop: Some([4096, 4096]),
        cat_max_ratio: 1.0,
        flip_prob: 0.0,
        pad_to_crop: false,
    };
    let p = Prepared::new(src.clone(), &cfg);
    let e = p
        .check_fits(&cfg, "data.source", "a.png")
        .unwrap_err()
        .to_string();
    for want in [
        "data.source.crop = [4096, 4096]",
        "32×64",
        "a.png",
        "pad_to_crop",
    ] {
        assert!(e.contains(want), "{want:?} missing in {e}");
    }
    cfg.crop = Some([32, 64]);
    assert!(p.check_fits(&cfg, "data.source", "a.png").is_ok());
    cfg.crop = Some([4096, 4096]);
    cfg.pad_to_crop = true;
    assert!(p.check_fits(&cfg, "data.source", "a.png").is_ok());
}

#[test]
fn crop_pads_small_images_and_flip_mirrors() {
    let src = omuda_core::data::synth::Sample {
        image: (0..4 * 3 * 3).map(|i| i as u8).collect(),
        label: (0..12).map(|i| (i % 5) as u8).collect(),
        height: 3,
        width: 4,
    };
    let cfg = PipelineConfig {
        scale: None,
        crop: Some([5, 6]),
        cat_max_ratio: 1.0,
        flip_prob: 0.0,
        pad_to_crop: true,
    };
    let p = Prepared::new(src.clone(), &cfg);
    let full = CropBox {
        y: 0,
        x: 0,
        h: 3,
        w: 4,
    };
    let out = p.finish(&cfg, full, false);
    assert_eq!((out.height, out.width), (5, 6));
    assert_eq!(&out.label[0..4], &src.label[0..4]);
    assert_eq!(&out.label[4..6], &[255, 255]);
    assert!(out.label[3 * 6..].iter().all(|&l| l == 255));
    assert!(out.image[3 * 6 * 3..].iter().all(|&v| v == 0));
    let flipped = p.finish(&cfg, full, true);
    assert_eq!(flipped.label[0], src.label[3]);
    assert_eq!(&flipped.image[0..3], &src.image[9..12]);
}

#[test]
fn rcs_probabilities_golden_values() {
    // `uda_dataset.py::get_rcs_class_probs`: {0: 1000, 1: 100, 2: 10}, T = 0.01 → order [2, 1, 0],
    // P ≈ [0.999699, 0.000301, 1.8e-39].
    let stats = vec![
        FrameStats {
            file: "a_labelTrainIds.png".into(),
            counts: vec![(0, 600), (1, 100)],
        },
        FrameStats {
            file: "b_labelTrainIds.png".into(),
            counts: vec![(0, 400), (2, 10)],
        },
    ];
    let (classes, p) = class_probs(&stats, 0.01);
    assert_eq!(classes, vec![2, 1, 0]);
    assert!((p[0] - 0.999699).abs() < 2e-6, "{p:?}");
    assert!((p[1] - 0.000301).abs() < 2e-6, "{p:?}");
    assert!(p[2] > 0.0 && (p[2] / 1.8e-39 - 1.0).abs() < 0.05, "{p:?}");
    // Candidate files: strictly more than min_pixels.
    let mut swc = std::collections::BTreeMap::new();
    swc.insert(
        5u8,
        vec![("x.png".to_string(), 3000u64), ("y.png".to_string(), 3001)],
    );
    assert_eq!(candidate_files(&swc, 5, 3000), vec!["y.png".to_string()]);
    // Re-crop acceptance: count > min_pixels · min_crop_ratio (1500 for DAFormer, 6000 for HRDA).
    let daformer = RcsConfig::default();
    assert!(!crop_has_class(1500, &daformer));
    assert!(crop_has_class(1501, &daformer));
    let hrda = RcsConfig {
        min_crop_ratio: 2.0,
        ..RcsConfig::default()
    };
    assert!(!crop_has_class(6000, &hrda));
    assert!(crop_has_class(6001, &hrda));
}

#[test]
fn prepare_gta_converts_and_writes_reference_stats() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("gta");
    let want = gta_tree(&root, 3);
    let r = run_prepare(DatasetKind::Gta, &root, true);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!((r.frames, r.converted), (3, 3));
    for (i, w) in want.iter().enumerate() {
        let conv = root.join(format!("labels/{:05}_labelTrainIds.png", i + 1));
        let (cw, ch, l) = read_label8(&conv).unwrap();
        assert_eq!((cw, ch), (W, H));
        assert_eq!(&l, w);
    }
    // sample_class_stats.json: one object per file, counts > 0 only, "file" last.
    let stats = read_sample_class_stats(&root.join("sample_class_stats.json")).unwrap();
    assert_eq!(stats.len(), 3);
    for (i, (s, w)) in stats.iter().zip(&want).enumerate() {
        assert_eq!(
            s.file,
            root.join(format!("labels/{:05}_labelTrainIds.png", i + 1))
                .display()
                .to_string()
        );
        assert_eq!(s.counts, hist(w));
    }
    let text = std::fs::read_to_string(root.join("sample_class_stats.json")).unwrap();
    assert!(text.starts_with("[\n  {\n    \"0\": "), "{text}");
    let first = text.split("\n  }").next().unwrap();
    assert!(
        first
            .trim_end()
            .lines()
            .last()
            .unwrap()
            .trim_start()
            .starts_with("\"file\": "),
        "{first}"
    );
    // sample_class_stats_dict.json: file → counts.
    let dict: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("sample_class_stats_dict.json")).unwrap(),
    )
    .unwrap();
    let f1 = &stats[0].file;
    for (c, n) in &stats[0].counts {
        assert_eq!(dict[f1][c.to_string()].as_u64(), Some(*n));
    }
    assert!(dict[f1].get("file").is_none());
    // samples_with_class.json: class → [file, n] in file order.
    let swc = read_samples_with_class(&root.join("samples_with_class.json")).unwrap();
    for c in [0u8, 10, 13] {
        let list = &swc[&c];
        assert_eq!(list.len(), 3);
        for (s, (f, n)) in stats.iter().zip(list) {
            assert_eq!(f, &s.file);
            assert_eq!(Some(*n), s.counts.iter().find(|p| p.0 == c).map(|p| p.1));
        }
    }
    assert!(!swc.contains_key(&255));
    // The converted files are now preferred and skip re-conversion.
    let r = run_prepare(DatasetKind::Gta, &root, true);
    assert_eq!(r.converted, 0);
    assert_eq!(
        read_sample_class_stats(&root.join("sample_class_stats.json")).unwrap(),
        stats
    );
}

#[test]
fn prepare_synthia_and_cityscapes_stats_are_not_empty() {
    let dir = tempfile::tempdir().unwrap();
    let syn = dir.path().join("synthia");
    let want = synthia_tree(&syn, 2);
    let r = run_prepare(DatasetKind::Synthia, &syn, true);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    let swc = read_samples_with_class(&syn.join("samples_with_class.json")).unwrap();
    assert_eq!(swc.keys().copied().collect::<Vec<_>>(), vec![0, 10, 13]);
    let (_, _, l) = read_label8(&syn.join("GT/LABELS/0000001_labelTrainIds.png")).unwrap();
    assert_eq!(l, want[1]);

    let cs = dir.path().join("cityscapes");
    let train = cityscapes_tree(&cs, "train", 2, false);
    cityscapes_tree(&cs, "val", 1, false);
    let r = run_prepare(DatasetKind::Cityscapes, &cs, true);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!((r.frames, r.converted), (3, 3));
    // Statistics of the train split only (reference converter).
    let stats = read_sample_class_stats(&cs.join("sample_class_stats.json")).unwrap();
    assert_eq!(stats.len(), 2);
    assert!(stats[0]
        .file
        .ends_with("aachen_000000_000019_gtFine_labelTrainIds.png"));
    assert_eq!(stats[1].counts, hist(&train[1]));
    assert!(cs
        .join("gtFine/val/aachen/aachen_000000_000019_gtFine_labelTrainIds.png")
        .is_file());
}

#[test]
fn prepare_lists_every_problem_with_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    gta_tree(root, 6);
    // 1: corrupt image (not a PNG)
    std::fs::write(root.join("images/00001.png"), b"this is not a png").unwrap();
    // 2: truncated label
    let lbl = std::fs::read(root.join("labels/00002.png")).unwrap();
    std::fs::write(root.join("labels/00002.png"), &lbl[..lbl.len() / 2]).unwrap();
    // 3: label of the wrong size
    write_gray8(
        &root.join("labels/00003.png"),
        W / 2,
        H,
        &vec![7u8; W / 2 * H],
    )
    .unwrap();
    // 4: unknown id
    let mut ids = vec![7u8; W * H];
    ids[5] = 40;
    ids[6] = 40;
    write_gray8(&root.join("labels/00004.png"), W, H, &ids).unwrap();
    // 5: missing label
    std::fs::remove_file(root.join("labels/00005.png")).unwrap();
    let r = run_prepare(DatasetKind::Gta, root, false);
    let find = |name: &str| {
        r.problems
            .iter()
            .find(|(p, _)| p.ends_with(name))
            .map(|(_, m)| m.clone())
    };
    let m = find("images/00001.png").expect("corrupt image reported");
    assert!(m.contains("corrupt PNG"), "{m}");
    let m = find("labels/00002.png").expect("truncated label reported");
    assert!(m.contains("truncated") || m.contains("corrupt"), "{m}");
    let m = find("labels/00003.png").expect("wrong size reported");
    assert!(
        m.contains("label is 32×32 but its image") && m.contains("64×32"),
        "{m}"
    );
    let m = find("labels/00004.png").expect("unknown id reported");
    assert!(m.contains("unknown label id 40 (2 px)"), "{m}");
    let m = find("images/00005.png").expect("missing label reported");
    assert!(m.contains("missing label"), "{m}");
    assert_eq!(r.problems.len(), 5, "{:?}", r.problems);
    assert!(r.stats_dir.is_none());
    assert!(!root.join("sample_class_stats.json").exists());
}

#[test]
fn bad_input_errors_name_file_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    gta_tree(root, 3);
    std::fs::write(root.join("images/00001.png"), b"\x89PNG\r\n\x1a\ngarbage").unwrap();
    let img = std::fs::read(root.join("images/00002.png")).unwrap();
    std::fs::write(root.join("images/00002.png"), &img[..img.len() - 40]).unwrap();
    write_gray8(
        &root.join("labels/00003.png"),
        W,
        H - 1,
        &vec![7u8; W * (H - 1)],
    )
    .unwrap();
    let ds = Dataset::open(DatasetKind::Gta, root, "").unwrap();
    let e0 = ds.load(0).unwrap_err().to_string();
    assert!(e0.contains("00001.png") && e0.contains("PNG"), "{e0}");
    let e1 = ds.load(1).unwrap_err().to_string();
    assert!(
        e1.contains("00002.png") && (e1.contains("truncated") || e1.contains("corrupt")),
        "{e1}"
    );
    let e2 = ds.load(2).unwrap_err().to_string();
    assert!(
        e2.contains("labels/00003.png") && e2.contains("64×31") && e2.contains("64×32"),
        "{e2}"
    );
    assert!(read_rgb(&root.join("images/nope.png"))
        .unwrap_err()
        .to_string()
        .contains("nope.png"));
    // Missing label: open lists it.
    std::fs::remove_file(root.join("labels/00003.png")).unwrap();
    let e = Dataset::open(DatasetKind::Gta, root, "")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("images/00003.png") && e.contains("missing label"),
        "{e}"
    );
    // Empty folder and missing folder.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(empty.join("images")).unwrap();
    let e = Dataset::open(DatasetKind::Gta, &empty, "")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no PNG images found"), "{e}");
    let e = Dataset::open(DatasetKind::Cityscapes, &empty, "train")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("leftImg8bit") && e.contains("does not exist"),
        "{e}"
    );
}

fn uda_producer(root: &Path, seed: u64, rcs: bool) -> Producer {
    let gta = Arc::new(Dataset::open(DatasetKind::Gta, &root.join("gta"), "").unwrap());
    let cs = Arc::new(Dataset::open(DatasetKind::Cityscapes, &root.join("cs"), "train").unwrap());
    let sp = PipelineConfig {
        scale: Some([48, 24]),
        crop: Some([16, 16]),
        cat_max_ratio: 0.75,
        flip_prob: 0.5,
        pad_to_crop: false,
    };
    let tp = PipelineConfig {
        scale: Some([32, 16]),
        crop: Some([16, 16]),
        cat_max_ratio: 1.0,
        flip_prob: 0.5,
        pad_to_crop: false,
    };
    let sampler = rcs.then(|| {
        let cfg = RcsConfig {
            class_temp: 0.01,
            min_pixels: 100,
            min_crop_ratio: 0.2,
        };
        RcsSampler::from_dir(&root.join("gta"), &gta, &cfg).unwrap()
    });
    Producer::new(
        DomainData {
            dataset: gta,
            pipeline: sp,
        },
        DomainData {
            dataset: cs,
            pipeline: tp,
        },
        sampler,
        2,
        seed,
    )
    .unwrap()
}

#[test]
fn loader_is_deterministic_per_seed_for_any_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    gta_tree(&root.join("gta"), 4);
    cityscapes_tree(&root.join("cs"), "train", 3, true);
    run_prepare(DatasetKind::Gta, &root.join("gta"), false);
    for rcs in [false, true] {
        let opts = |workers| LoaderOptions {
            batch_size: 2,
            seed: 7,
            workers,
            prefetch: 3,
        };
        let mut sync = UdaLoader::new(uda_producer(root, 7, rcs), opts(0), &Device::Cpu).unwrap();
        let mut threaded =
            UdaLoader::new(uda_producer(root, 7, rcs), opts(3), &Device::Cpu).unwrap();
        let a: Vec<_> = (0..6).map(|_| sync.next_host_batch().unwrap()).collect();
        let b: Vec<_> = (0..6)
            .map(|_| threaded.next_host_batch().unwrap())
            .collect();
        assert_eq!(a, b);
        assert_eq!(a[0].source_dims, (2, 16, 16));
        assert_eq!(a[0].source_image.len(), 2 * 3 * 16 * 16);
        assert_eq!(a[0].target_dims, (2, 16, 16));
        assert!(a
            .iter()
            .all(|hb| hb.rcs_classes.iter().all(|c| c.is_some() == rcs)));
        // Another seed gives other batches.
        let mut other = UdaLoader::new(uda_producer(root, 8, rcs), opts(2), &Device::Cpu).unwrap();
        let c: Vec<_> = (0..6).map(|_| other.next_host_batch().unwrap()).collect();
        assert_ne!(a, c);
        // Resuming from the saved order state replays the same batches.
        let state = threaded.order_state();
        let next = threaded.next_host_batch().unwrap();
        threaded.restore_order_state(&state).unwrap();
        assert_eq!(threaded.next_host_batch().unwrap(), next);
        let mut fresh = UdaLoader::new(uda_producer(root, 7, rcs), opts(1), &Device::Cpu).unwrap();
        fresh.restore_order_state(&state).unwrap();
        assert_eq!(fresh.next_host_batch().unwrap(), next);
        // Tensors have the batch's shapes.
        let t = fresh.next_batch().unwrap();
        assert_eq!(t.source_image.dims(), &[2, 3, 16, 16]);
        assert_eq!(t.source_label.dims(), &[2, 16, 16]);
        assert_eq!(t.target_image.dims(), &[2, 3, 16, 16]);
    }
}

#[test]
fn rcs_sampler_matches_stats_files_to_frames() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    gta_tree(root, 3);
    run_prepare(DatasetKind::Gta, root, true);
    let ds = Dataset::open(DatasetKind::Gta, root, "").unwrap();
    let cfg = RcsConfig {
        min_pixels: 100,
        ..RcsConfig::default()
    };
    let s = RcsSampler::from_dir(root, &ds, &cfg).unwrap();
    // Car (13) grows with the frame index: rarest first, all frames are candidates.
    assert_eq!(s.classes.len(), 3);
    assert!(s.files.iter().all(|f| f.len() == 3));
    // A class without a file above min_pixels is an error naming the class.
    let e = RcsSampler::from_dir(
        root,
        &ds,
        &RcsConfig {
            min_pixels: 100_000,
            ..RcsConfig::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("samples_with_class.json") && e.contains("min_pixels"),
        "{e}"
    );
    // Missing statistics tell the user to run prepare.
    let e = RcsSampler::from_dir(&root.join("labels"), &ds, &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("omuda prepare"), "{e}");
}

#[test]
fn evaluation_at_full_resolution_with_protocol_and_colour() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let want = cityscapes_tree(root, "val", 2, true);
    let ds = Dataset::open(DatasetKind::Cityscapes, root, "val").unwrap();
    // A model that predicts road everywhere, at a quarter of its input size.
    let predict = |x: &Tensor| -> candle_core::Result<Tensor> {
        let (b, _, h, w) = x.dims4()?;
        let mut v = vec![0f32; b * 19 * (h / 4) * (w / 4)];
        for bi in 0..b {
            for p in 0..(h / 4) * (w / 4) {
                v[bi * 19 * (h / 4) * (w / 4) + p] = 1.0;
            }
        }
        Tensor::from_vec(v, (b, 19, h / 4, w / 4), x.device())
    };
    let colour = root.join("colour");
    let opts = DatasetEvalOptions {
        scale: Some([32, 16]),
        colour_dir: Some(colour.clone()),
        limit: None,
    };
    let r = evaluate_dataset(&ds, &opts, &EvalConfig::default(), &Device::Cpu, &predict).unwrap();
    assert_eq!(r.num_images, 2);
    let mut cm = ConfusionMatrix::new(19);
    for l in &want {
        cm.add(l, &vec![0u32; l.len()], 255).unwrap();
    }
    let iou = cm.iou();
    for (got, w) in r.per_class_iou.iter().zip(&iou) {
        assert_eq!(got.is_some(), w.is_some());
        if let (Some(g), Some(w)) = (got, w) {
            assert!((g - w * 100.0).abs() < 1e-9);
        }
    }
    // Colourised prediction at the label's full resolution, Cityscapes road colour.
    let (cw, ch, rgb) = read_rgb(&colour.join("aachen_000000_000019.png")).unwrap();
    assert_eq!((cw, ch), (W, H));
    assert_eq!(&rgb[0..3], &[128, 64, 128]);
    // SYNTHIA runs report mIoU16 and mIoU13.
    let h = Protocol::for_source(DatasetKind::Synthia).headline(&r);
    assert_eq!(
        h.iter().map(|p| p.0).collect::<Vec<_>>(),
        vec!["mIoU16", "mIoU13"]
    );
    assert_eq!(h[0].1, r.miou16);
    assert_eq!(
        Protocol::for_source(DatasetKind::Gta).headline(&r)[0],
        ("mIoU", r.miou)
    );
}

#[test]
fn what_stands_where_a_file_or_folder_should_be_is_named() {
    use omuda_core::data::datasets::what_is_at;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    gta_tree(root, 4);
    // 1: a directory, 2: a FIFO, 3: a symlink to itself, where labels should be.
    std::fs::remove_file(root.join("labels/00001.png")).unwrap();
    std::fs::create_dir(root.join("labels/00001.png")).unwrap();
    std::fs::remove_file(root.join("labels/00002.png")).unwrap();
    let fifo = root.join("labels/00002.png");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    let have_fifo = made.map(|s| s.success()).unwrap_or(false);
    let looped = root.join("labels/00003.png");
    std::fs::remove_file(&looped).unwrap();
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    assert_eq!(what_is_at(&root.join("labels/00001.png")), "is a directory");
    assert_eq!(what_is_at(&looped), "is a symlink loop");
    assert_eq!(what_is_at(&root.join("labels/nope.png")), "does not exist");
    let e = Dataset::open(DatasetKind::Gta, root, "")
        .unwrap_err()
        .to_string();
    assert!(e.contains("labels/00001.png (a directory)"), "{e}");
    assert!(e.contains("labels/00003.png (a symlink loop)"), "{e}");
    if have_fifo {
        assert_eq!(what_is_at(&fifo), "is a FIFO");
        assert!(e.contains("labels/00002.png (a FIFO)"), "{e}");
    }
    // A dataset root that is a regular file.
    let file_root = root.join("not_a_dir");
    std::fs::write(&file_root, b"x").unwrap();
    let e = Dataset::open(DatasetKind::Gta, &file_root, "")
        .unwrap_err()
        .to_string();
    assert!(e.contains("is a regular file"), "{e}");
}

#[test]
fn orphan_labels_and_looping_images_are_reported_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    gta_tree(root, 3);
    // An image without its label stays a "missing label"; a label without its
    // image is an orphan; a symlink loop among the images is named.
    std::fs::remove_file(root.join("images/00002.png")).unwrap();
    let looped = root.join("images/00009.png");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    let e = Dataset::open(DatasetKind::Gta, root, "")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("labels/00002.png: orphan label: no image") && e.contains("images/00002.png"),
        "{e}"
    );
    assert!(
        e.contains("images/00009.png: expected a PNG file, but it is a symlink loop"),
        "{e}"
    );
    assert!(e.contains("2 problem(s)"), "{e}");
}
