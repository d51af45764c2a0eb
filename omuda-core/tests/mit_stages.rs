//! A MiT whose per-stage settings all differ (`mlp_ratios` [4, 2, 3, 1],
//! `depths`, heads, reduction ratios, patch sizes), built from its Hugging Face
//! `config.json` with `MitConfig::from_hf_config` and checked against
//! transformers' own network (`tests/fixtures/mit_stages.{json,safetensors}`,
//! written by `tests/fixtures/gen_mit_stages.py`): encoder features and
//! logits to 1e-4, the input gradient of Σ logits·g to 1e-3 (relative to the
//! largest reference magnitude), weights loaded strictly under the published
//! names.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use omuda_core::nn::layers::max_rel_diff;
use omuda_core::nn::mit::MitConfig;
use omuda_core::nn::segmentor::SegFormer;
use omuda_core::nn::weights::load_into;
use omuda_core::nn::{ForwardCtx, ModelConfig, SegModel};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/");

fn check(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let d = max_rel_diff(got, want).unwrap();
    eprintln!("{what}: max relative difference {d:.2e}");
    assert!(d <= tol, "{what}: relative difference {d} > {tol}");
}

#[test]
fn mit_with_per_stage_settings_matches_transformers() {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{DIR}mit_stages.json")).unwrap())
            .unwrap();
    let mit = MitConfig::from_hf_config(&json).unwrap();
    assert_eq!(mit.mlp_ratios, [4, 2, 3, 1]);
    assert_eq!(mit.depths, [1, 2, 1, 1]);
    assert_eq!(mit.patch_sizes, [7, 3, 5, 3]);
    let f: HashMap<String, Tensor> =
        candle_core::safetensors::load(format!("{DIR}mit_stages.safetensors"), &Device::Cpu)
            .unwrap();
    let weights: Vec<(String, Tensor)> = f
        .iter()
        .filter_map(|(k, t)| k.strip_prefix("w.").map(|n| (n.to_string(), t.clone())))
        .collect();

    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let cfg = ModelConfig {
        num_classes: json["num_labels"].as_u64().unwrap_or(5) as usize,
        ..ModelConfig::default()
    };
    let model = SegFormer::new(&mit, &cfg, vb).unwrap();
    let report = load_into(&vm, weights, "mit_stages.safetensors", "test model", true).unwrap();
    assert!(
        report.missing.is_empty() && report.unexpected.is_empty() && report.loaded.len() > 100,
        "{}",
        report.summary()
    );

    let x = Var::from_tensor(&f["x"]).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut ctx = ForwardCtx::eval(&mut rng);
    let feats = model.features(x.as_tensor(), &mut ctx).unwrap();
    assert_eq!(feats.len(), 4);
    for (i, feat) in feats.iter().enumerate() {
        check(
            &format!("feature {i}"),
            feat,
            &f[&format!("feat.{i}")],
            1e-4,
        );
    }
    let logits = model.decode(&feats, &mut ctx).unwrap();
    check("logits", &logits, &f["logits"], 1e-4);
    let grads = (logits * &f["g"])
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    check("d/dx", grads.get(x.as_tensor()).unwrap(), &f["dx"], 1e-3);
}
