//! `model.autocast` inside the shared step: DACS steps in f16 compute
//! trains the f32 master weights with finite losses, and tracks the f32 step.

use candle_core::{DType, Device};
use omuda::build_method;
use omuda::run::build_batch_source;
use omuda::RunConfig;
use omuda_core::data::batch::BatchSource;
use omuda_core::nn::autocast::Autocast;

fn tiny_config(autocast: Autocast) -> RunConfig {
    let mut cfg = RunConfig {
        methods: vec!["dacs".into()],
        ..RunConfig::default()
    };
    cfg.train.iters = 2;
    cfg.data.synth.height = 32;
    cfg.data.synth.width = 32;
    cfg.schedule.warmup_iters = 1;
    cfg.model.name = "daformer_tiny".into();
    cfg.model.autocast = autocast;
    cfg
}

/// Losses of two DACS steps (the second with an EMA teacher) and the
/// student's f32 parameters afterwards.
fn two_steps(autocast: Autocast) -> (Vec<Vec<(String, f64)>>, Vec<f32>) {
    let cfg = tiny_config(autocast);
    cfg.validate("test").unwrap();
    let dev = Device::Cpu;
    let mut m = build_method("dacs", &cfg, &dev).unwrap();
    let mut data = build_batch_source(&cfg, "dacs", &dev).unwrap();
    let mut losses = Vec::new();
    for _ in 0..2 {
        let log = m.step(&data.next_batch().unwrap()).unwrap();
        assert!(
            log.skipped.is_none(),
            "{autocast:?}: step skipped: {:?}",
            log.skipped
        );
        losses.push(log.losses);
    }
    let data = m.student_vars().data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut params = Vec::new();
    for n in names {
        let t = data[n].as_tensor();
        assert_eq!(t.dtype(), DType::F32, "master `{n}` must stay f32");
        params.extend(t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    (losses, params)
}

#[test]
fn f16_dacs_steps_train_the_f32_masters_like_f32() {
    let (l32, p32) = two_steps(Autocast::F32);
    let (l16, p16) = two_steps(Autocast::F16);
    for (a, b) in l32.iter().flatten().zip(l16.iter().flatten()) {
        assert_eq!(a.0, b.0);
        assert!(b.1.is_finite(), "f16 loss {} is {}", b.0, b.1);
        assert!(
            (a.1 - b.1).abs() <= 0.05 * a.1.abs().max(0.1),
            "loss {}: f16 {} vs f32 {}",
            a.0,
            b.1,
            a.1
        );
    }
    // Both runs start from the same seeded weights: the updates must agree.
    let init = {
        let cfg = tiny_config(Autocast::F32);
        let m = build_method("dacs", &cfg, &Device::Cpu).unwrap();
        let data = m.student_vars().data().lock().unwrap();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        names
            .iter()
            .flat_map(|n| {
                data[*n]
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect::<Vec<f32>>()
    };
    let (mut dot, mut n32, mut n16) = (0f64, 0f64, 0f64);
    for ((a, b), i) in p32.iter().zip(&p16).zip(&init) {
        let (da, db) = ((a - i) as f64, (b - i) as f64);
        dot += da * db;
        n32 += da * da;
        n16 += db * db;
    }
    assert!(n16 > 0.0, "the f16 steps did not move the f32 masters");
    let cosine = dot / (n32.sqrt() * n16.sqrt());
    assert!(cosine > 0.9, "update direction cosine f16 vs f32: {cosine}");
}
