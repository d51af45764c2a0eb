//! The bf16/f16 autocast student (`omuda_core::nn::autocast`): the cast
//! network tracks the f32 one, its gradients land on the f32 master weights,
//! and BatchNorm statistics update the masters.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use omuda_core::nn::autocast::{Autocast, AutocastModel};
use omuda_core::nn::{
    build_segmentor, is_buffer, seeded_var_builder, ForwardCtx, ModelConfig, SegModel,
};
use omuda_core::ops::{cross_entropy, resize_bilinear, CeReduction};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn dev() -> Device {
    omuda_core::device::test_device().unwrap()
}

/// A tiny DAFormer (its head has BatchNorm) with seeded weights.
fn student() -> (ModelConfig, VarMap, Box<dyn SegModel>) {
    let cfg = ModelConfig {
        name: "daformer_tiny".into(),
        num_classes: 5,
        ..ModelConfig::default()
    };
    let vars = VarMap::new();
    let model = build_segmentor(&cfg, seeded_var_builder(&vars, 3, DType::F32, &dev())).unwrap();
    (cfg, vars, model)
}

fn inputs() -> (Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let pixels: Vec<f32> = (0..2 * 3 * 32 * 32)
        .map(|_| rand::Rng::gen_range(&mut rng, -2.0f32..2.0))
        .collect();
    let image = Tensor::from_vec(pixels, (2, 3, 32, 32), &dev()).unwrap();
    let labels: Vec<u32> = (0..2 * 32 * 32)
        .map(|i| ((i / 7 + rand::Rng::gen_range(&mut rng, 0..2)) % 5) as u32)
        .collect();
    (
        image,
        Tensor::from_vec(labels, (2, 32, 32), &dev()).unwrap(),
    )
}

/// Loss of `model` on the fixed inputs, with the teacher context (deterministic,
/// BatchNorm on batch statistics) so both precisions see the same network.
fn loss(model: &dyn SegModel, image: &Tensor, label: &Tensor) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut ctx = ForwardCtx::teacher(&mut rng);
    let logits = model.forward(image, &mut ctx).unwrap();
    assert_eq!(
        logits.dtype(),
        DType::F32,
        "autocast must hand back f32 logits"
    );
    let logits = resize_bilinear(&logits, 32, 32).unwrap();
    cross_entropy(&logits, label, None, CeReduction::MeanAll).unwrap()
}

/// All parameter gradients of `vars`, flattened and concatenated in name order.
fn flat_grads(vars: &VarMap, grads: &candle_core::backprop::GradStore) -> Tensor {
    let data = vars.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().filter(|n| !is_buffer(n)).collect();
    names.sort();
    let parts: Vec<Tensor> = names
        .iter()
        .map(|n| {
            let g = grads
                .get(data[*n].as_tensor())
                .unwrap_or_else(|| panic!("no gradient for `{n}`"));
            assert_eq!(
                g.dtype(),
                DType::F32,
                "gradient of `{n}` must be f32 (the master's dtype)"
            );
            g.flatten_all().unwrap()
        })
        .collect();
    Tensor::cat(&parts, 0).unwrap()
}

fn check_precision(autocast: Autocast, loss_tol: f64, grad_tol: f32) {
    let (cfg, vars, model) = student();
    let (image, label) = inputs();
    let l32 = loss(model.as_ref(), &image, &label);
    let g32 = flat_grads(&vars, &l32.backward().unwrap());

    let cast = AutocastModel::new(&cfg, &vars, autocast, &dev()).unwrap();
    let lc = loss(&cast, &image, &label);
    let gc = flat_grads(&vars, &lc.backward().unwrap());

    let (a, b) = (
        l32.to_scalar::<f32>().unwrap() as f64,
        lc.to_scalar::<f32>().unwrap() as f64,
    );
    assert!(a.is_finite() && b.is_finite());
    assert!(
        (a - b).abs() / a.abs() < loss_tol,
        "{autocast:?}: loss {b} vs f32 {a}"
    );
    // Reductions (BatchNorm statistics, weight gradients) accumulate in the
    // compute dtype, so single entries drift; the gradient as a whole must
    // keep its direction and size.
    let dot = (&gc * &g32)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let n32 = g32
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .sqrt();
    let nc = gc
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .sqrt();
    let cosine = dot / (n32 * nc);
    println!(
        "{autocast:?}: loss {b} vs {a}, gradient cosine {cosine}, norm ratio {}",
        nc / n32
    );
    assert!(
        cosine > 1.0 - grad_tol,
        "{autocast:?}: gradient cosine similarity {cosine}"
    );
    assert!(
        (nc / n32 - 1.0).abs() < grad_tol,
        "{autocast:?}: gradient norm ratio {}",
        nc / n32
    );
}

/// bf16 runs where candle has bf16 kernels (CUDA); the CPU refuses it by name.
#[test]
fn bf16_student_tracks_f32_and_trains_the_f32_masters() {
    if dev().is_cpu() {
        let (cfg, vars, _) = student();
        let err = AutocastModel::new(&cfg, &vars, Autocast::Bf16, &dev())
            .err()
            .expect("bf16 on the CPU must be refused")
            .to_string();
        assert!(
            err.contains("model.autocast") && err.contains("CUDA"),
            "{err}"
        );
        return;
    }
    check_precision(Autocast::Bf16, 2e-2, 0.25);
}

/// Measured on the CPU (tiny DAFormer, 2×32², fixed inputs): loss within
/// 6e-6 relative, gradient cosine 0.9948, norm ratio 0.998 (single entries
/// drift by up to ~50 %: the CPU's f16 reductions accumulate in f16). The
/// bounds catch a cut graph or a wrong cast, not that drift.
#[test]
fn f16_student_tracks_f32_and_trains_the_f32_masters() {
    check_precision(Autocast::F16, 1e-4, 0.03);
}

#[test]
fn batch_norm_statistics_update_the_masters() {
    let (cfg, vars, _) = student();
    let name = {
        let data = vars.data().lock().unwrap();
        let mut names: Vec<String> = data
            .keys()
            .filter(|n| n.ends_with("running_mean"))
            .cloned()
            .collect();
        names.sort();
        names.first().cloned().expect("daformer_tiny has BatchNorm")
    };
    let before = vars.data().lock().unwrap()[&name]
        .as_tensor()
        .copy()
        .unwrap();
    let cast = AutocastModel::new(&cfg, &vars, Autocast::F16, &dev()).unwrap();
    let (image, label) = inputs();
    loss(&cast, &image, &label);
    let after = vars.data().lock().unwrap()[&name]
        .as_tensor()
        .copy()
        .unwrap();
    assert_eq!(after.dtype(), DType::F32);
    let moved = (after - before)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        moved > 0.0,
        "`{name}` did not change after a bf16 train-mode forward"
    );
}

#[test]
fn f32_is_not_an_autocast() {
    let (cfg, vars, _) = student();
    let err = AutocastModel::new(&cfg, &vars, Autocast::F32, &dev())
        .err()
        .expect("f32 must be refused")
        .to_string();
    assert!(err.contains("model.autocast"), "{err}");
}
