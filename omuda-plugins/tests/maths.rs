//! The plugins' maths on hand-made tensors and buffers.

use candle_core::{DType, Device, Tensor, Var};
use omuda_core::ops::block_mask::{random_block_mask, scaled_block};
use omuda_core::ops::feature_distance::{
    downscale_label_grid, level_index, masked_feature_distance,
};
use omuda_core::ops::IGNORE_INDEX;
use omuda_core::train::class_balanced_weight;
use omuda_plugins::cdm::{class_thresholds, pixel_weight, update_class_means};
use omuda_plugins::fdm::cell_mask;
use omuda_plugins::masks::{cam_mask, cell_mean, fg_fraction, CamMaskParams};
use omuda_plugins::CdmMode;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const THING: u32 = 13;
const STUFF: u32 = 0;

fn things() -> Vec<bool> {
    (0..19)
        .map(|c| [6, 7, 11, 12, 13, 14, 15, 16, 17, 18].contains(&c))
        .collect()
}

fn params(fg: f32, bg: f32) -> CamMaskParams {
    CamMaskParams {
        block: 4,
        divisor: 2,
        fg_min_fraction: 0.1,
        bg_mask_ratio: bg,
        fg_mask_ratio: fg,
    }
}

/// 8×8 label, blocks of 4: top-left block 2/16 thing pixels (12.5 %, foreground),
/// top-right 1/16 (6.25 %, background), bottom blocks stuff only.
fn label_8x8() -> Vec<u32> {
    let mut l = vec![STUFF; 64];
    l[0] = THING;
    l[9] = THING;
    l[4] = THING;
    l
}

#[test]
fn cam_classifies_blocks_by_foreground_fraction() {
    let l = label_8x8();
    assert_eq!(fg_fraction(&l, 8, (0, 4), (0, 4), &things()), 0.125);
    assert_eq!(fg_fraction(&l, 8, (0, 4), (4, 8), &things()), 0.0625);
    // Background always masked, foreground never: exactly the top-left block survives.
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (keep, st) = cam_mask(&l, 8, 8, &things(), &params(0.0, 1.0), &mut rng).unwrap();
    assert_eq!((st.fg_blocks, st.blocks), (1, 4));
    for y in 0..8 {
        for x in 0..8 {
            let expect = if y < 4 && x < 4 { 1.0 } else { 0.0 };
            assert_eq!(keep[y * 8 + x], expect, "pixel ({y}, {x})");
        }
    }
    assert_eq!(
        (st.fg_masked, st.fg_pixels, st.bg_masked, st.bg_pixels),
        (0, 16, 48, 48)
    );
    // Raising the threshold above 12.5 % turns the block into background.
    let mut p = params(0.0, 1.0);
    p.fg_min_fraction = 0.13;
    let (keep, st) = cam_mask(&l, 8, 8, &things(), &p, &mut rng).unwrap();
    assert_eq!(st.fg_blocks, 0);
    assert!(keep.iter().all(|&v| v == 0.0));
}

#[test]
fn cam_masks_foreground_in_sub_blocks() {
    let l = label_8x8();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut partial = 0;
    for _ in 0..200 {
        let (keep, _) = cam_mask(&l, 8, 8, &things(), &params(0.5, 0.0), &mut rng).unwrap();
        // Every 2×2 sub-block of the foreground block is all kept or all masked.
        let mut masked_subs = 0;
        for sy in [0, 2] {
            for sx in [0, 2] {
                let v: Vec<f32> = (0..4)
                    .map(|i| keep[(sy + i / 2) * 8 + sx + i % 2])
                    .collect();
                assert!(
                    v.iter().all(|&x| x == v[0]),
                    "sub-block ({sy}, {sx}) split: {v:?}"
                );
                masked_subs += (v[0] == 0.0) as usize;
            }
        }
        if masked_subs > 0 && masked_subs < 4 {
            partial += 1;
        }
        // Background blocks (ratio 0) are never masked.
        assert!((0..64)
            .filter(|i| i / 8 >= 4 || i % 8 >= 4)
            .all(|i| keep[i] == 1.0));
    }
    assert!(
        partial > 50,
        "sub-blocks are drawn independently ({partial} of 200 draws partial)"
    );
}

#[test]
fn cam_realises_the_ratios_over_many_draws() {
    // 64×64, left half things, right half stuff, blocks of 8.
    let l: Vec<u32> = (0..64 * 64)
        .map(|i| if i % 64 < 32 { THING } else { STUFF })
        .collect();
    let p = CamMaskParams {
        block: 8,
        divisor: 2,
        fg_min_fraction: 0.1,
        bg_mask_ratio: 0.7,
        fg_mask_ratio: 0.3,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let (mut fgm, mut fgn, mut bgm, mut bgn) = (0, 0, 0, 0);
    for _ in 0..100 {
        let (keep, st) = cam_mask(&l, 64, 64, &things(), &p, &mut rng).unwrap();
        assert_eq!(st.fg_blocks, 32);
        let masked = keep.iter().filter(|&&v| v == 0.0).count();
        assert_eq!(masked, st.fg_masked + st.bg_masked);
        fgm += st.fg_masked;
        fgn += st.fg_pixels;
        bgm += st.bg_masked;
        bgn += st.bg_pixels;
    }
    let (fg, bg) = (fgm as f64 / fgn as f64, bgm as f64 / bgn as f64);
    assert!((fg - 0.3).abs() < 0.02, "foreground masked share {fg}");
    assert!((bg - 0.7).abs() < 0.02, "background masked share {bg}");
    // Same generator state, same mask.
    let a = cam_mask(&l, 64, 64, &things(), &p, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    let b = cam_mask(&l, 64, 64, &things(), &p, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    assert_eq!(a, b);
}

#[test]
fn cam_edge_blocks_are_cut_at_the_border() {
    // 6×10 image with blocks of 4: 2×3 blocks, the last row/column cut.
    let l = vec![STUFF; 60];
    let p = CamMaskParams {
        block: 4,
        divisor: 2,
        fg_min_fraction: 0.1,
        bg_mask_ratio: 1.0,
        fg_mask_ratio: 0.0,
    };
    let (keep, st) = cam_mask(&l, 6, 10, &things(), &p, &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
    assert_eq!(st.blocks, 6);
    assert_eq!(st.bg_pixels, 60);
    assert!(keep.iter().all(|&v| v == 0.0));
    assert!(cam_mask(&l, 6, 9, &things(), &p, &mut ChaCha8Rng::seed_from_u64(0)).is_err());
}

#[test]
fn block_size_scales_with_the_crop() {
    assert_eq!(scaled_block(64, 1024, 1024), 64);
    assert_eq!(scaled_block(64, 1024, 512), 32);
    assert_eq!(scaled_block(64, 1024, 128), 8);
    assert_eq!(scaled_block(64, 1024, 8), 1);
    assert_eq!(scaled_block(16, 0, 128), 16);
}

#[test]
fn random_block_mask_ratio() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut masked = 0usize;
    for _ in 0..100 {
        let m = random_block_mask(32, 32, 4, 0.5, &mut rng).unwrap();
        for by in 0..8 {
            for bx in 0..8 {
                let v = m[by * 4 * 32 + bx * 4];
                assert!((0..16).all(|i| m[(by * 4 + i / 4) * 32 + bx * 4 + i % 4] == v));
            }
        }
        masked += m.iter().filter(|&&v| v == 0.0).count();
    }
    let share = masked as f64 / (100.0 * 1024.0);
    assert!((share - 0.5).abs() < 0.03, "{share}");
}

#[test]
fn cdm_class_thresholds_and_weights() {
    let thr = class_thresholds(&[0.5, 1.0, 0.25], 0.968);
    let expect = [0.484f32, 0.968, 0.242];
    for (t, e) in thr.iter().zip(expect) {
        assert!((t - e).abs() < 1e-6, "{thr:?}");
    }
    // Initial state: every class at 1/K gives the host threshold for all.
    assert!(class_thresholds(&[1.0 / 19.0; 19], 0.968)
        .iter()
        .all(|&t| (t - 0.968).abs() < 1e-6));
    assert_eq!(pixel_weight(0.5, 0.484, CdmMode::Hard), 1.0);
    assert_eq!(pixel_weight(0.48, 0.484, CdmMode::Hard), 0.0);
    assert_eq!(pixel_weight(0.968, 0.968, CdmMode::Hard), 1.0);
    assert!((pixel_weight(0.121, 0.242, CdmMode::Soft) - 0.5).abs() < 1e-6);
    assert_eq!(pixel_weight(0.9, 0.242, CdmMode::Soft), 1.0);
}

#[test]
fn cdm_ema_update_of_class_means() {
    let mut mu = vec![0.1, 0.2, 0.3];
    update_class_means(&mut mu, &[0, 0, 1, 255], &[0.8, 0.6, 0.9, 0.1], 0.9);
    let expect = [0.9 * 0.1 + 0.1 * 0.7, 0.9 * 0.2 + 0.1 * 0.9, 0.3];
    for (m, e) in mu.iter().zip(expect) {
        assert!((m - e).abs() < 1e-7, "{mu:?}");
    }
}

#[test]
fn cdm_weights_from_given_statistics() {
    use omuda_core::ops::pseudo::PseudoLabels;
    use omuda_core::train::StepHook;
    use omuda_plugins::CdmConfig;
    use std::collections::HashMap;
    let dev = Device::Cpu;
    let mut cdm = omuda_plugins::Cdm::new(CdmConfig::default());
    // Load μ as a checkpoint would: class 0 confident, class 1 half as confident.
    let mut mu = vec![0.1f64; 19];
    mu[0] = 0.9;
    mu[1] = 0.45;
    cdm.load_state(&HashMap::from([(
        "mu".to_string(),
        Tensor::new(mu.as_slice(), &dev).unwrap(),
    )]))
    .unwrap();
    let pl = PseudoLabels {
        label: Tensor::new(&[[[0u32, 0, 1, 1]]], &dev).unwrap(),
        confidence: Tensor::new(&[[[0.97f32, 0.9, 0.5, 0.4]]], &dev).unwrap(),
        weight: Tensor::zeros((1, 1, 4), DType::F32, &dev).unwrap(),
    };
    // τ_0 = 0.968, τ_1 = 0.484.
    let w = cdm
        .weights(&pl, 0.968)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(w, [1.0, 0.0, 1.0, 0.0]);
    let state = cdm.state().unwrap();
    assert_eq!(state["mu"].to_vec1::<f64>().unwrap(), mu);
    assert!(cdm.load_state(&HashMap::new()).is_err());
}

#[test]
fn downscaled_labels_and_cell_means() {
    // 4×4 label, 2×2 cells: 3/4 car → car; 2/2 split → ignore; all ignore → ignore; 4/4 road → road.
    #[rustfmt::skip]
    let l = vec![
        13, 13, 0, 0,
        13, 0, 13, 13,
        IGNORE_INDEX, IGNORE_INDEX, 0, 0,
        IGNORE_INDEX, IGNORE_INDEX, 0, 0,
    ];
    let down = |l: &[u32], (h, w): (usize, usize), grid, ratio| {
        let t = Tensor::from_vec(l.to_vec(), (1, h, w), &Device::Cpu).unwrap();
        downscale_label_grid(&t, grid, ratio, 19)
            .and_then(|d| Ok(d.flatten_all()?.to_vec1::<u32>()?))
    };
    let d = down(&l, (4, 4), (2, 2), 0.75).unwrap();
    assert_eq!(d, [13, IGNORE_INDEX, IGNORE_INDEX, 0]);
    let d = down(&l, (4, 4), (2, 2), 0.5).unwrap();
    assert_eq!(d, [13, 0, IGNORE_INDEX, 0], "ties go to the lowest class");
    // Cells that do not tile the label: 5×5 onto 2×2 uses 2×2 cells from the
    // top-left and drops the last row and column.
    let l5: Vec<u32> = (0..25)
        .map(|i| if i % 5 == 4 || i >= 20 { 7 } else { 13 })
        .collect();
    assert_eq!(down(&l5, (5, 5), (2, 2), 0.75).unwrap(), [13; 4]);
    let conf: Vec<f32> = (0..16).map(|i| i as f32 / 16.0).collect();
    let m = cell_mean(&conf, 4, 4, 2, 2).unwrap();
    assert!((m[0] - (0.0 + 1.0 + 4.0 + 5.0) / 64.0).abs() < 1e-6);
    assert!(down(&l, (4, 4), (8, 2), 0.75).is_err());
    // The FDM cell mask: thing cells only, and on the target only confident ones.
    let cells = down(&l, (4, 4), (2, 2), 0.75).unwrap();
    let mask = cell_mask(&cells, None, (1, 4, 4), (2, 2), &things(), 0.968).unwrap();
    assert_eq!(mask, [1.0, 0.0, 0.0, 0.0]);
    let conf = vec![0.5f32; 16];
    let mask = cell_mask(&cells, Some(&conf), (1, 4, 4), (2, 2), &things(), 0.968).unwrap();
    assert_eq!(mask, [0.0; 4]);
    assert_eq!(level_index(-1, 4, "plugin.fdm.layer").unwrap(), 3);
    assert_eq!(level_index(1, 4, "plugin.fdm.layer").unwrap(), 1);
    let err = level_index(-5, 4, "plugin.fdm.layer")
        .unwrap_err()
        .to_string();
    assert!(err.contains("plugin.fdm.layer"), "{err}");
}

#[test]
fn masked_feature_distance_and_its_gradient() {
    let dev = Device::Cpu;
    // (B=1, C=2, h=1, w=2): cell 0 differs by (3, 4), cell 1 by (0, 0).
    let f =
        Var::from_tensor(&Tensor::new(&[[[[3f32, 1.0]], [[4.0, 2.0]]]], &dev).unwrap()).unwrap();
    let f0 = Tensor::new(&[[[[0f32, 1.0]], [[0.0, 2.0]]]], &dev).unwrap();
    let one = Tensor::new(&[[[1f32, 0.0]]], &dev).unwrap();
    let both = Tensor::new(&[[[1f32, 1.0]]], &dev).unwrap();
    let d = masked_feature_distance(f.as_tensor(), &f0, &one)
        .unwrap()
        .unwrap();
    assert!((d.to_scalar::<f32>().unwrap() - 5.0).abs() < 1e-5);
    let d2 = masked_feature_distance(f.as_tensor(), &f0, &both)
        .unwrap()
        .unwrap();
    assert!((d2.to_scalar::<f32>().unwrap() - 2.5).abs() < 1e-5);
    // ∂/∂f of the mean = (f − f0)/‖f − f0‖ / count on kept cells; finite at a zero distance.
    let g = d2.backward().unwrap();
    let g = g
        .get(f.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let expect = [0.3f32, 0.0, 0.4, 0.0];
    for (a, e) in g.iter().zip(expect) {
        assert!((a - e).abs() < 1e-4, "{g:?}");
    }
    // Empty mask: no loss.
    let none = Tensor::zeros((1, 1, 2), DType::F32, &dev).unwrap();
    assert!(masked_feature_distance(f.as_tensor(), &f0, &none)
        .unwrap()
        .is_none());
    assert!(masked_feature_distance(
        f.as_tensor(),
        &f0,
        &Tensor::zeros((1, 2, 2), DType::F32, &dev).unwrap()
    )
    .is_err());
}

#[test]
fn class_balanced_averaging() {
    let dev = Device::Cpu;
    // Pixels: three of class 0 and one of class 1 from the target, one pasted source pixel.
    let label = Tensor::new(&[[[0u32, 0, 0, 1, 2]]], &dev).unwrap();
    let target = Tensor::new(&[[[1f32, 1.0, 1.0, 1.0, 0.0]]], &dev).unwrap();
    let weight = Tensor::new(&[[[1f32, 1.0, 0.5, 1.0, 1.0]]], &dev).unwrap();
    let w = class_balanced_weight(&label, &target, &weight, 19)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    // N_t = 4, |C| = 2: class 0 × 4/(2·3), class 1 × 4/(2·1), the source pixel unchanged.
    let expect = [4.0 / 6.0, 4.0 / 6.0, 0.5 * 4.0 / 6.0, 2.0, 1.0];
    for (a, e) in w.iter().zip(expect) {
        assert!((a - e).abs() < 1e-6, "{w:?}");
    }
    // The mean over all pixels of l·w' is (N_t/N)·mean over classes of the per-class means, plus the source part.
    let l = [0.3f32, 0.6, 0.9, 2.0, 1.5];
    let lw: f32 = l.iter().zip(&w).map(|(a, b)| a * b).sum::<f32>() / 5.0;
    let per_class0 = (0.3 + 0.6 + 0.9 * 0.5) / 3.0;
    let per_class1 = 2.0;
    let expect = 1.5 / 5.0 + 4.0 / 5.0 * (per_class0 + per_class1) / 2.0;
    assert!((lw - expect).abs() < 1e-6, "{lw} vs {expect}");
    // Ignored labels keep their weight and count in no class.
    let label = Tensor::new(&[[[0u32, 255]]], &dev).unwrap();
    let ones = Tensor::ones((1, 1, 2), DType::F32, &dev).unwrap();
    let w = class_balanced_weight(&label, &ones, &ones, 19)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(w, [1.0, 1.0]);
    assert!(class_balanced_weight(
        &label,
        &ones,
        &Tensor::ones((1, 2), DType::F32, &dev).unwrap(),
        19
    )
    .is_err());
}
