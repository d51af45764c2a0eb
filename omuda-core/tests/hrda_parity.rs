//! HRDA multi-resolution maths against PyTorch reference values
//! (`tests/fixtures/hrda.safetensors`, written by `tests/fixtures/gen_hrda.py`)
//! and golden values of `lhoyer/MIC seg/mmseg/models/segmentors/hrda_encoder_decoder.py`
//! (`get_crop_bbox`, `extract_slide_feat`, `HRDAEncoderDecoder.encode_decode`),
//! `seg/mmseg/models/decode_heads/hrda_head.py` (`HRDAHead.forward`, `decode_hr`, `losses`)
//! and `seg/mmseg/models/segmentors/encoder_decoder.py::EncoderDecoder.slide_inference`,
//! plus the objective on a tiny network (gradients, outer sliding window).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use omuda_core::eval::inference::window_starts;
use omuda_core::nn::{build_segmentor, seeded_var_builder, ForwardCtx, ModelConfig, SegModel};
use omuda_core::ops::CeReduction;
use omuda_core::train::multires::{
    crop_box_from_draws, crop_draw_count, fuse, hrda_loss, merge_windows, random_crop_box, CropBox,
    HrdaConfig, MultiResolution,
};
use omuda_core::train::objective::SegObjective;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/hrda.safetensors"
);
/// f32 computation against float64 references: |a − b| ≤ TOL·max(1, |b|).
const TOL: f64 = 2e-5;

struct Fixtures(HashMap<String, Tensor>);

impl Fixtures {
    fn load() -> Self {
        let map = candle_core::safetensors::load(FIXTURES, &Device::Cpu)
            .unwrap_or_else(|e| panic!("cannot load {FIXTURES}: {e} (run gen_hrda.py)"));
        Self(map)
    }
    fn get(&self, key: &str) -> Tensor {
        self.0
            .get(key)
            .unwrap_or_else(|| panic!("fixture {key} missing from {FIXTURES}"))
            .clone()
    }
    fn f32(&self, key: &str) -> Tensor {
        self.get(key).to_dtype(DType::F32).unwrap()
    }
    fn boxed(&self, key: &str) -> CropBox {
        let v = self.get(key).to_vec1::<i64>().unwrap();
        CropBox {
            y1: v[0] as usize,
            y2: v[1] as usize,
            x1: v[2] as usize,
            x2: v[3] as usize,
        }
    }
}

fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shape");
    let a = a
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let b = b
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let err = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f64::max);
    assert!(err <= TOL, "{what}: max err {err:.3e} > {TOL:.0e}");
}

#[test]
fn crop_boxes_follow_get_crop_bbox() {
    let f = Fixtures::load();
    let rows = f.get("crop.cases").to_vec2::<i64>().unwrap();
    assert!(!rows.is_empty());
    for r in rows {
        let u = |i: usize| r[i] as usize;
        let (h, w, ch, cw, div) = (u(0), u(1), u(2), u(3), u(4));
        assert_eq!(crop_draw_count(h, ch, div), u(7), "{r:?}");
        assert_eq!(crop_draw_count(w, cw, div), u(8), "{r:?}");
        let b = crop_box_from_draws((h, w), [ch, cw], div, (u(5), u(6))).unwrap();
        assert_eq!(
            (b.y1, b.x1, b.height(), b.width()),
            (u(9), u(10), ch, cw),
            "{r:?}"
        );
    }
    // 1024² crop, 512 detail crop, grid 8: 64 positions, the last at 504;
    // the detail crop never touches the bottom/right border.
    assert_eq!(crop_draw_count(1024, 512, 8), 64);
    let last = crop_box_from_draws((1024, 1024), [512, 512], 8, (63, 63)).unwrap();
    assert_eq!((last.y1, last.x1, last.y2, last.x2), (504, 504, 1016, 1016));
    assert!(crop_box_from_draws((1024, 1024), [512, 512], 8, (64, 0)).is_err());
    let err = crop_box_from_draws((256, 256), [512, 512], 8, (0, 0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("hr_crop"), "{err}");
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (mut min, mut max) = (usize::MAX, 0);
    for _ in 0..2000 {
        let b = random_crop_box((1024, 1024), [512, 512], 8, &mut rng).unwrap();
        for o in [b.y1, b.x1] {
            assert_eq!(o % 8, 0);
            min = min.min(o);
            max = max.max(o);
        }
        assert!(b.y2 < 1024 && b.x2 < 1024);
    }
    assert_eq!((min, max), (0, 504));
}

#[test]
fn window_grids_are_the_golden_boxes() {
    // `extract_slide_feat`: HR sub-windows of a 1024² crop, crop 512, stride 256 →
    // {0, 256, 512}².
    assert_eq!(window_starts(1024, 512, 256), vec![0, 256, 512]);
    assert_eq!(HrdaConfig::default().hr_stride(), [256, 256]);
    // `EncoderDecoder.slide_inference`: 1024×2048 with crop 1024 and stride 512 → three
    // windows.
    let c = HrdaConfig::default();
    let mut boxes = Vec::new();
    for y in window_starts(1024, c.test_crop[0], c.test_stride[0]) {
        for x in window_starts(2048, c.test_crop[1], c.test_stride[1]) {
            boxes.push((y, y + 1024, x, x + 1024));
        }
    }
    assert_eq!(
        boxes,
        vec![
            (0, 1024, 0, 1024),
            (0, 1024, 512, 1536),
            (0, 1024, 1024, 2048)
        ]
    );
}

#[test]
fn hr_window_merge_matches_decode_hr() {
    let f = Fixtures::load();
    let logits = f.f32("merge.logits");
    let mut boxes = Vec::new();
    for y in window_starts(64, 32, 16) {
        for x in window_starts(64, 32, 16) {
            boxes.push(
                CropBox {
                    y1: y,
                    y2: y + 32,
                    x1: x,
                    x2: x + 32,
                }
                .scaled_down(4)
                .unwrap(),
            );
        }
    }
    assert_eq!(boxes.len(), 9);
    let merged = merge_windows(&logits, 2, &boxes, (16, 16)).unwrap();
    assert_close(&merged, &f.get("merge.merged"), "merge");
    // Too few logits, or windows that leave pixels uncovered, are errors.
    assert!(merge_windows(&logits.narrow(0, 0, 4).unwrap(), 2, &boxes, (16, 16)).is_err());
    assert!(merge_windows(&logits.narrow(0, 0, 2).unwrap(), 2, &boxes[..1], (16, 16)).is_err());
}

fn boxes_of(b: &CropBox) -> (CropBox, CropBox) {
    // Head output stride 4, context scale 0.5: attention box /8, detail box /4.
    (b.scaled_down(8).unwrap(), b.scaled_down(4).unwrap())
}

#[test]
fn training_fusion_matches_the_reference() {
    let f = Fixtures::load();
    for case in ["classwise", "single", "origin"] {
        let p = format!("fuse.{case}.");
        let b = f.boxed(&(p.clone() + "box"));
        let out = fuse(
            &f.f32(&(p.clone() + "lr")),
            &f.f32(&(p.clone() + "hr")),
            &f.f32(&(p.clone() + "att")),
            Some(boxes_of(&b)),
            (16, 16),
        )
        .unwrap();
        assert_close(
            &out.fused,
            &f.get(&(p.clone() + "fused")),
            &format!("{case} fused"),
        );
        assert_close(
            &out.lr_weighted,
            &f.get(&(p.clone() + "lr_w")),
            &format!("{case} lr_w"),
        );
    }
}

#[test]
fn inference_fusion_matches_the_reference() {
    let f = Fixtures::load();
    let out = fuse(
        &f.f32("infer.lr"),
        &f.f32("infer.hr"),
        &f.f32("infer.att"),
        None,
        (16, 16),
    )
    .unwrap();
    assert_close(&out.fused, &f.get("infer.fused"), "inference fused");
}

#[test]
fn hrda_loss_and_gradients_match_the_reference() {
    let f = Fixtures::load();
    for case in ["classwise", "single", "origin"] {
        let p = format!("fuse.{case}.");
        let b = f.boxed(&(p.clone() + "box"));
        let label = f.get(&(p.clone() + "label"));
        let weight = f.f32(&(p.clone() + "weight"));
        for (hw, lw) in [(1usize, 0usize), (1, 2), (0, 0)] {
            let lr = Var::from_tensor(&f.f32(&(p.clone() + "lr"))).unwrap();
            let hr = Var::from_tensor(&f.f32(&(p.clone() + "hr"))).unwrap();
            let att = Var::from_tensor(&f.f32(&(p.clone() + "att"))).unwrap();
            let out = fuse(
                lr.as_tensor(),
                hr.as_tensor(),
                att.as_tensor(),
                Some(boxes_of(&b)),
                (16, 16),
            )
            .unwrap();
            let (hwf, lwf) = (hw as f64 / 10.0, lw as f64 / 10.0);
            let loss = hrda_loss(
                &out.fused,
                hr.as_tensor(),
                &out.lr_weighted,
                &b,
                &label,
                Some(&weight),
                (hwf, lwf),
                1.0,
                CeReduction::MeanAll,
            )
            .unwrap();
            let s = format!("_{hw}_{lw}");
            let what = format!("{case} λ_hr {hwf} λ_lr {lwf}");
            assert_close(
                &loss.reshape(1).unwrap(),
                &f.get(&(p.clone() + "loss" + &s)),
                &format!("{what} loss"),
            );
            let g = loss.backward().unwrap();
            assert_close(
                g.get(lr.as_tensor()).unwrap(),
                &f.get(&(p.clone() + "dlr" + &s)),
                &format!("{what} d lr"),
            );
            assert_close(
                g.get(hr.as_tensor()).unwrap(),
                &f.get(&(p.clone() + "dhr" + &s)),
                &format!("{what} d hr"),
            );
            assert_close(
                g.get(att.as_tensor()).unwrap(),
                &f.get(&(p.clone() + "datt" + &s)),
                &format!("{what} d att"),
            );
        }
    }
}

fn tiny_model(vars: &VarMap, attention: bool) -> Box<dyn SegModel> {
    let cfg = ModelConfig {
        name: "daformer_tiny".into(),
        num_classes: 4,
        scale_attention: attention,
        ..ModelConfig::default()
    };
    build_segmentor(&cfg, seeded_var_builder(vars, 3, DType::F32, &Device::Cpu)).unwrap()
}

/// A random 128×256 batch of 2 with a striped 4-class label: the 64×128
/// context image is large enough for every MiT attention to see more than one
/// key (otherwise query/key get no gradient).
fn crop_batch() -> (Tensor, Tensor) {
    let x = Tensor::randn(0f32, 1.0, (2, 3, 128, 256), &Device::Cpu).unwrap();
    let y = Tensor::from_vec(
        (0..2 * 128 * 256)
            .map(|i| ((i / 7) % 4) as u32)
            .collect::<Vec<_>>(),
        (2, 128, 256),
        &Device::Cpu,
    )
    .unwrap();
    (x, y)
}

fn tiny_hrda() -> MultiResolution {
    MultiResolution::new(HrdaConfig {
        hr_crop: [32, 32],
        test_crop: [64, 64],
        test_stride: [32, 32],
        ..HrdaConfig::default()
    })
    .unwrap()
}

#[test]
fn scale_attention_head_has_hrda_names_and_only_when_asked() {
    let plain = VarMap::new();
    let _ = tiny_model(&plain, false);
    let with = VarMap::new();
    let _ = tiny_model(&with, true);
    let names = |v: &VarMap| v.data().lock().unwrap().keys().cloned().collect::<Vec<_>>();
    assert!(names(&plain).iter().all(|n| !n.contains("scale_attention")));
    let extra: Vec<String> = names(&with)
        .into_iter()
        .filter(|n| n.starts_with("decode_head.scale_attention."))
        .collect();
    for want in [
        "embed_layers.0.proj.weight",
        "fuse_layer.conv.weight",
        "fuse_layer.bn.running_var",
        "conv_seg.weight",
        "conv_seg.bias",
    ] {
        assert!(
            extra.iter().any(|n| n.ends_with(want)),
            "missing decode_head.scale_attention.{want} in {extra:?}"
        );
    }
    assert!(extra.iter().all(|n| !n.contains("aspp")), "{extra:?}");
    // Everything else is unchanged.
    assert_eq!(names(&with).len() - extra.len(), names(&plain).len());
    // Only DAFormer models take the attention head.
    let cfg = ModelConfig {
        name: "segformer_tiny".into(),
        scale_attention: true,
        ..ModelConfig::default()
    };
    let v = VarMap::new();
    let err = build_segmentor(&cfg, seeded_var_builder(&v, 0, DType::F32, &Device::Cpu))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("scale_attention"), "{err}");
}

/// MIC's `mask_lambda` scales HRDA's fused term only: the loss is linear in
/// the main weight, and at weight 0 the detail term (0.1·CE) remains.
#[test]
fn main_weight_scales_the_fused_term_only() {
    let vars = VarMap::new();
    let model = tiny_model(&vars, true);
    let obj = tiny_hrda();
    let (x, y) = crop_batch();
    let at = |main_weight: f64| -> f64 {
        // The same generator state each time: the same detail crop and dropout.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut ctx = ForwardCtx::train(&mut rng);
        let (loss, _) = obj
            .loss_with_main_weight(model.as_ref(), &x, &y, None, &mut ctx, main_weight)
            .unwrap();
        loss.to_scalar::<f32>().unwrap() as f64
    };
    let plain = {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        obj.loss(
            model.as_ref(),
            &x,
            &y,
            None,
            &mut ForwardCtx::train(&mut rng),
        )
        .unwrap()
        .0
        .to_scalar::<f32>()
        .unwrap() as f64
    };
    let (l0, l1, l2) = (at(0.0), at(1.0), at(2.0));
    assert_eq!(l1, plain, "weight 1 is the plain loss");
    assert!(
        l0 > 0.0 && l0 < l1,
        "the detail term remains at weight 0: {l0} vs {l1}"
    );
    assert!(
        ((l2 - l1) - (l1 - l0)).abs() < 1e-5 * l1,
        "linear in the weight: {l0} {l1} {l2}"
    );
}

#[test]
fn loss_reaches_attention_head_and_shared_encoder() {
    let vars = VarMap::new();
    let model = tiny_model(&vars, true);
    let obj = tiny_hrda();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (x, y) = crop_batch();
    let (loss, feats) = obj
        .loss(
            model.as_ref(),
            &x,
            &y,
            None,
            &mut ForwardCtx::train(&mut rng),
        )
        .unwrap();
    // The returned features are the context (0.5×) features.
    assert_eq!(feats[0].dims()[2..], [16, 32]);
    assert_eq!(obj.feature_input(&x).unwrap().dims(), &[2, 3, 64, 128]);
    let v = loss.to_scalar::<f32>().unwrap();
    assert!(v.is_finite() && v > 0.0, "{v}");
    let grads = loss.backward().unwrap();
    let data = vars.data().lock().unwrap();
    let mut missing = Vec::new();
    for (name, var) in data.iter() {
        if omuda_core::nn::is_buffer(name) {
            continue;
        }
        match grads.get(var.as_tensor()) {
            Some(g)
                if g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0 => {}
            _ => missing.push(name.clone()),
        }
    }
    assert!(
        missing.is_empty(),
        "parameters without gradient: {missing:?}"
    );
    assert!(data
        .keys()
        .any(|n| n.starts_with("decode_head.scale_attention.")));
}

#[test]
fn loss_without_attention_head_or_with_a_bad_crop_is_an_error() {
    let vars = VarMap::new();
    let model = tiny_model(&vars, false);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let x = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu).unwrap();
    let y = Tensor::zeros((1, 64, 64), DType::U32, &Device::Cpu).unwrap();
    let err = tiny_hrda()
        .loss(
            model.as_ref(),
            &x,
            &y,
            None,
            &mut ForwardCtx::train(&mut rng),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("scale_attention"), "{err}");
    let vars = VarMap::new();
    let model = tiny_model(&vars, true);
    let big = MultiResolution::new(HrdaConfig {
        hr_crop: [96, 96],
        ..HrdaConfig::default()
    })
    .unwrap();
    let err = big
        .loss(
            model.as_ref(),
            &x,
            &y,
            None,
            &mut ForwardCtx::train(&mut rng),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("hr_crop"), "{err}");
    assert!(MultiResolution::new(HrdaConfig {
        hr_loss_weight: 0.8,
        lr_loss_weight: 0.5,
        ..HrdaConfig::default()
    })
    .is_err());
}

#[test]
fn outer_sliding_window_runs_hrda_inference_per_window() {
    let vars = VarMap::new();
    let model = tiny_model(&vars, true);
    let obj = tiny_hrda();
    let x = Tensor::randn(0f32, 1.0, (1, 3, 64, 128), &Device::Cpu).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let wide = obj
        .logits(model.as_ref(), &x, &mut ForwardCtx::eval(&mut rng))
        .unwrap();
    assert_eq!(wide.dims(), &[1, 4, 64, 128]);
    // Windows 64×64 at x ∈ {0, 32, 64}: columns 0..32 come from the first
    // window only, so they equal the whole-window HRDA inference there.
    let left = x.narrow(3, 0, 64).unwrap();
    let alone = obj
        .logits(model.as_ref(), &left, &mut ForwardCtx::eval(&mut rng))
        .unwrap();
    let a = wide.narrow(3, 0, 32).unwrap();
    let b = alone.narrow(3, 0, 32).unwrap();
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-5, "{d}");
    // Columns 32..64 are the mean of two windows: not the first window alone.
    let a = wide.narrow(3, 32, 32).unwrap();
    let b = alone.narrow(3, 32, 32).unwrap();
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d > 1e-6, "{d}");
}
