//! HRDA on the shared step at tiny size: two iterations with finite losses,
//! the scale-attention head in student and teacher, and the pseudo-label
//! valid regions (HRDA margins through the synthetic loader, DAFormer rows
//! scaled to the crop height) inside a real step.

use candle_core::{DType, Device, Tensor};
use omuda::run::build_batch_source;
use omuda::RunConfig;
use omuda::{build_method, METHOD_NAMES};
use omuda_core::data::batch::BatchSource;
use omuda_core::data::batch::UdaBatch;
use omuda_core::train::{SelfTraining, UdaMethod};

fn tiny_config() -> RunConfig {
    let mut cfg = RunConfig {
        methods: vec!["hrda".into()],
        ..RunConfig::default()
    };
    cfg.train.iters = 2;
    cfg.data.synth.height = 64;
    cfg.data.synth.width = 128;
    cfg.schedule.warmup_iters = 1;
    cfg.model.name = "daformer_tiny".into();
    cfg.uda.ema_alpha = 0.999;
    cfg.hrda.hr_crop = [32, 32];
    cfg.hrda.test_crop = [64, 64];
    cfg.hrda.test_stride = [32, 32];
    cfg
}

/// The pseudo-label weight of the last step (debug tile "pseudo-weight"), (B, H, W).
fn pseudo_weight(m: &mut SelfTraining) -> Tensor {
    let debug = m.take_debug().expect("debug tiles captured");
    debug
        .tiles
        .into_iter()
        .find(|(n, _, _)| n == "pseudo-weight")
        .map(|(_, _, t)| t)
        .expect("pseudo-weight tile")
}

fn rows_cols(w: &Tensor) -> Vec<Vec<Vec<f32>>> {
    w.to_dtype(DType::F32).unwrap().to_vec3::<f32>().unwrap()
}

#[test]
fn hrda_two_iterations_finite_losses_and_margins() {
    let mut cfg = tiny_config();
    // Every pixel confident (q = 1), so the weight shows the valid region exactly.
    cfg.uda.pseudo_threshold = 0.0;
    cfg.uda.pseudo_margins = Some([4, 8, 2, 6]);
    cfg.validate("test").unwrap();
    assert!(METHOD_NAMES.contains(&"hrda"));
    let dev = Device::Cpu;
    let mut m = build_method("hrda", &cfg, &dev).unwrap();
    assert_eq!(m.hook_names(), ["fd"]);
    assert!(m.spec().model.scale_attention);
    for vars in [m.student_vars(), m.teacher_vars().unwrap()] {
        assert!(vars
            .data()
            .lock()
            .unwrap()
            .keys()
            .any(|n| n.starts_with("decode_head.scale_attention.conv_seg")));
    }
    let mut data = build_batch_source(&cfg, "hrda", &dev).unwrap();
    m.capture_debug(true);
    for i in 0..2 {
        let batch = data.next_batch().unwrap();
        let valid = batch
            .target_valid
            .as_ref()
            .expect("target valid mask from the loader");
        assert_eq!(valid.dims(), &[2, 64, 128]);
        let log = m.step(&batch).unwrap();
        let names: Vec<&str> = log.losses.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["loss_src", "loss_mix", "fd.loss_fd"],
            "iteration {i}"
        );
        for (n, v) in &log.losses {
            assert!(v.is_finite() && *v >= 0.0, "iteration {i}: {n} = {v}");
        }
        assert!(
            log.losses[0].1 > 0.0 && log.losses[1].1 > 0.0,
            "{:?}",
            log.losses
        );
        // The weight is 1 inside and 0 in the margins; left/right depend on
        // the image's flip, so compare with the loader's mask itself.
        let w = rows_cols(&pseudo_weight(&mut m));
        let v = rows_cols(valid);
        assert_eq!(w, v, "iteration {i}");
        for img in &w {
            for (y, row) in img.iter().enumerate() {
                let inside = (4..64 - 8).contains(&y);
                let ones = row.iter().filter(|&&p| p == 1.0).count();
                assert_eq!(ones, if inside { 128 - 8 } else { 0 }, "row {y}");
                let left_zero =
                    row[..2].iter().all(|&p| p == 0.0) && row[122..].iter().all(|&p| p == 0.0);
                let right_zero =
                    row[..6].iter().all(|&p| p == 0.0) && row[126..].iter().all(|&p| p == 0.0);
                assert!(
                    !inside || left_zero || right_zero,
                    "row {y}: margins not at the sides"
                );
            }
        }
    }
    // Evaluation goes through HRDA inference with the outer window (64×128 > 64²).
    let x = Tensor::zeros((1, 3, 64, 128), DType::F32, &dev).unwrap();
    let logits = UdaMethod::predict(&m, &x).unwrap();
    assert_eq!(logits.dims(), &[1, 19, 64, 128]);
}

#[test]
fn margins_without_a_mask_are_an_error() {
    let mut cfg = tiny_config();
    cfg.uda.pseudo_margins = Some([4, 8, 2, 6]);
    cfg.model.name = "segformer_tiny".into();
    let dev = Device::Cpu;
    let mut m = build_method("dacs", &cfg, &dev).unwrap();
    let mut data = build_batch_source(&cfg, "dacs", &dev).unwrap();
    let batch = data.next_batch().unwrap();
    let batch = UdaBatch {
        target_valid: None,
        ..batch
    };
    let err = m.step(&batch).err().unwrap().to_string();
    assert!(
        err.contains("pseudo_margins") && err.contains("target_valid"),
        "{err}"
    );
}

#[test]
fn daformer_rows_are_scaled_to_the_crop_height() {
    let mut cfg = tiny_config();
    cfg.model.name = "segformer_tiny".into();
    cfg.uda.pseudo_threshold = 0.0;
    // [15, 120] rows of a 512-high crop → [2, 15] rows of the 64-high frames.
    cfg.uda.pseudo_label_crop = Some([15, 120]);
    let dev = Device::Cpu;
    let mut m = build_method("dacs", &cfg, &dev).unwrap();
    let mut data = build_batch_source(&cfg, "dacs", &dev).unwrap();
    m.capture_debug(true);
    m.step(&data.next_batch().unwrap()).unwrap();
    for img in rows_cols(&pseudo_weight(&mut m)) {
        for (y, row) in img.iter().enumerate() {
            let want = if (2..64 - 15).contains(&y) { 1.0 } else { 0.0 };
            assert!(row.iter().all(|&p| p == want), "row {y}: {:?}", &row[..4]);
        }
    }
}
