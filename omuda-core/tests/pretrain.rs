//! Pretraining on the built-in pretraining set: deterministic to the byte,
//! encoder-only output that loads into the segmentation models, and no reuse
//! of the benchmark's images.

use candle_core::Device;
use omuda_core::data::synth::{sample_seed, Domain, Split};
use omuda_core::data::synth_pretrain::{pretrain_sample, PretrainSetConfig};
use omuda_core::nn::weights::apply_model_weights;
use omuda_core::train::pretrain::{pretrain, PretrainConfig, ENCODER_PREFIX};

fn tiny() -> PretrainConfig {
    PretrainConfig {
        iters: 3,
        batch_size: 4,
        warmup_iters: 1,
        check_size: 8,
        set: PretrainSetConfig {
            heights: vec![32, 48],
            crop: 32,
            grid: 2,
            min_share: 0.02,
        },
        ..PretrainConfig::default()
    }
}

#[test]
fn a_tiny_pretraining_run_is_deterministic_to_the_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    let mut losses = Vec::new();
    let run = pretrain(&tiny(), &Device::Cpu, 1, &mut |it, loss, _| {
        losses.push((it, loss))
    })
    .unwrap();
    run.save(&a).unwrap();
    assert_eq!(losses.len(), 3);
    assert!(losses.iter().all(|(_, l)| l.is_finite() && *l > 0.0));
    let again = pretrain(&tiny(), &Device::Cpu, 1, &mut |_, _, _| {}).unwrap();
    again.save(&b).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(run.report, again.report);

    // Another seed gives other weights.
    let other = pretrain(
        &PretrainConfig { seed: 1, ..tiny() },
        &Device::Cpu,
        1,
        &mut |_, _, _| {},
    )
    .unwrap();
    let c = dir.path().join("c.safetensors");
    other.save(&c).unwrap();
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap());

    // Only encoder tensors, and they load strictly into both tiny segmentors.
    assert!(run.encoder.keys().all(|n| n.starts_with(ENCODER_PREFIX)));
    for name in ["segformer_tiny", "daformer_tiny"] {
        let cfg = omuda_core::nn::ModelConfig {
            name: name.into(),
            weights: Some(a.display().to_string()),
            ..Default::default()
        };
        let vars = candle_nn::VarMap::new();
        let _model = omuda_core::nn::build_segmentor(
            &cfg,
            omuda_core::nn::seeded_var_builder(&vars, 0, candle_core::DType::F32, &Device::Cpu),
        )
        .unwrap();
        let report = apply_model_weights(&cfg, &vars).unwrap().unwrap();
        assert_eq!(report.problem_count(), 0, "{name}");
        assert_eq!(report.loaded.len(), run.encoder.len(), "{name}");
    }
}

#[test]
fn the_pretraining_set_draws_from_its_own_seed_space() {
    let cfg = PretrainSetConfig::default();
    let benchmark: std::collections::HashSet<u64> = [Domain::Source, Domain::Target]
        .into_iter()
        .flat_map(|d| {
            [Split::Train, Split::Val, Split::Dev, Split::Test]
                .into_iter()
                .flat_map(move |s| (0..500).map(move |i| sample_seed(2024, d, s, i)))
        })
        .collect();
    for pretrain in [true, false] {
        for i in 0..500 {
            let seed = omuda_core::data::synth::pretrain_seed(2024, pretrain, i);
            assert!(
                !benchmark.contains(&seed),
                "pretraining sample {i} reuses a benchmark seed"
            );
        }
    }
    // Crops of the training and the check part differ.
    assert_ne!(
        pretrain_sample(&cfg, 0, true, 0).image,
        pretrain_sample(&cfg, 0, false, 0).image
    );
}

#[test]
fn bad_pretraining_configs_are_refused_with_the_key() {
    let bad = PretrainConfig {
        lr: f64::NAN,
        ..tiny()
    };
    let e = pretrain(&bad, &Device::Cpu, 1, &mut |_, _, _| {})
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("lr"), "{e}");
    let bad = PretrainConfig {
        encoder: "b9".into(),
        ..tiny()
    };
    let e = pretrain(&bad, &Device::Cpu, 1, &mut |_, _, _| {})
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("encoder"), "{e}");
    let mut bad = tiny();
    bad.set.grid = 3;
    let e = pretrain(&bad, &Device::Cpu, 1, &mut |_, _, _| {})
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("grid"), "{e}");
}
