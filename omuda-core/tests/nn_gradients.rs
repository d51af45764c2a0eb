//! Gradient and behaviour checks of the trainable layers and the SegFormer
//! model: fused CPU kernels against composed Candle references and finite
//! differences, BatchNorm statistics, stochastic layers, full-model gradient
//! coverage and a short overfit run.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use omuda_core::nn::layers::{
    add_bias, batch_norm_train_composed, depthwise_conv2d, layer_norm, layer_norm_composed,
    max_rel_diff, BatchNorm2d, DropPath, Dropout2d, Linear,
};
use omuda_core::nn::segmentor::build_segmentor;
use omuda_core::nn::{is_buffer, seeded_var_builder, ForwardCtx, ModelConfig, SegModel};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The device under test: `OMUDA_TEST_DEVICE` (the CPU when unset).
fn dev() -> Device {
    omuda_core::device::test_device().unwrap()
}

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &dev()).unwrap()
}

fn var(shape: &[usize]) -> Var {
    Var::from_tensor(&randn(shape)).unwrap()
}

/// Σ y·r with a fixed random `r`: a loss whose gradient wrt y is `r`.
fn weighted_sum(y: &Tensor, r: &Tensor) -> Tensor {
    (y * r).unwrap().sum_all().unwrap()
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f32) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes differ");
    let d = max_rel_diff(a, b).unwrap();
    assert!(d < tol, "{what}: relative difference {d} >= {tol}");
}

/// Backpropagate the same random weighting `r` through `y` and its reference
/// `y_ref`, and compare the gradient of each (name, tensor, tolerance).
/// Returns the gradients of `y` for further checks.
fn assert_same_grads(
    tag: &str,
    y: &Tensor,
    y_ref: &Tensor,
    r: &Tensor,
    wrt: &[(&str, &Tensor, f32)],
) -> GradStore {
    let g = weighted_sum(y, r).backward().unwrap();
    let g_ref = weighted_sum(y_ref, r).backward().unwrap();
    for &(name, t, tol) in wrt {
        let got = g
            .get(t)
            .unwrap_or_else(|| panic!("{tag}: no gradient for {name}"));
        assert_close(
            &format!("{tag} grad {name}"),
            got,
            g_ref.get(t).unwrap(),
            tol,
        );
    }
    g
}

// ---------------------------------------------------------------------------
// Linear and bias
// ---------------------------------------------------------------------------

#[test]
fn linear_matches_reference_any_rank() {
    let mut varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev());
    let lin = Linear::new(6, 4, vb.pp("lin")).unwrap();
    // Non-zero bias so that its gradient path is exercised in the forward value too.
    varmap.set_one("lin.bias", randn(&[4])).unwrap();
    let x = var(&[2, 3, 5, 6]);
    let y = lin.forward(&x).unwrap();
    assert_eq!(y.dims(), &[2, 3, 5, 4]);
    let w = lin.weight();
    let b = lin.bias().unwrap();
    let y_ref = x
        .broadcast_matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(b)
        .unwrap();
    assert_close("linear forward", &y, &y_ref, 1e-5);

    let r = randn(&[2, 3, 5, 4]);
    assert_same_grads(
        "linear",
        &y,
        &y_ref,
        &r,
        &[
            ("x", x.as_tensor(), 1e-5),
            ("weight", w, 1e-5),
            ("bias", b, 1e-5),
        ],
    );

    // Channels-first application equals the token-wise one.
    let xc = var(&[2, 6, 3, 5]);
    let yc = lin.forward_channels_first(&xc).unwrap();
    let yt = lin
        .forward(&xc.permute((0, 2, 3, 1)).unwrap())
        .unwrap()
        .permute((0, 3, 1, 2))
        .unwrap();
    assert_close("linear channels-first", &yc, &yt, 1e-5);
}

#[test]
fn add_bias_matches_broadcast_add() {
    for (shape, axis) in [
        (vec![7usize, 5], 1usize),
        (vec![2, 5, 3, 4], 1),
        (vec![3, 2, 5], 2),
    ] {
        let x = var(&shape);
        let b = var(&[shape[axis]]);
        let y = add_bias(&x, &b, axis).unwrap();
        let mut bshape = vec![1; shape.len()];
        bshape[axis] = shape[axis];
        let y_ref = x.broadcast_add(&b.reshape(bshape).unwrap()).unwrap();
        assert_close("add_bias forward", &y, &y_ref, 1e-6);
        let r = randn(&shape);
        assert_same_grads(
            "add_bias",
            &y,
            &y_ref,
            &r,
            &[("x", &x, 1e-6), ("b", &b, 1e-5)],
        );
    }
    assert!(add_bias(&randn(&[2, 3]), &randn(&[2]), 1).is_err());
}

// ---------------------------------------------------------------------------
// LayerNorm
// ---------------------------------------------------------------------------

#[test]
fn layer_norm_fused_matches_composed() {
    let x = Var::from_tensor(&randn(&[2, 9, 24]).affine(3.0, 1.5).unwrap()).unwrap();
    let w = var(&[24]);
    let b = var(&[24]);
    let y = layer_norm(&x, &w, &b, 1e-6).unwrap();
    let y_ref = layer_norm_composed(&x, &w, &b, 1e-6).unwrap();
    assert_close("layer_norm forward", &y, &y_ref, 1e-5);
    let r = randn(&[2, 9, 24]);
    assert_same_grads(
        "layer_norm",
        &y,
        &y_ref,
        &r,
        &[("x", &x, 1e-4), ("weight", &w, 1e-4), ("bias", &b, 1e-4)],
    );
    // Non-contiguous input (a transposed view) goes through the same op.
    let xt = randn(&[24, 6]).t().unwrap();
    let yt = layer_norm(&xt, &w, &b, 1e-5).unwrap();
    assert_close(
        "layer_norm strided",
        &yt,
        &layer_norm_composed(&xt, &w, &b, 1e-5).unwrap(),
        1e-5,
    );
}

/// Central finite differences (in f64, composed path) against the fused op's gradients.
#[test]
fn layer_norm_finite_differences() {
    let (rows, c, eps) = (3usize, 5usize, 1e-5);
    let xv: Vec<f64> = (0..rows * c)
        .map(|i| ((i * 7 % 11) as f64 - 5.0) * 0.3)
        .collect();
    let wv: Vec<f64> = (0..c).map(|i| 0.5 + 0.2 * i as f64).collect();
    let bv: Vec<f64> = (0..c).map(|i| 0.1 * i as f64 - 0.2).collect();
    let rv: Vec<f64> = (0..rows * c)
        .map(|i| ((i * 5 % 7) as f64 - 3.0) * 0.25)
        .collect();
    let r64 = Tensor::from_vec(rv.clone(), (rows, c), &dev()).unwrap();
    let loss = |x: &[f64], w: &[f64], b: &[f64]| -> f64 {
        let x = Tensor::from_vec(x.to_vec(), (rows, c), &dev()).unwrap();
        let w = Tensor::from_vec(w.to_vec(), c, &dev()).unwrap();
        let b = Tensor::from_vec(b.to_vec(), c, &dev()).unwrap();
        weighted_sum(&layer_norm_composed(&x, &w, &b, eps).unwrap(), &r64)
            .to_scalar::<f64>()
            .unwrap()
    };
    let f32v = |v: &[f64], s: &[usize]| {
        Var::from_tensor(
            &Tensor::from_vec(v.to_vec(), s, &dev())
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap(),
        )
        .unwrap()
    };
    let (x, w, b) = (f32v(&xv, &[rows, c]), f32v(&wv, &[c]), f32v(&bv, &[c]));
    let r32 = r64.to_dtype(DType::F32).unwrap();
    let g = weighted_sum(&layer_norm(&x, &w, &b, eps).unwrap(), &r32)
        .backward()
        .unwrap();
    let h = 1e-6;
    let mut worst = 0f64;
    for which in 0..3 {
        let base = [&xv, &wv, &bv][which];
        let analytic = g
            .get([&x, &w, &b][which])
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for i in 0..base.len() {
            let mut p = [xv.clone(), wv.clone(), bv.clone()];
            let mut m = p.clone();
            p[which][i] += h;
            m[which][i] -= h;
            let fd = (loss(&p[0], &p[1], &p[2]) - loss(&m[0], &m[1], &m[2])) / (2.0 * h);
            let err = (fd - analytic[i] as f64).abs() / (1.0 + fd.abs());
            worst = worst.max(err);
        }
    }
    assert!(
        worst < 1e-4,
        "layer_norm: finite differences disagree by {worst}"
    );
}

// ---------------------------------------------------------------------------
// Depthwise convolution
// ---------------------------------------------------------------------------

#[test]
fn depthwise_matches_grouped_conv() {
    // (B, C, H, W, k, padding, dilation)
    for &(bs, c, h, w, k, p, d) in &[
        (2usize, 3usize, 7usize, 9usize, 3usize, 1usize, 1usize),
        (2, 4, 8, 6, 3, 2, 2),
        (1, 2, 6, 7, 3, 0, 1),
        (2, 3, 9, 8, 5, 1, 1),
        (1, 2, 5, 5, 3, 3, 3),
    ] {
        let x = var(&[bs, c, h, w]);
        let wt = var(&[c, 1, k, k]);
        let y = depthwise_conv2d(&x, &wt, p, d).unwrap();
        let y_ref = x.conv2d(&wt, p, 1, d, c).unwrap();
        let tag = format!("dwconv B{bs} C{c} {h}x{w} k{k} p{p} d{d}");
        assert_close(&format!("{tag} forward"), &y, &y_ref, 1e-5);
        let r = randn(y.dims());
        assert_same_grads(&tag, &y, &y_ref, &r, &[("x", &x, 1e-5), ("w", &wt, 1e-5)]);
    }
    // Kernel larger than the padded input: clear error.
    assert!(depthwise_conv2d(&randn(&[1, 2, 2, 2]), &randn(&[2, 1, 5, 5]), 0, 1).is_err());
}

// ---------------------------------------------------------------------------
// BatchNorm
// ---------------------------------------------------------------------------

#[test]
fn batch_norm_train_matches_composed_and_updates_running_stats() {
    let mut varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev());
    let bn = BatchNorm2d::new(3, vb.pp("bn")).unwrap();
    varmap
        .set_one(
            "bn.weight",
            Tensor::new(&[1.5f32, -0.5, 2.0], &dev()).unwrap(),
        )
        .unwrap();
    varmap
        .set_one(
            "bn.bias",
            Tensor::new(&[0.1f32, 0.2, -0.3], &dev()).unwrap(),
        )
        .unwrap();
    let get = |n: &str| varmap.data().lock().unwrap()[n].as_tensor().clone();
    let (w, b) = (get("bn.weight"), get("bn.bias"));

    let x = Var::from_tensor(&randn(&[2, 3, 4, 5]).affine(2.0, 1.0).unwrap()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let y = bn.forward(&x, &mut ForwardCtx::train(&mut rng)).unwrap();
    let y_ref = batch_norm_train_composed(&x, &w, &b, 1e-5).unwrap();
    assert_close("batch_norm train forward", &y, &y_ref, 1e-5);
    let r = randn(&[2, 3, 4, 5]);
    let g = assert_same_grads(
        "batch_norm",
        &y,
        &y_ref,
        &r,
        &[
            ("x", x.as_tensor(), 1e-4),
            ("weight", &w, 1e-4),
            ("bias", &b, 1e-4),
        ],
    );
    // Running statistics are state: no gradient.
    assert!(g.get(&get("bn.running_mean")).is_none());
    assert_eq!(
        get("bn.num_batches_tracked").to_scalar::<f32>().unwrap(),
        1.0
    );
}

#[test]
fn batch_norm_running_stats_by_hand() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev());
    let bn = BatchNorm2d::new(2, vb.pp("bn")).unwrap();
    // Channel 0 holds 1..=4 (mean 2.5, biased var 1.25, unbiased 5/3),
    // channel 1 holds 10, 10, 10, 14 (mean 11, biased var 3, unbiased 4); B=2, 1x2 maps.
    let x = Tensor::new(
        &[[[[1f32, 2.]], [[10., 10.]]], [[[3., 4.]], [[10., 14.]]]],
        &dev(),
    )
    .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let y = bn.forward(&x, &mut ForwardCtx::train(&mut rng)).unwrap();
    let rm = bn.running_mean().to_vec1::<f32>().unwrap();
    let rv = bn.running_var().to_vec1::<f32>().unwrap();
    // r ← 0.9·r + 0.1·batch, from (0, 1).
    let expect_rm = [0.25f32, 1.1];
    let expect_rv = [0.9 + 0.1 * 5.0 / 3.0, 0.9 + 0.1 * 4.0];
    for i in 0..2 {
        assert!((rm[i] - expect_rm[i]).abs() < 1e-6, "running_mean {rm:?}");
        assert!((rv[i] - expect_rv[i]).abs() < 1e-6, "running_var {rv:?}");
    }
    // Normalised with the biased variance: channel 0, value 1 → (1 − 2.5)/sqrt(1.25 + 1e-5).
    let y0 = y.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
    assert!(
        (y0 - (-1.5 / (1.25f32 + 1e-5).sqrt())).abs() < 1e-5,
        "y0 = {y0}"
    );
    // The stored VarMap entries are the ones updated.
    let stored = varmap.data().lock().unwrap()["bn.running_var"]
        .as_tensor()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(stored, rv);

    // Second step accumulates.
    bn.forward(&x, &mut ForwardCtx::train(&mut rng)).unwrap();
    let rm2 = bn.running_mean().to_vec1::<f32>().unwrap();
    assert!((rm2[0] - (0.9 * 0.25 + 0.25)).abs() < 1e-6, "{rm2:?}");
    assert_eq!(bn.num_batches_tracked().to_scalar::<f32>().unwrap(), 2.0);

    // Eval mode uses the running statistics and leaves them alone.
    let ye = bn.forward(&x, &mut ForwardCtx::eval(&mut rng)).unwrap();
    let rv2 = bn.running_var().to_vec1::<f32>().unwrap();
    let ye0 = ye.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
    assert!(
        (ye0 - (1.0 - rm2[0]) / (rv2[0] + 1e-5).sqrt()).abs() < 1e-5,
        "eval y0 = {ye0}"
    );
    assert_eq!(bn.num_batches_tracked().to_scalar::<f32>().unwrap(), 2.0);

    // A single value per channel cannot be normalised in train mode.
    assert!(bn
        .forward(&randn(&[1, 2, 1, 1]), &mut ForwardCtx::train(&mut rng))
        .is_err());
}

#[test]
fn batch_norm_eval_gradients_reach_affine_params() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev());
    let bn = BatchNorm2d::new(4, vb).unwrap();
    let x = var(&[2, 4, 3, 3]);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let y = bn.forward(&x, &mut ForwardCtx::eval(&mut rng)).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    let d = varmap.data().lock().unwrap();
    assert!(g.get(d["weight"].as_tensor()).is_some());
    assert_eq!(
        g.get(d["bias"].as_tensor())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        vec![18.0; 4]
    );
    assert!(g.get(d["running_var"].as_tensor()).is_none());
}

// ---------------------------------------------------------------------------
// Stochastic layers
// ---------------------------------------------------------------------------

#[test]
fn drop_path_statistics_and_determinism() {
    let dp = DropPath::new(0.3).unwrap();
    let x = Var::from_tensor(&Tensor::ones((4000, 3, 2), DType::F32, &dev()).unwrap()).unwrap();
    let run = |seed: u64| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        dp.forward(&x, &mut ForwardCtx::train(&mut rng)).unwrap()
    };
    let y = run(7);
    let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let keep = 1.0 / 0.7;
    // Whole samples are kept (scaled) or dropped.
    for s in v.chunks(6) {
        assert!(
            s.iter().all(|&a| a == s[0]) && (s[0] == 0.0 || (s[0] - keep).abs() < 1e-6),
            "{s:?}"
        );
    }
    let kept = v.chunks(6).filter(|s| s[0] != 0.0).count() as f64 / 4000.0;
    assert!((kept - 0.7).abs() < 0.03, "kept fraction {kept}");
    let mean = v.iter().map(|&a| a as f64).sum::<f64>() / v.len() as f64;
    assert!((mean - 1.0).abs() < 0.05, "mean {mean}");
    // Same seed, same mask; another seed, another mask.
    assert_eq!(run(7).flatten_all().unwrap().to_vec1::<f32>().unwrap(), v);
    assert_ne!(run(8).flatten_all().unwrap().to_vec1::<f32>().unwrap(), v);
    // Gradient goes through the mask.
    let g = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(
        g.get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        v
    );
    // Inactive without `stochastic`.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let ye = dp.forward(&x, &mut ForwardCtx::teacher(&mut rng)).unwrap();
    assert_eq!(ye.sum_all().unwrap().to_scalar::<f32>().unwrap(), 24000.0);
    assert!(DropPath::new(1.0).is_err());
}

#[test]
fn dropout2d_statistics_and_determinism() {
    let dr = Dropout2d::new(0.25).unwrap();
    let x = Tensor::ones((50, 80, 2, 3), DType::F32, &dev()).unwrap();
    let run = |seed: u64| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        dr.forward(&x, &mut ForwardCtx::train(&mut rng))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let v = run(3);
    for ch in v.chunks(6) {
        assert!(
            ch.iter().all(|&a| a == ch[0]) && (ch[0] == 0.0 || (ch[0] - 1.0 / 0.75).abs() < 1e-6)
        );
    }
    let kept = v.chunks(6).filter(|s| s[0] != 0.0).count() as f64 / 4000.0;
    assert!((kept - 0.75).abs() < 0.03, "kept fraction {kept}");
    assert_eq!(run(3), v);
    assert_ne!(run(4), v);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let ye = dr.forward(&x, &mut ForwardCtx::eval(&mut rng)).unwrap();
    assert_eq!(ye.sum_all().unwrap().to_scalar::<f32>().unwrap(), 24000.0);
}

// ---------------------------------------------------------------------------
// Full model
// ---------------------------------------------------------------------------

fn build(name: &str, num_classes: usize) -> (VarMap, Box<dyn SegModel>) {
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, 0, DType::F32, &dev());
    let cfg = ModelConfig {
        name: name.into(),
        num_classes,
        ..ModelConfig::default()
    };
    let model = build_segmentor(&cfg, vb).unwrap();
    (varmap, model)
}

fn param_count(varmap: &VarMap) -> usize {
    varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _)| !is_buffer(n))
        .map(|(_, v)| v.elem_count())
        .sum()
}

#[test]
fn segformer_tiny_shapes_and_every_parameter_gets_a_gradient() {
    let (varmap, model) = build("segformer_tiny", 19);
    let x = randn(&[2, 3, 64, 128]);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut ctx = ForwardCtx::train(&mut rng);
    let feats = model.features(&x, &mut ctx).unwrap();
    let shapes: Vec<_> = feats.iter().map(|f| f.dims().to_vec()).collect();
    assert_eq!(
        shapes,
        vec![
            vec![2, 16, 16, 32],
            vec![2, 32, 8, 16],
            vec![2, 64, 4, 8],
            vec![2, 128, 2, 4]
        ]
    );
    let logits = model.decode(&feats, &mut ctx).unwrap();
    assert_eq!(logits.dims(), &[2, 19, 16, 32]);
    assert_eq!(model.num_classes(), 19);

    let r = randn(logits.dims());
    let grads = weighted_sum(&logits, &r).backward().unwrap();
    let data = varmap.data().lock().unwrap();
    let mut missing = Vec::new();
    let mut checked = 0;
    for (name, v) in data.iter().filter(|(n, _)| !is_buffer(n)) {
        let norm = grads
            .get(v.as_tensor())
            .map(|g| {
                g.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .unwrap_or(0.0);
        if !(norm > 0.0 && norm.is_finite()) {
            missing.push(format!("{name} ({norm})"));
        }
        checked += 1;
    }
    assert!(
        missing.is_empty(),
        "parameters without a gradient: {missing:?}"
    );
    assert!(checked > 50, "only {checked} parameters checked");
    assert!(data.contains_key("decode_head.batch_norm.running_mean"));
}

#[test]
fn build_segmentor_rejects_unknown_names() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev());
    let cfg = ModelConfig {
        name: "deeplab".into(),
        ..ModelConfig::default()
    };
    let err = build_segmentor(&cfg, vb)
        .err()
        .expect("unknown name accepted")
        .to_string();
    assert!(
        err.contains("segformer_mitb0") && err.contains("segformer_tiny"),
        "{err}"
    );
}

#[test]
fn parameter_counts() {
    let (vm, _) = build("segformer_mitb0", 19);
    let b0 = param_count(&vm);
    let enc: usize = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _)| n.starts_with("segformer.") && !is_buffer(n))
        .map(|(_, v)| v.elem_count())
        .sum();
    let (vt, _) = build("segformer_tiny", 19);
    let tiny = param_count(&vt);
    println!("segformer_mitb0 (19 classes): {b0} parameters ({enc} encoder, {} head); segformer_tiny: {tiny}", b0 - enc);
    assert!(
        (3_600_000..3_800_000).contains(&b0),
        "b0 parameter count {b0}"
    );
    assert!(
        (3_310_000..3_330_000).contains(&enc),
        "b0 encoder parameter count {enc}"
    );
    assert!(
        (400_000..500_000).contains(&tiny),
        "tiny parameter count {tiny}"
    );
}

/// Cross-entropy of (B, K, h, w) logits against (B, h, w) labels.
fn seg_ce(logits: &Tensor, labels: &Tensor) -> Tensor {
    let (b, k, h, w) = logits.dims4().unwrap();
    let flat = logits
        .permute((0, 2, 3, 1))
        .unwrap()
        .reshape((b * h * w, k))
        .unwrap();
    candle_nn::loss::cross_entropy(&flat, &labels.flatten_all().unwrap()).unwrap()
}

#[test]
fn segformer_tiny_overfits_one_batch() {
    let (varmap, model) = build("segformer_tiny", 5);
    let x = randn(&[2, 3, 64, 64]);
    // Labels: blocky class layout at the logits' resolution (16x16).
    let labels: Vec<u32> = (0..2 * 16 * 16)
        .map(|i| (((i / 16) % 16) / 4 + (i % 16) / 8 + i / 256) as u32 % 5)
        .collect();
    let labels = Tensor::from_vec(labels, (2, 16, 16), &dev()).unwrap();
    let params: Vec<Var> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _)| !is_buffer(n))
        .map(|(_, v)| v.clone())
        .collect();
    let cfg = candle_nn::ParamsAdamW {
        lr: 2e-3,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = candle_nn::AdamW::new(params, cfg).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut losses = Vec::new();
    for _ in 0..25 {
        let logits = model.forward(&x, &mut ForwardCtx::train(&mut rng)).unwrap();
        let loss = seg_ce(&logits, &labels);
        losses.push(loss.to_scalar::<f32>().unwrap());
        opt.backward_step(&loss).unwrap();
    }
    println!("overfit losses: {losses:?}");
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(
        last < 0.5 * first,
        "loss did not drop enough: {first} -> {last}"
    );
}

#[test]
fn softmax_fused_matches_composed() {
    use omuda_core::nn::layers::softmax_last_dim;
    let x = Var::from_tensor(&randn(&[2, 3, 7, 64]).affine(5.0, 0.0).unwrap()).unwrap();
    let y = softmax_last_dim(&x).unwrap();
    let y_ref = candle_nn::ops::softmax(&x, D::Minus1).unwrap();
    assert_close("softmax forward", &y, &y_ref, 1e-5);
    let r = randn(x.dims());
    let g = assert_same_grads("softmax", &y, &y_ref, &r, &[("x", &x, 1e-4)]);
    let n = g
        .get(&x)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(n > 0.0);
}

#[test]
fn conv2d_im2col_matches_candle_conv() {
    use omuda_core::nn::layers::{conv2d, ConvCfg};
    // (B, C, O, H, W, k, stride, padding, dilation)
    for &(bs, c, o, h, w, k, s, p, d) in &[
        (
            2usize, 3usize, 4usize, 17usize, 14usize, 7usize, 4usize, 3usize, 1usize,
        ),
        (2, 4, 5, 9, 8, 3, 2, 1, 1),
        (1, 3, 2, 16, 8, 8, 8, 0, 1),
        (2, 2, 3, 7, 9, 3, 1, 2, 2),
        (1, 2, 2, 5, 6, 3, 1, 0, 1),
    ] {
        let x = var(&[bs, c, h, w]);
        let wt = var(&[o, c, k, k]);
        let cfg = ConvCfg {
            stride: s,
            padding: p,
            dilation: d,
        };
        let y = conv2d(&x, &wt, cfg).unwrap();
        // Candle's conv2d backward returns a wrongly sized input gradient when
        // (n + 2p − span) is not a multiple of the stride; the reference therefore
        // zero-extends the input to a multiple and crops the extra output.
        let span = d * (k - 1) + 1;
        let extra = |n: usize| (s - (n + 2 * p - span) % s) % s;
        let xe = x
            .pad_with_zeros(2, 0, extra(h))
            .unwrap()
            .pad_with_zeros(3, 0, extra(w))
            .unwrap();
        let (ho, wo) = ((h + 2 * p - span) / s + 1, (w + 2 * p - span) / s + 1);
        let y_ref = xe
            .conv2d(&wt, p, s, d, 1)
            .unwrap()
            .narrow(2, 0, ho)
            .unwrap()
            .narrow(3, 0, wo)
            .unwrap();
        let tag = format!("conv2d {h}x{w} k{k} s{s} p{p} d{d}");
        assert_close(&format!("{tag} forward"), &y, &y_ref, 1e-5);
        let r = randn(y.dims());
        assert_same_grads(&tag, &y, &y_ref, &r, &[("x", &x, 1e-5), ("w", &wt, 1e-5)]);
    }
    // A constant input (an image) gets no gradient, the weight does.
    let img = randn(&[1, 3, 8, 8]);
    let wt = var(&[2, 3, 3, 3]);
    let y = conv2d(
        &img,
        &wt,
        ConvCfg {
            stride: 2,
            padding: 1,
            dilation: 1,
        },
    )
    .unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    assert!(g.get(&img).is_none() && g.get(&wt).is_some());
}

/// Input sizes that the strided convolutions do not divide evenly still train
/// (Candle's own conv2d backward mis-sizes the input gradient there).
#[test]
fn segformer_tiny_backward_on_odd_input_size() {
    let (_vm, model) = build("segformer_tiny", 4);
    let x = Var::from_tensor(&randn(&[2, 3, 70, 50])).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let logits = model.forward(&x, &mut ForwardCtx::train(&mut rng)).unwrap();
    assert_eq!(logits.dims(), &[2, 4, 18, 13]);
    let g = logits
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(g.get(&x).unwrap().dims(), &[2, 3, 70, 50]);
}

#[test]
fn gelu_and_relu_fused_match_candle() {
    use omuda_core::nn::layers::{gelu, relu};
    // Include the far tails and values around zero.
    let base = randn(&[3, 1000]).affine(4.0, 0.0).unwrap();
    // (Exact zeros are left out: there Candle's relu passes the gradient, PyTorch's
    // and ours do not; checked separately below.)
    let extra = Tensor::new(&[-12f32, -8.0, -5.0, -1e-3, 1e-3, 5.0, 8.0, 12.0], &dev()).unwrap();
    let x =
        Var::from_tensor(&Tensor::cat(&[base.flatten_all().unwrap(), extra], 0).unwrap()).unwrap();
    let r = randn(x.dims());
    for (name, y, y_ref) in [
        ("gelu", gelu(&x).unwrap(), x.gelu_erf().unwrap()),
        ("relu", relu(&x).unwrap(), x.relu().unwrap()),
    ] {
        let d = (&y - &y_ref)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 2e-6, "{name} forward differs by {d}");
        let g = weighted_sum(&y, &r).backward().unwrap();
        let g_ref = weighted_sum(&y_ref, &r).backward().unwrap();
        let gd = (g.get(&x).unwrap() - g_ref.get(&x).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        let gd = gd.to_scalar::<f32>().unwrap();
        assert!(gd < 1e-5, "{name} gradient differs by {gd}");
    }
    let z = Var::from_tensor(&Tensor::zeros(3, DType::F32, &dev()).unwrap()).unwrap();
    let g = relu(&z).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(g.get(&z).unwrap().to_vec1::<f32>().unwrap(), vec![0.0; 3]);
}

/// The reordered head equals the literal HF computation, values and gradients.
#[test]
fn segformer_head_fused_order_matches_literal_hf_order() {
    use omuda_core::nn::segformer_head::SegformerHead;
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, 5, DType::F32, &dev());
    let head = SegformerHead::new(&[8, 16, 24, 40], 32, 5, 0.1, vb.pp("decode_head")).unwrap();
    // Non-zero biases so their path is exercised.
    for i in 0..4 {
        let name = format!("decode_head.linear_c.{i}.proj.bias");
        let b = varmap.data().lock().unwrap()[&name].clone();
        b.set(&randn(&[32])).unwrap();
    }
    let feats: Vec<Var> = [(8, 16, 24), (16, 8, 12), (24, 4, 6), (40, 2, 3)]
        .iter()
        .map(|&(c, h, w)| var(&[2, c, h, w]))
        .collect();
    let ft: Vec<Tensor> = feats.iter().map(|v| v.as_tensor().clone()).collect();
    // Train-mode BatchNorm removes any per-channel constant, so the linear_c
    // biases get an (analytically) zero gradient there; BatchNorm runs on its
    // running statistics here so that every parameter has a gradient to compare.
    // Dropout2d stays active, with the same seed (same mask) in both orders.
    let run = |fused: bool| {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut ctx = ForwardCtx {
            stochastic: true,
            bn_train: false,
            rng: &mut rng,
        };
        if fused {
            head.forward(&ft, &mut ctx).unwrap()
        } else {
            head.forward_unfused(&ft, &mut ctx).unwrap()
        }
    };
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let yt = head.forward(&ft, &mut ForwardCtx::train(&mut rng)).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let yt_ref = head
        .forward_unfused(&ft, &mut ForwardCtx::train(&mut rng))
        .unwrap();
    assert_close("head forward (train-mode BatchNorm)", &yt, &yt_ref, 1e-4);
    let (y, y_ref) = (run(true), run(false));
    assert_eq!(y.dims(), &[2, 5, 16, 24]);
    assert_close("head forward", &y, &y_ref, 1e-4);
    let r = randn(y.dims());
    let g = weighted_sum(&y, &r).backward().unwrap();
    let g_ref = weighted_sum(&y_ref, &r).backward().unwrap();
    for (i, f) in feats.iter().enumerate() {
        assert_close(
            &format!("head grad feature {i}"),
            g.get(f).unwrap(),
            g_ref.get(f).unwrap(),
            1e-3,
        );
    }
    for (name, v) in varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _)| !is_buffer(n))
    {
        let got = g
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_close(
            &format!("head grad {name}"),
            got,
            g_ref.get(v.as_tensor()).unwrap(),
            1e-3,
        );
    }
}

/// Channels-last convolutions against the NCHW ones (values and gradients).
#[test]
fn channels_last_convs_match_nchw() {
    use omuda_core::nn::layers::{conv2d, conv2d_nhwc, depthwise_conv2d_nhwc, ConvCfg};
    let nhwc = |t: &Tensor| t.permute((0, 2, 3, 1)).unwrap();
    // Dense: (B, C, O, H, W, k, stride, padding, dilation)
    for &(bs, c, o, h, w, k, s, p, d) in &[
        (
            2usize, 3usize, 4usize, 17usize, 14usize, 7usize, 4usize, 3usize, 1usize,
        ),
        (2, 4, 5, 9, 8, 3, 2, 1, 1),
        (1, 3, 2, 16, 9, 8, 8, 0, 1),
        (2, 2, 3, 7, 9, 3, 1, 2, 2),
    ] {
        let x = var(&[bs, c, h, w]);
        let wt = var(&[o, c, k, k]);
        let cfg = ConvCfg {
            stride: s,
            padding: p,
            dilation: d,
        };
        let y = conv2d_nhwc(&nhwc(&x), &wt, cfg).unwrap();
        let y_ref = nhwc(&conv2d(&x, &wt, cfg).unwrap());
        let tag = format!("conv2d_nhwc {h}x{w} k{k} s{s} p{p} d{d}");
        assert_close(&format!("{tag} forward"), &y, &y_ref, 1e-5);
        let r = randn(y.dims());
        assert_same_grads(&tag, &y, &y_ref, &r, &[("x", &x, 1e-5), ("w", &wt, 1e-5)]);
    }
    // Depthwise: (B, C, H, W, k, padding, dilation)
    for &(bs, c, h, w, k, p, d) in &[
        (2usize, 5usize, 7usize, 9usize, 3usize, 1usize, 1usize),
        (2, 4, 8, 6, 3, 2, 2),
        (1, 3, 6, 7, 3, 0, 1),
        (2, 3, 9, 8, 5, 1, 1),
        (1, 2, 5, 5, 3, 3, 3),
    ] {
        let x = var(&[bs, c, h, w]);
        let wt = var(&[c, 1, k, k]);
        let y = depthwise_conv2d_nhwc(&nhwc(&x), &wt, p, d).unwrap();
        let y_ref = nhwc(&x.conv2d(&wt, p, 1, d, c).unwrap());
        let tag = format!("dwconv_nhwc C{c} {h}x{w} k{k} p{p} d{d}");
        assert_close(&format!("{tag} forward"), &y, &y_ref, 1e-5);
        let r = randn(y.dims());
        assert_same_grads(&tag, &y, &y_ref, &r, &[("x", &x, 1e-5), ("w", &wt, 1e-5)]);
    }
}

#[test]
fn exp_f32_is_accurate() {
    use omuda_core::nn::layers::exp_f32;
    let mut worst = 0f64;
    let mut x = -87.0f32;
    while x < 88.0 {
        let want = (x as f64).exp();
        let got = exp_f32(x) as f64;
        worst = worst.max(((got - want) / want).abs());
        x += 0.0137;
    }
    assert!(worst < 3e-7, "exp_f32 relative error {worst}");
    assert_eq!(exp_f32(-100.0), 0.0);
    assert_eq!(exp_f32(0.0), 1.0);
    assert!(exp_f32(f32::NAN).is_nan());
}
