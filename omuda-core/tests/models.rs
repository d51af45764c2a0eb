//! Networks against PyTorch (`tests/fixtures/models.safetensors`, written by
//! `tests/fixtures/gen_models.py`): SegFormer (transformers' own code), DAFormer
//! head and DeepLabV2 / ResNet V1c (plain PyTorch from the spec), with random
//! weights loaded through the name mapping of `nn::weights`. Encoder features
//! and logits must match to 1e-4, gradients of Σ logits·g with respect to the
//! input and to a few parameters of every kind (conv, linear, LayerNorm,
//! BatchNorm, depthwise conv) to 1e-3 (relative to the largest reference
//! magnitude), in eval mode and, for the networks with BatchNorm, in the
//! EMA-teacher mode (batch statistics, no dropout).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use omuda_core::nn::daformer_head::DaformerHeadConfig;
use omuda_core::nn::deeplabv2::DeepLabV2;
use omuda_core::nn::layers::max_rel_diff;
use omuda_core::nn::mit::MitConfig;
use omuda_core::nn::resnet::ResNetConfig;
use omuda_core::nn::segmentor::{DaFormer, SegFormer};
use omuda_core::nn::weights::{load_into, LoadReport};
use omuda_core::nn::{ForwardCtx, ModelConfig, SegModel};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/models.safetensors"
);
const TOL_FWD: f32 = 1e-4;
const TOL_GRAD: f32 = 1e-3;

fn fixtures() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(FIXTURES, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot load {FIXTURES}: {e} (run gen_models.py)"))
}

fn get<'a>(f: &'a HashMap<String, Tensor>, k: &str) -> &'a Tensor {
    f.get(k).unwrap_or_else(|| panic!("fixture {k} missing"))
}

/// The tensors under `prefix`, with the prefix removed.
fn with_prefix(f: &HashMap<String, Tensor>, prefix: &str) -> Vec<(String, Tensor)> {
    let mut v: Vec<_> = f
        .iter()
        .filter_map(|(k, t)| k.strip_prefix(prefix).map(|n| (n.to_string(), t.clone())))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The MiT of the fixtures.
fn fixture_mit() -> MitConfig {
    MitConfig {
        in_channels: 3,
        hidden_sizes: [8, 16, 24, 32],
        depths: [2, 2, 2, 2],
        num_heads: [1, 2, 3, 4],
        sr_ratios: [8, 4, 2, 1],
        patch_sizes: [7, 3, 3, 3],
        strides: [4, 2, 2, 2],
        mlp_ratios: [4; 4],
        decoder_hidden_size: 16,
        block_ln_eps: 1e-6,
        embed_ln_eps: 1e-5,
    }
}

fn model_cfg() -> ModelConfig {
    ModelConfig {
        num_classes: 5,
        ..ModelConfig::default()
    }
}

fn check(what: &str, got: &Tensor, want: &Tensor, tol: f32) -> f32 {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let d = max_rel_diff(got, want).unwrap();
    eprintln!("{what}: max relative difference {d:.2e}");
    assert!(d <= tol, "{what}: relative difference {d} > {tol}");
    d
}

/// Features, logits and the input gradient of (logits · g) in eval mode, and
/// (when `teacher`) logits and gradient in teacher mode, against `prefix.*`.
/// The gradients of the model variables named in the fixture keys
/// `{key_prefix}<name>` against those references; returns how many were checked.
fn check_param_grads(
    what: &str,
    vm: &VarMap,
    grads: &candle_core::backprop::GradStore,
    f: &HashMap<String, Tensor>,
    key_prefix: &str,
) -> usize {
    let data = vm.data().lock().unwrap();
    let mut n = 0;
    let mut keys: Vec<&String> = f.keys().filter(|k| k.starts_with(key_prefix)).collect();
    keys.sort();
    for k in keys {
        let name = &k[key_prefix.len()..];
        let var = data
            .get(name)
            .unwrap_or_else(|| panic!("{what}: the model has no variable {name}"));
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{what}: no gradient for {name}"));
        check(&format!("{what} d/d {name}"), g, &f[k], TOL_GRAD);
        n += 1;
    }
    n
}

fn parity(
    name: &str,
    model: &dyn SegModel,
    vm: &VarMap,
    f: &HashMap<String, Tensor>,
    prefix: &str,
    teacher: bool,
) {
    let x = get(f, &format!("{prefix}x"));
    let g = get(f, &format!("{prefix}g"));
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let xv = Var::from_tensor(x).unwrap();
    let mut ctx = ForwardCtx::eval(&mut rng);
    let feats = model.features(xv.as_tensor(), &mut ctx).unwrap();
    for (i, feat) in feats.iter().enumerate() {
        check(
            &format!("{name} feature {i}"),
            feat,
            get(f, &format!("{prefix}feat.{i}")),
            TOL_FWD,
        );
    }
    let logits = model.decode(&feats, &mut ctx).unwrap();
    check(
        &format!("{name} logits"),
        &logits,
        get(f, &format!("{prefix}logits")),
        TOL_FWD,
    );
    let grads = (logits * g).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = grads
        .get(xv.as_tensor())
        .expect("no gradient for the input");
    check(
        &format!("{name} d/dx"),
        dx,
        get(f, &format!("{prefix}dx")),
        TOL_GRAD,
    );
    let n = check_param_grads(name, vm, &grads, f, &format!("{prefix}dparam."));
    assert!(
        n >= 5,
        "{name}: only {n} parameter gradients in the fixture"
    );
    if teacher {
        let xv = Var::from_tensor(x).unwrap();
        let logits = model
            .forward(xv.as_tensor(), &mut ForwardCtx::teacher(&mut rng))
            .unwrap();
        check(
            &format!("{name} teacher logits"),
            &logits,
            get(f, &format!("{prefix}teacher.logits")),
            TOL_FWD,
        );
        let grads = (logits * g).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = grads
            .get(xv.as_tensor())
            .expect("no gradient for the input");
        check(
            &format!("{name} teacher d/dx"),
            dx,
            get(f, &format!("{prefix}teacher.dx")),
            TOL_GRAD,
        );
        let n = check_param_grads(
            &format!("{name} teacher"),
            vm,
            &grads,
            f,
            &format!("{prefix}teacher.dparam."),
        );
        assert!(
            n >= 5,
            "{name}: only {n} teacher parameter gradients in the fixture"
        );
    }
}

fn load_strict(vm: &VarMap, tensors: Vec<(String, Tensor)>) -> LoadReport {
    let r = load_into(vm, tensors, "fixture", "test model", true).unwrap();
    assert!(r.loaded.len() > 10, "{}", r.summary());
    r
}

#[test]
fn segformer_matches_transformers_with_hub_names() {
    let f = fixtures();
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let model = SegFormer::new(&fixture_mit(), &model_cfg(), vb).unwrap();
    let report = load_strict(&vm, with_prefix(&f, "segformer.w."));
    // The published layout is the model's own: nothing is renamed.
    assert!(
        report.loaded.iter().all(|(t, s)| t == s),
        "{}",
        report.summary()
    );
    assert!(report.head_kept.is_empty());
    parity("segformer", &model, &vm, &f, "segformer.", false);
}

#[test]
fn segformer_head_loads_from_mmseg_names() {
    let f = fixtures();
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let model = SegFormer::new(&fixture_mit(), &model_cfg(), vb).unwrap();
    let mut tensors: Vec<_> = with_prefix(&f, "segformer.w.")
        .into_iter()
        .filter(|(n, _)| !n.starts_with("decode_head."))
        .collect();
    tensors.extend(with_prefix(&f, "segformer.orig."));
    let report = load_strict(&vm, tensors);
    assert!(report
        .loaded
        .iter()
        .any(|(t, s)| t == "decode_head.batch_norm.running_var"
            && s == "decode_head.linear_fuse.bn.running_var"));
    parity(
        "segformer (mmseg head names)",
        &model,
        &vm,
        &f,
        "segformer.",
        false,
    );
}

#[test]
fn daformer_matches_pytorch_with_original_names() {
    let f = fixtures();
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let head = DaformerHeadConfig {
        channels: 16,
        dilations: vec![1, 6, 12, 18],
        dropout: 0.1,
    };
    let model = DaFormer::new(&fixture_mit(), &head, &model_cfg(), vb).unwrap();
    let report = load_strict(&vm, with_prefix(&f, "daformer.orig."));
    assert!(report.loaded.iter().any(|(t, s)| t
        == "segformer.encoder.block.1.1.attention.self.value.bias"
        && s == "backbone.block2.1.attn.kv.bias"));
    parity("daformer", &model, &vm, &f, "daformer.", true);
}

#[test]
fn deeplabv2_resnet_v1c_matches_pytorch() {
    let f = fixtures();
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let model = DeepLabV2::new(&ResNetConfig::tiny(), &model_cfg(), vb).unwrap();
    // num_batches_tracked is int64 in the file.
    let report = load_strict(&vm, with_prefix(&f, "dlv2.w."));
    assert!(report
        .loaded
        .iter()
        .any(|(t, _)| t == "backbone.stem.1.num_batches_tracked"));
    parity("dlv2", &model, &vm, &f, "dlv2.", true);
}
