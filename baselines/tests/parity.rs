//! Parity of the DAFormer and MIC maths with PyTorch (`lhoyer/MIC`
//! `seg/mmseg/utils/utils.py::downscale_label_ratio`,
//! `seg/mmseg/models/uda/dacs.py::DACS.masked_feat_dist`,
//! `seg/mmseg/datasets/uda_dataset.py::get_rcs_class_probs` and
//! `seg/mmseg/models/utils/masking_transforms.py::BlockMaskGenerator`): values
//! from `tests/fixtures/gen_baselines.py`, stored in
//! `tests/fixtures/baselines.safetensors`; every random draw is injected.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use omuda_baselines::fd::feature_distance;
use omuda_core::data::rcs::class_probs;
use omuda_core::data::stats::FrameStats;
use omuda_core::ops::block_mask::{
    block_mask_from_grid, grid_len, grid_shape, nearest_source_index, random_block_mask,
};
use omuda_core::ops::feature_distance::{
    class_mask, downscale_label_ratio, masked_feature_distance,
};

const THINGS: [u32; 10] = [6, 7, 11, 12, 13, 14, 15, 16, 17, 18];

fn fixture() -> HashMap<String, Tensor> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/baselines.safetensors"
    );
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn u32s(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[test]
fn downscale_label_ratio_matches_torch_for_s32_and_s64() {
    let fx = fixture();
    for (name, s) in [("s32", 32), ("s64", 64)] {
        let label = &fx[&format!("dlr_{name}_label")];
        let want = &fx[&format!("dlr_{name}_out")];
        let got = downscale_label_ratio(label, s, 0.75, 19).unwrap();
        assert_eq!(got.dims(), want.dims(), "{name}");
        let (g, w) = (u32s(&got), u32s(want));
        assert_eq!(g, w, "{name}");
        // The fixture exercises both outcomes: kept majority classes and ignored cells.
        assert!(
            w.contains(&255) && w.iter().any(|&c| c < 19),
            "{name}: {w:?}"
        );
    }
    // The reference asserts scale_factor > 1; a bad label shape is named.
    let l = Tensor::zeros((1, 8, 8), DType::U32, &Device::Cpu).unwrap();
    assert!(downscale_label_ratio(&l, 1, 0.75, 19)
        .unwrap_err()
        .to_string()
        .contains("scale factor"));
    let l4 = Tensor::zeros((1, 1, 8, 8), DType::U32, &Device::Cpu).unwrap();
    assert!(downscale_label_ratio(&l4, 2, 0.75, 19)
        .unwrap_err()
        .to_string()
        .contains("(B, H, W)"));
}

#[test]
fn masked_feature_distance_value_and_gradient_match_torch() {
    let fx = fixture();
    let f = Var::from_tensor(&fx["fd_f"]).unwrap();
    let f0 = &fx["fd_f0"];
    // The thing mask of the downscaled label equals the reference's.
    let down = downscale_label_ratio(&fx["fd_label"], 32, 0.75, 19).unwrap();
    let mask = class_mask(&down, &THINGS).unwrap();
    assert_eq!(f32s(&mask), f32s(&fx["fd_mask"]));
    let n = f32s(&mask).iter().filter(|&&m| m > 0.0).count();
    assert!(
        n > 0 && n < 32,
        "the fixture mask should be partial, has {n} of 32 cells"
    );
    // Through the FD entry point (label → scale W/w = 32 → mask → distance).
    let d = feature_distance(f.as_tensor(), f0, &fx["fd_label"], &THINGS, 0.75, 19)
        .unwrap()
        .unwrap();
    let want = f32s(&fx["fd_dist"])[0];
    let got = d.to_scalar::<f32>().unwrap();
    assert!(
        (got - want).abs() < 1e-5 * want.abs().max(1.0),
        "{got} vs {want}"
    );
    let grads = d.backward().unwrap();
    let g = f32s(grads.get(f.as_tensor()).unwrap());
    let gw = f32s(&fx["fd_grad"]);
    for (i, (a, b)) in g.iter().zip(&gw).enumerate() {
        assert!((a - b).abs() < 1e-5, "grad[{i}]: {a} vs {b}");
    }
}

#[test]
fn empty_mask_gives_no_loss_and_no_gradient() {
    let fx = fixture();
    // The reference's mean over no cell is NaN ...
    assert!(f32s(&fx["fd_empty_dist"])[0].is_nan());
    // ... here it is None: no term, so nothing to differentiate.
    let f = Var::from_tensor(&fx["fd_f"]).unwrap();
    let none = Tensor::zeros((2, 4, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(masked_feature_distance(f.as_tensor(), &fx["fd_f0"], &none)
        .unwrap()
        .is_none());
    // A label without thing classes (all road, some ignore) gives an empty mask too.
    let mut l = vec![0u32; 2 * 128 * 128];
    l[5] = 255;
    let label = Tensor::from_vec(l, (2, 128, 128), &Device::Cpu).unwrap();
    assert!(
        feature_distance(f.as_tensor(), &fx["fd_f0"], &label, &THINGS, 0.75, 19)
            .unwrap()
            .is_none()
    );
    // A label whose downscaled size does not fit the features is an error naming both.
    let bad = Tensor::zeros((2, 96, 128), DType::U32, &Device::Cpu).unwrap();
    let e = feature_distance(f.as_tensor(), &fx["fd_f0"], &bad, &THINGS, 0.75, 19)
        .unwrap_err()
        .to_string();
    assert!(e.contains("96×128") && e.contains("4×4"), "{e}");
}

#[test]
fn mic_block_mask_from_injected_grid_matches_torch() {
    let fx = fixture();
    for (name, h, w, b) in [
        ("full", 1024, 64, 64),
        ("half", 512, 96, 32),
        ("h760", 760, 136, 64),
        ("h800", 800, 96, 64),
    ] {
        let grid = &fx[&format!("mic_{name}_grid")];
        let (_, _, gh, gw) = grid.dims4().unwrap();
        assert_eq!(grid_shape(h, w, b), (gh, gw), "{name}: grid size");
        let rows: Vec<usize> = u32s(&fx[&format!("mic_{name}_rows")])
            .iter()
            .map(|&r| r as usize)
            .collect();
        let ours: Vec<usize> = (0..h).map(|y| nearest_source_index(y, gh, h)).collect();
        assert_eq!(ours, rows, "{name}: nearest rows");
        let mask = block_mask_from_grid(&f32s(grid), (gh, gw), (h, w), 0.7).unwrap();
        assert_eq!(mask, f32s(&fx[&format!("mic_{name}_mask")]), "{name}: mask");
    }
    // Golden values of the reference: H = 760, b = 64 → round(11.875) = 12
    // blocks of unequal height (nearest with a non-integer ratio).
    assert_eq!(grid_len(760, 64), 12);
    assert_eq!(grid_len(800, 64), 12); // round(12.5) = 12 in Python
    assert_eq!(grid_len(864, 64), 14); // round(13.5) = 14
    assert_eq!(grid_len(1024, 64), 16);
    assert_eq!(grid_len(512, 32), 16);
    let rows: Vec<usize> = (0..760).map(|y| nearest_source_index(y, 12, 760)).collect();
    let first = rows.iter().filter(|&&r| r == 0).count();
    assert!(first == 64 || first == 63, "block 0 has {first} rows");
    assert_eq!(*rows.last().unwrap(), 11);
    // A bad grid is an error, not a panic.
    assert!(block_mask_from_grid(&[0.5; 5], (2, 3), (8, 8), 0.7).is_err());
}

#[test]
fn mic_block_mask_masks_about_the_ratio() {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut kept = 0.0;
    let n = 50;
    for _ in 0..n {
        let m = random_block_mask(128, 256, 8, 0.7, &mut rng).unwrap();
        assert_eq!(m.len(), 128 * 256);
        kept += m.iter().sum::<f32>() as f64 / m.len() as f64;
    }
    let kept = kept / n as f64;
    assert!((kept - 0.3).abs() < 0.02, "kept share {kept}");
}

#[test]
fn rcs_probabilities_match_torch_float32_softmax() {
    let fx = fixture();
    let counts = fx["rcs_counts"].to_vec1::<i64>().unwrap();
    // Split the totals over two frames: class_probs sums per class first.
    let a: Vec<(u8, u64)> = counts
        .iter()
        .enumerate()
        .map(|(c, &n)| (c as u8, n as u64 / 3))
        .collect();
    let b: Vec<(u8, u64)> = counts
        .iter()
        .enumerate()
        .map(|(c, &n)| (c as u8, n as u64 - n as u64 / 3))
        .collect();
    let stats = vec![
        FrameStats {
            file: "a.png".into(),
            counts: a,
        },
        FrameStats {
            file: "b.png".into(),
            counts: b,
        },
    ];
    let (classes, probs) = class_probs(&stats, 0.01);
    let order: Vec<u8> = fx["rcs_order"]
        .to_vec1::<i64>()
        .unwrap()
        .iter()
        .map(|&c| c as u8)
        .collect();
    assert_eq!(classes, order);
    let want = f32s(&fx["rcs_probs"]);
    for (i, (p, q)) in probs.iter().zip(&want).enumerate() {
        assert!(
            (p - q).abs() <= 1e-6 + 1e-4 * q.abs(),
            "P[{i}] = {p}, torch {q}"
        );
    }
}
