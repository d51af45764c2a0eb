//! The OMUDA plugins on the shared step: wrapping, composition, replacement of
//! host hooks, configuration, and a few real DACS steps with each plugin.

use candle_core::{DType, Device, Tensor};
use omuda::core::data::batch::BatchSource;
use omuda::core::data::loader::SynthPairLoader;
use omuda::core::data::synth::Domain;
use omuda::core::train::{ChaCha8Rng, NamedLoss, StepHook, StepView, TargetAveraging};
use omuda::plugins::{Cam, CamConfig, Cdm, CdmConfig, Fdm, PluginsConfig};
use omuda::{attach_plugins, base_spec, build_method, with_omuda, Dacs, RunConfig, SelfTraining};

fn tiny() -> RunConfig {
    let mut cfg = RunConfig::default();
    cfg.train.iters = 3;
    cfg.data.synth.height = 32;
    cfg.data.synth.width = 64;
    cfg
}

fn loader(cfg: &RunConfig) -> SynthPairLoader {
    SynthPairLoader::new(
        cfg.data.synth.clone(),
        cfg.data.dataset_seed,
        Domain::Source,
        2,
        cfg.seed,
        &Device::Cpu,
    )
}

fn all_vars(m: &SelfTraining) -> Vec<(String, Vec<f32>)> {
    let data = m.student_vars().data().lock().unwrap();
    let mut v: Vec<(String, Vec<f32>)> = data
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// A plugin that implements nothing.
struct NoOp;
impl StepHook for NoOp {
    fn name(&self) -> &str {
        "noop"
    }
}

#[test]
fn wrapping_with_a_no_op_plugin_leaves_dacs_unchanged_bit_for_bit() {
    let cfg = tiny();
    let mut plain = Dacs::new(base_spec("dacs", &cfg), &Device::Cpu).unwrap();
    let mut wrapped = Dacs::new(base_spec("dacs", &cfg), &Device::Cpu)
        .unwrap()
        .with(NoOp);
    let (mut d1, mut d2) = (loader(&cfg), loader(&cfg));
    for _ in 0..3 {
        let a = plain.step(&d1.next_batch().unwrap()).unwrap();
        let b = wrapped.step(&d2.next_batch().unwrap()).unwrap();
        assert_eq!(a.losses.len(), b.losses.len());
        for ((na, va), (nb, vb)) in a.losses.iter().zip(&b.losses) {
            assert_eq!(na, nb);
            assert_eq!(va.to_bits(), vb.to_bits(), "{na}: {va} vs {vb}");
        }
        assert_eq!(a.metrics, b.metrics);
    }
    assert_eq!(
        all_vars(&plain),
        all_vars(&wrapped),
        "student weights differ"
    );
}

#[test]
fn each_plugin_and_all_three_train_dacs() {
    let cfg = tiny();
    let cases: Vec<(&str, SelfTraining, Vec<&str>)> = vec![
        // The default CAM (chosen on dev): the context-aware mix alone, the
        // masked-consistency term at weight 0 is not computed.
        (
            "cam",
            Dacs::new(base_spec("dacs", &cfg), &Device::Cpu)
                .unwrap()
                .with(Cam::default()),
            vec![],
        ),
        (
            "cam masked term",
            Dacs::new(base_spec("dacs", &cfg), &Device::Cpu)
                .unwrap()
                .with(Cam::new(
                    CamConfig {
                        weight: 1.0,
                        ..CamConfig::default()
                    },
                    PluginsConfig::default().thing_classes,
                )),
            vec!["cam.loss_cam"],
        ),
        (
            "fdm",
            Dacs::new(base_spec("dacs", &cfg), &Device::Cpu)
                .unwrap()
                .with(Fdm::default()),
            vec!["fdm.loss_fdm_src", "fdm.loss_fdm_tgt"],
        ),
        (
            "cdm",
            Dacs::new(base_spec("dacs", &cfg), &Device::Cpu)
                .unwrap()
                .with(Cdm::default()),
            vec![],
        ),
        (
            "all",
            with_omuda(Dacs::new(base_spec("dacs", &cfg), &Device::Cpu).unwrap()),
            vec!["fdm.loss_fdm_src", "fdm.loss_fdm_tgt"],
        ),
    ];
    for (label, mut m, extra) in cases {
        let mut data = loader(&cfg);
        let mut log = None;
        for _ in 0..2 {
            log = Some(m.step(&data.next_batch().unwrap()).unwrap());
        }
        let log = log.unwrap();
        let names: Vec<&str> = log.losses.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(&names[..2], ["loss_src", "loss_mix"], "{label}");
        assert_eq!(&names[2..], extra.as_slice(), "{label}");
        assert!(
            log.losses.iter().all(|(_, v)| v.is_finite()),
            "{label}: {:?}",
            log.losses
        );
        let has = |k: &str| log.metrics.iter().any(|(n, _)| n == k);
        if label == "cam" {
            assert!(!has("cam.masked_share"), "weight 0: no mask drawn");
        }
        if label == "cam masked term" {
            let share = log
                .metrics
                .iter()
                .find(|(n, _)| n == "cam.masked_share")
                .unwrap()
                .1;
            assert!(share > 0.0 && share < 1.0, "{label}: masked share {share}");
        }
        if label == "cdm" || label == "all" {
            assert!(
                has("cdm.weight_mean") && has("cdm.mu.road"),
                "{label}: {:?}",
                log.metrics
            );
        }
        if label == "fdm" || label == "all" {
            assert!(has("fdm.no_cells_src"), "{label}");
        }
    }
    // The default CAM changes what ClassMix pastes: the mixed loss differs
    // from DACS alone on the same batch.
    let mut plain = Dacs::new(base_spec("dacs", &cfg), &Device::Cpu).unwrap();
    let mut cam = Dacs::new(base_spec("dacs", &cfg), &Device::Cpu)
        .unwrap()
        .with(Cam::default());
    let batch = loader(&cfg).next_batch().unwrap();
    let mix = |log: &omuda::core::train::StepLog| {
        log.losses.iter().find(|(n, _)| n == "loss_mix").unwrap().1
    };
    assert_ne!(
        mix(&plain.step(&batch).unwrap()),
        mix(&cam.step(&batch).unwrap())
    );
}

#[test]
fn cdm_replaces_the_scalar_weight_and_its_state_is_checkpointed() {
    let cfg = tiny();
    /// Records the pseudo-label weight it sees after CDM.
    struct Spy(std::sync::Arc<std::sync::Mutex<Vec<Vec<f32>>>>);
    impl StepHook for Spy {
        fn name(&self) -> &str {
            "spy"
        }
        fn extra_losses(
            &mut self,
            view: &StepView,
            _: &mut ChaCha8Rng,
        ) -> omuda::Result<Vec<NamedLoss>> {
            self.0.lock().unwrap().push(
                view.pseudo
                    .unwrap()
                    .weight
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            );
            Ok(Vec::new())
        }
    }
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut m = Dacs::new(base_spec("dacs", &cfg), &Device::Cpu)
        .unwrap()
        .with(Cdm::default())
        .with(Spy(seen.clone()));
    let mut data = loader(&cfg);
    m.step(&data.next_batch().unwrap()).unwrap();
    m.step(&data.next_batch().unwrap()).unwrap();
    // Hard mode: per-pixel 0/1 weights, not one batch-wide share.
    for w in seen.lock().unwrap().iter() {
        assert!(
            w.iter().all(|&v| v == 0.0 || v == 1.0),
            "weights are not 0/1"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    m.save_state(dir.path()).unwrap();
    let saved =
        candle_core::safetensors::load(dir.path().join("hook_cdm.safetensors"), &Device::Cpu)
            .unwrap();
    let mu = saved["mu"]
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    assert_eq!(mu.len(), 19);
    assert!(
        mu.iter().any(|&v| v != 1.0 / 19.0),
        "μ was updated after the steps"
    );
    let mut restored = Dacs::new(base_spec("dacs", &cfg), &Device::Cpu)
        .unwrap()
        .with(Cdm::default());
    restored.load_state(dir.path()).unwrap();
    let again = tempfile::tempdir().unwrap();
    restored.save_state(again.path()).unwrap();
    let back =
        candle_core::safetensors::load(again.path().join("hook_cdm.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(
        back["mu"]
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap(),
        mu
    );
}

/// Stands in for a host's own hook that a plugin replaces (MIC's masked loss, DAFormer's FD).
struct HostHook(&'static str);
impl StepHook for HostHook {
    fn name(&self) -> &str {
        self.0
    }
    fn extra_losses(&mut self, _: &StepView, _: &mut ChaCha8Rng) -> omuda::Result<Vec<NamedLoss>> {
        Ok(vec![NamedLoss {
            name: "loss_host".into(),
            value: Tensor::new(0.0f32, &Device::Cpu)?,
        }])
    }
}

#[test]
fn cam_replaces_mic_and_fdm_replaces_fd() {
    let cfg = tiny();
    let m = Dacs::new(base_spec("dacs", &cfg), &Device::Cpu)
        .unwrap()
        .with(HostHook("mic"))
        .with(HostHook("fd"))
        .with(Cam::default());
    assert_eq!(m.hook_names(), ["fd", "cam"]);
    let m = m.with(Fdm::default());
    assert_eq!(m.hook_names(), ["cam", "fdm"]);
    // Attached after the plugin, the host hook is left out too.
    let m = m.with(HostHook("mic"));
    assert_eq!(m.hook_names(), ["cam", "fdm"]);
    let replaced: Vec<(String, String)> = m.replaced_hooks().to_vec();
    assert_eq!(
        replaced,
        [
            ("mic".into(), "cam".into()),
            ("fd".into(), "fdm".into()),
            ("mic".into(), "cam".into())
        ] as [(String, String); 3]
    );
}

/// On the real hosts: CAM takes the place of MIC's masked term on
/// MIC(DAFormer), FDM the place of DAFormer's feature distance.
#[test]
fn on_the_real_hosts_cam_replaces_mic_and_fdm_replaces_fd() {
    let mut cfg = tiny();
    let host = |name: &str, cfg: &RunConfig| build_method(name, cfg, &Device::Cpu).unwrap();
    assert!(host("mic_daformer", &cfg)
        .hook_names()
        .contains(&"mic".to_string()));
    assert!(host("daformer", &cfg)
        .hook_names()
        .contains(&"fd".to_string()));
    cfg.plugins = vec!["cam".into(), "fdm".into(), "cdm".into()];
    let m = attach_plugins(host("mic_daformer", &cfg), &cfg).unwrap();
    let names = m.hook_names();
    assert!(!names.contains(&"mic".to_string()) && !names.contains(&"fd".to_string()));
    assert!(
        names.ends_with(&["cam".into(), "fdm".into(), "cdm".into()]),
        "{names:?}"
    );
    let m = attach_plugins(host("daformer", &cfg), &cfg).unwrap();
    assert!(!m.hook_names().contains(&"fd".to_string()));
    assert_eq!(
        m.replaced_hooks().to_vec(),
        [("fd".to_string(), "fdm".to_string())]
    );
}

#[test]
fn plugins_from_the_configuration() {
    let text = "methods = [\"dacs\"]\nplugins = [\"cdm\", \"cam\"]\n[plugin.cam]\nbg_mask_ratio = 0.5\n[plugin.cdm]\nmode = \"soft\"\n";
    let cfg = RunConfig::from_toml_str(text, "test.toml").unwrap();
    assert_eq!(cfg.plugins, ["cdm", "cam"]);
    assert_eq!(cfg.plugin.cam.bg_mask_ratio, 0.5);
    let back = RunConfig::from_toml_str(&cfg.to_toml().unwrap(), "round-trip").unwrap();
    assert_eq!(back, cfg);
    let m = attach_plugins(build_method("dacs", &cfg, &Device::Cpu).unwrap(), &cfg).unwrap();
    assert_eq!(m.hook_names(), ["cdm", "cam"]);
    // Source-only has no target side: nothing is attached.
    let m = attach_plugins(
        build_method("source_only", &cfg, &Device::Cpu).unwrap(),
        &cfg,
    )
    .unwrap();
    assert!(m.hook_names().is_empty());
    for (bad, key) in [
        ("plugins = [\"cutmix\"]\n", "cutmix"),
        (
            "[plugin.cam]\nfg_mask_ratio = 1.5\n",
            "plugin.cam.fg_mask_ratio",
        ),
        ("[plugin.fdm]\nmask_ratoi = 0.5\n", "mask_ratoi"),
        (
            "plugins = [\"cam\"]\n[plugin]\nthing_classes = [30]\n",
            "plugin.thing_classes",
        ),
        ("[plugin.cdm]\nmode = \"medium\"\n", "medium"),
        (
            "[plugin.cdm]\nclass_balanced = \"sometimes\"\n",
            "true, false or \"auto\"",
        ),
    ] {
        let e = RunConfig::from_toml_str(bad, "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{bad}: {e}");
    }
}

#[test]
fn fdm_encoder_file_is_checked() {
    let mut cfg = tiny();
    cfg.plugin.fdm.encoder = Some("/nonexistent/encoder.safetensors".into());
    let mut m = Dacs::new(base_spec("dacs", &cfg), &Device::Cpu)
        .unwrap()
        .with(Fdm::new(
            cfg.plugin.fdm.clone(),
            cfg.plugin.thing_classes.clone(),
        ));
    let e = m
        .step(&loader(&cfg).next_batch().unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("encoder.safetensors"), "{e}");
    // A checkpoint of the same model is a valid encoder file.
    let dir = tempfile::tempdir().unwrap();
    let src = Dacs::new(base_spec("dacs", &cfg), &Device::Cpu).unwrap();
    src.save_state(dir.path()).unwrap();
    let mut fdm_cfg = cfg.plugin.fdm.clone();
    fdm_cfg.encoder = Some(dir.path().join("student.safetensors"));
    let mut m = Dacs::new(base_spec("dacs", &cfg), &Device::Cpu)
        .unwrap()
        .with(Fdm::new(fdm_cfg, cfg.plugin.thing_classes.clone()));
    let log = m.step(&loader(&cfg).next_batch().unwrap()).unwrap();
    assert!(log.losses.iter().all(|(_, v)| v.is_finite()));
}

/// CDM keeps the host's pseudo-label crop, scaled to the frame as the step
/// scales it: DAFormer's rows 15 / 120 of a 512-high crop leave the middle
/// of a 32-high frame (an unscaled crop would zero every row).
#[test]
fn cdm_keeps_the_hosts_pseudo_label_crop_scaled_to_the_frame() {
    let mut cfg = tiny();
    cfg.uda.pseudo_label_crop = Some([15, 120]);
    let mut spec = base_spec("dacs", &cfg);
    spec.uda.pseudo_label_crop = Some([15, 120]);
    let cdm = Cdm::new(CdmConfig {
        threshold: Some(0.0),
        ..CdmConfig::default()
    });
    let mut m = Dacs::new(spec.clone(), &Device::Cpu).unwrap().with(cdm);
    let log = m.step(&loader(&cfg).next_batch().unwrap()).unwrap();
    let mean = log
        .metrics
        .iter()
        .find(|(n, _)| n == "cdm.weight_mean")
        .unwrap()
        .1;
    // Every pixel passes a threshold of 0; only the scaled crop zeroes rows.
    let [top, bottom] = omuda::core::data::valid_region::scaled_row_crop(
        [15, 120],
        spec.uda.pseudo_label_crop_height,
        32,
    );
    let kept = (32 - top - bottom) as f64 / 32.0;
    assert!(
        (mean - kept).abs() < 1e-6,
        "weight mean {mean}, kept rows {kept}"
    );
    assert!(mean > 0.5);
}

/// FDM's unmasked term is DAFormer's feature distance: on the first step of
/// the DAFormer host, `loss_fdm_whole / unmasked_weight` (FDM's cells and
/// label downscaling) equals `loss_fd / lambda` (the feature-distance hook's
/// own), the same student features against the same frozen encoder. Also on
/// HRDA, whose features are of the context image (`feature_input`).
#[test]
fn fdm_unmasked_term_equals_the_feature_distance_it_replaces() {
    let mut daformer = tiny();
    daformer.data.synth.height = 64;
    daformer.data.synth.width = 128;
    let hrda = omuda::presets::resolve("synth-hrda", "test").unwrap();
    for (host, mut cfg) in [("daformer", daformer), ("hrda", hrda)] {
        // Stride 16 and a lower majority share, so that small frames have thing cells.
        cfg.fd.layer = -2;
        cfg.fd.min_ratio = 0.5;
        cfg.plugin.fdm.layer = -2;
        cfg.plugin.fdm.downscale_label_ratio = 0.5;
        cfg.plugin.fdm.unmasked_weight = 0.3;
        let batch = omuda::run::build_batch_source(&cfg, host, &Device::Cpu)
            .unwrap()
            .next_batch()
            .unwrap();
        let loss = |log: &omuda::core::train::StepLog, name: &str| {
            log.losses
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("{host}: no {name} in {:?}", log.losses))
                .1
        };
        let mut plain = build_method(host, &cfg, &Device::Cpu).unwrap();
        let fd = loss(&plain.step(&batch).unwrap(), "fd.loss_fd") / cfg.fd.lambda;
        assert!(
            fd > 0.0,
            "{host}: no thing cell in the batch: the check would be empty"
        );

        cfg.plugins = vec!["fdm".into()];
        let mut with_fdm =
            attach_plugins(build_method(host, &cfg, &Device::Cpu).unwrap(), &cfg).unwrap();
        let log = with_fdm.step(&batch).unwrap();
        let whole = loss(&log, "fdm.loss_fdm_whole") / 0.3;
        assert!(
            (whole - fd).abs() <= 1e-5 * fd.abs(),
            "{host}: FDM unmasked {whole} against FD {fd}"
        );
        // The masked term is a different distance (masked input).
        let masked = loss(&log, "fdm.loss_fdm_src") / cfg.plugin.fdm.weight;
        assert!(
            (masked - fd).abs() > 1e-4 * fd.abs(),
            "{host}: {masked} vs {fd}"
        );
    }
}

/// Reads how the step averages the target part.
struct AveragingProbe(std::sync::Arc<std::sync::Mutex<Option<TargetAveraging>>>);
impl StepHook for AveragingProbe {
    fn name(&self) -> &str {
        "probe"
    }
    fn extra_losses(
        &mut self,
        view: &StepView,
        _rng: &mut ChaCha8Rng,
    ) -> omuda::Result<Vec<NamedLoss>> {
        *self.0.lock().unwrap() = Some(view.target_averaging);
        Ok(Vec::new())
    }
}

/// CDM's `class_balanced = "auto"` (the default) averages per class, except
/// when CAM's context mix runs in the same step; `true` and `false` are
/// taken as given. The setting reads back as written.
#[test]
fn cdm_class_balancing_auto_is_off_beside_cams_context_mix() {
    let batch = loader(&tiny()).next_batch().unwrap();
    let cases: [(&str, &[&str], bool, TargetAveraging); 6] = [
        ("auto", &["cdm"], true, TargetAveraging::ClassBalanced),
        ("auto", &["cam", "cdm"], true, TargetAveraging::PerPixel),
        ("auto", &["cdm", "cam"], true, TargetAveraging::PerPixel),
        // CAM without its context mix pastes ClassMix's half of the classes.
        (
            "auto",
            &["cam", "cdm"],
            false,
            TargetAveraging::ClassBalanced,
        ),
        (
            "true",
            &["cam", "fdm", "cdm"],
            true,
            TargetAveraging::ClassBalanced,
        ),
        ("false", &["cdm"], true, TargetAveraging::PerPixel),
    ];
    for (setting, plugins, context_mix, want) in cases {
        let value = if setting == "auto" {
            "\"auto\""
        } else {
            setting
        };
        let list: Vec<String> = plugins.iter().map(|p| format!("{p:?}")).collect();
        let text = format!(
            "methods = [\"dacs\"]\nplugins = [{}]\n[plugin.cam]\ncontext_mix = {context_mix}\n\
             [plugin.cdm]\nclass_balanced = {value}\n[train]\niters = 3\n\
             [data.synth]\nheight = 32\nwidth = 64\n",
            list.join(", ")
        );
        let cfg = RunConfig::from_toml_str(&text, "test.toml").unwrap();
        let back = RunConfig::from_toml_str(&cfg.to_toml().unwrap(), "round-trip").unwrap();
        assert_eq!(back, cfg, "{text}");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let mut m = attach_plugins(build_method("dacs", &cfg, &Device::Cpu).unwrap(), &cfg)
            .unwrap()
            .with(AveragingProbe(seen.clone()));
        m.step(&batch).unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            Some(want),
            "{setting} {plugins:?} {context_mix}"
        );
    }
    // `with_omuda` attaches the default CAM (context mix) beside CDM.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let cfg = tiny();
    let mut m = with_omuda(Dacs::new(base_spec("dacs", &cfg), &Device::Cpu).unwrap())
        .with(AveragingProbe(seen.clone()));
    m.step(&batch).unwrap();
    assert_eq!(*seen.lock().unwrap(), Some(TargetAveraging::PerPixel));
    // The Rust API: alone, and beside the context mix.
    assert!(Cdm::default().class_balanced());
    assert!(!Cdm::default().beside_context_mix(true).class_balanced());
    assert!(Cdm::new(CdmConfig {
        class_balanced: true.into(),
        ..CdmConfig::default()
    })
    .beside_context_mix(true)
    .class_balanced());
}
