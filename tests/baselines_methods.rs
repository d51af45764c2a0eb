//! DAFormer and MIC on the shared step at tiny size: a few iterations with
//! finite losses, the hooks attached under their names, and FD's empty-mask
//! rule inside a real step.

use candle_core::{Device, Tensor};
use omuda::RunConfig;
use omuda::{base_spec, build_method, METHOD_NAMES};
use omuda_baselines::{Daformer, Mic};
use omuda_core::data::batch::UdaBatch;
use omuda_core::data::loader::SynthPairLoader;
use omuda_core::data::synth::Domain;
use omuda_core::train::SelfTraining;

fn tiny_config() -> RunConfig {
    let mut cfg = RunConfig::default();
    cfg.train.iters = 3;
    cfg.data.synth.height = 32;
    cfg.data.synth.width = 64;
    cfg.schedule.warmup_iters = 1;
    cfg.model.name = "daformer_tiny".into();
    cfg.uda.ema_alpha = 0.999;
    cfg.uda.pseudo_label_crop = Some([15, 120]);
    cfg
}

fn run(
    method: &mut SelfTraining,
    cfg: &RunConfig,
    iters: usize,
) -> Vec<omuda_core::train::StepLog> {
    let device = Device::Cpu;
    let mut data = SynthPairLoader::new(
        cfg.data.synth.clone(),
        cfg.data.dataset_seed,
        Domain::Source,
        2,
        cfg.seed,
        &device,
    );
    (0..iters)
        .map(|_| method.step(&data.next_batch().unwrap()).unwrap())
        .collect()
}

fn names(log: &omuda_core::train::StepLog) -> Vec<&str> {
    log.losses.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn daformer_three_iterations_finite_losses() {
    let cfg = tiny_config();
    let mut m = build_method("daformer", &cfg, &Device::Cpu).unwrap();
    assert_eq!(m.hook_names(), ["fd"]);
    for (i, log) in run(&mut m, &cfg, 3).iter().enumerate() {
        assert_eq!(
            names(log),
            ["loss_src", "loss_mix", "fd.loss_fd"],
            "iteration {i}"
        );
        for (n, v) in &log.losses {
            assert!(v.is_finite() && *v >= 0.0, "iteration {i}: {n} = {v}");
        }
        assert!(
            log.metrics.iter().any(|(k, _)| k == "fd.empty_mask"),
            "{:?}",
            log.metrics
        );
    }
    assert_eq!(m.iteration(), 3);
}

#[test]
fn mic_dacs_three_iterations_finite_losses() {
    let mut cfg = tiny_config();
    cfg.model.name = "segformer_tiny".into();
    // Every pixel confident: the pseudo-label weight is 1, so the masked
    // loss is a real (positive) term from the first step.
    cfg.uda.pseudo_threshold = 0.0;
    let mut m = build_method("mic_dacs", &cfg, &Device::Cpu).unwrap();
    assert_eq!(m.hook_names(), ["mic"]);
    assert_eq!(m.spec().name, "mic_dacs");
    for (i, log) in run(&mut m, &cfg, 3).iter().enumerate() {
        assert_eq!(
            names(log),
            ["loss_src", "loss_mix", "mic.loss_mic"],
            "iteration {i}"
        );
        for (n, v) in &log.losses {
            assert!(v.is_finite() && *v > 0.0, "iteration {i}: {n} = {v}");
        }
        let share = log
            .metrics
            .iter()
            .find(|(k, _)| k == "mic.masked_share")
            .unwrap()
            .1;
        assert!((0.0..=1.0).contains(&share), "{share}");
    }
}

#[test]
fn mic_daformer_attaches_fd_then_mic_and_every_name_builds() {
    let mut cfg = tiny_config();
    cfg.hrda.hr_crop = [16, 16];
    cfg.hrda.test_crop = [32, 32];
    cfg.hrda.test_stride = [16, 16];
    let m = build_method("mic_daformer", &cfg, &Device::Cpu).unwrap();
    assert_eq!(m.hook_names(), ["fd", "mic"]);
    // MIC(host) by hand is the same composition.
    let by_hand = Mic::wrap(
        Daformer::new(base_spec("x", &cfg), cfg.fd.clone(), &Device::Cpu).unwrap(),
        &cfg.mic,
    );
    assert_eq!(by_hand.hook_names(), ["fd", "mic"]);
    for name in METHOD_NAMES {
        assert!(build_method(name, &cfg, &Device::Cpu).is_ok(), "{name}");
    }
    let e = build_method("daformerr", &cfg, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("daformerr") && e.contains("mic_daformer"), "{e}");
}

/// A batch whose source labels are all `class`.
fn batch(class: u32) -> UdaBatch {
    let d = Device::Cpu;
    let img = Tensor::randn(0f32, 1.0, (2, 3, 32, 64), &d).unwrap();
    UdaBatch {
        source_image: img.clone(),
        source_label: Tensor::full(class, (2, 32, 64), &d).unwrap(),
        target_image: img.affine(0.5, 0.1).unwrap(),
        target_valid: None,
    }
}

#[test]
fn fd_empty_mask_is_a_zero_term_and_flagged() {
    let cfg = tiny_config();
    let mut m = Daformer::new(base_spec("daformer", &cfg), cfg.fd.clone(), &Device::Cpu).unwrap();
    let metric = |log: &omuda_core::train::StepLog| {
        log.metrics
            .iter()
            .find(|(k, _)| k == "fd.empty_mask")
            .unwrap()
            .1
    };
    let loss = |log: &omuda_core::train::StepLog| {
        log.losses
            .iter()
            .find(|(k, _)| k == "fd.loss_fd")
            .unwrap()
            .1
    };
    // Road everywhere: no thing cell, so no FD term (0, no gradient), flagged.
    let log = m.step(&batch(0)).unwrap();
    assert_eq!(metric(&log), 1.0);
    assert_eq!(loss(&log), 0.0);
    // Cars everywhere: every cell is a thing cell, the distance is positive
    // (the student moved away from the frozen start in the first step).
    let log = m.step(&batch(13)).unwrap();
    assert_eq!(metric(&log), 0.0);
    assert!(loss(&log) > 0.0, "{}", loss(&log));
    // Ignore everywhere counts as no thing either.
    let log = m.step(&batch(255)).unwrap();
    assert_eq!(metric(&log), 1.0);
    assert_eq!(loss(&log), 0.0);
}

#[test]
fn mic_hrda_two_iterations_finite_losses() {
    // HRDA's detail crop must hold the tiny encoder's 8×8 reduction: 64×128 frames, 32² crops.
    let mut cfg = tiny_config();
    cfg.data.synth.height = 64;
    cfg.data.synth.width = 128;
    cfg.uda.pseudo_threshold = 0.0;
    cfg.hrda.hr_crop = [32, 32];
    cfg.hrda.test_crop = [64, 64];
    cfg.hrda.test_stride = [32, 32];
    let mut m = build_method("mic_hrda", &cfg, &Device::Cpu).unwrap();
    assert_eq!(m.hook_names(), ["fd", "mic"]);
    for (i, log) in run(&mut m, &cfg, 2).iter().enumerate() {
        assert_eq!(
            names(log),
            ["loss_src", "loss_mix", "fd.loss_fd", "mic.loss_mic"],
            "iteration {i}"
        );
        for (n, v) in &log.losses {
            assert!(v.is_finite(), "iteration {i}: {n} = {v}");
        }
        let mic = log
            .losses
            .iter()
            .find(|(k, _)| k == "mic.loss_mic")
            .unwrap()
            .1;
        assert!(mic > 0.0, "iteration {i}: the masked HRDA loss is {mic}");
    }
}
