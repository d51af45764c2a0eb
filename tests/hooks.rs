//! The hook points of the shared step: each is called once per iteration, in
//! order, sees the step's tensors, and what it changes is what the step uses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use omuda::core::data::loader::SynthPairLoader;
use omuda::core::data::synth::Domain;
use omuda::core::ops::pseudo::PseudoLabels;
use omuda::core::train::{ChaCha8Rng, NamedLoss, StepHook, StepView};
use omuda::{build_method, RunConfig};

/// Records the calls and forces a visible effect at each hook point.
struct Probe {
    calls: Arc<Mutex<Vec<String>>>,
    after_steps: f32,
}

impl StepHook for Probe {
    fn name(&self) -> &str {
        "probe"
    }

    fn on_pseudo_labels(
        &mut self,
        pseudo: &mut PseudoLabels,
        view: &StepView,
        _rng: &mut ChaCha8Rng,
    ) -> omuda::Result<()> {
        assert!(view.source_features.is_some());
        assert!(view.teacher.is_some());
        // Every pseudo-label becomes class 1 with weight 0.25.
        pseudo.label = (pseudo.label.zeros_like()? + 1.0)?;
        pseudo.weight = (pseudo.weight.ones_like()? * 0.25)?;
        self.calls.lock().unwrap().push("pseudo".into());
        Ok(())
    }

    fn on_mix_masks(
        &mut self,
        masks: &mut Vec<Tensor>,
        view: &StepView,
        _rng: &mut ChaCha8Rng,
    ) -> omuda::Result<()> {
        // The rewrite of the previous hook point is visible here.
        let w = view
            .pseudo
            .unwrap()
            .weight
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert!(w.iter().all(|&v| v == 0.25));
        // Paste nothing: the mixed batch is the target with its pseudo-labels.
        for m in masks.iter_mut() {
            *m = m.zeros_like()?;
        }
        self.calls.lock().unwrap().push("mix".into());
        Ok(())
    }

    fn extra_losses(
        &mut self,
        view: &StepView,
        _rng: &mut ChaCha8Rng,
    ) -> omuda::Result<Vec<NamedLoss>> {
        let mixed = view.mixed.unwrap();
        let labels = mixed.label.flatten_all()?.to_vec1::<u32>()?;
        assert!(
            labels.iter().all(|&l| l == 1),
            "labels come from the rewritten pseudo-labels only"
        );
        let w = mixed.weight.flatten_all()?.to_vec1::<f32>()?;
        assert!(
            w.iter().all(|&v| v == 0.25),
            "weights come from the rewritten pseudo-weights only"
        );
        self.calls.lock().unwrap().push("extra".into());
        Ok(vec![NamedLoss {
            name: "loss_const".into(),
            value: Tensor::new(0.5f32, &Device::Cpu)?,
        }])
    }

    fn after_step(&mut self, view: &StepView) -> omuda::Result<()> {
        self.after_steps += 1.0;
        self.calls
            .lock()
            .unwrap()
            .push(format!("after {}", view.iter));
        Ok(())
    }

    fn metrics(&self) -> Vec<(String, f64)> {
        vec![("after_steps".into(), self.after_steps as f64)]
    }

    fn state(&self) -> omuda::Result<HashMap<String, Tensor>> {
        Ok(HashMap::from([(
            "after_steps".to_string(),
            Tensor::new(&[self.after_steps], &Device::Cpu)?,
        )]))
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> omuda::Result<()> {
        self.after_steps = state["after_steps"]
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?[0];
        Ok(())
    }
}

fn tiny() -> RunConfig {
    let mut cfg = RunConfig::default();
    cfg.train.iters = 2;
    cfg.data.synth.height = 32;
    cfg.data.synth.width = 64;
    cfg
}

#[test]
fn hooks_are_called_in_order_and_their_changes_are_used() {
    let cfg = tiny();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut dacs = build_method("dacs", &cfg, &Device::Cpu)
        .unwrap()
        .with(Probe {
            calls: calls.clone(),
            after_steps: 0.0,
        });
    let mut data = SynthPairLoader::new(
        cfg.data.synth.clone(),
        cfg.data.dataset_seed,
        Domain::Source,
        2,
        0,
        &Device::Cpu,
    );
    let log0 = dacs.step(&data.next_batch().unwrap()).unwrap();
    let log1 = dacs.step(&data.next_batch().unwrap()).unwrap();
    assert_eq!(
        *calls.lock().unwrap(),
        ["pseudo", "mix", "extra", "after 0", "pseudo", "mix", "extra", "after 1"]
    );
    let names: Vec<&str> = log1.losses.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["loss_src", "loss_mix", "probe.loss_const"]);
    assert_eq!(log1.losses[2].1, 0.5);
    assert!(log0
        .metrics
        .contains(&("probe.after_steps".to_string(), 1.0)));
    assert!(log1
        .metrics
        .contains(&("probe.after_steps".to_string(), 2.0)));

    // Hook state travels with the checkpoint.
    let dir = tempfile::tempdir().unwrap();
    dacs.save_state(dir.path()).unwrap();
    assert!(dir.path().join("hook_probe.safetensors").is_file());
    let mut restored = build_method("dacs", &cfg, &Device::Cpu)
        .unwrap()
        .with(Probe {
            calls: Arc::new(Mutex::new(Vec::new())),
            after_steps: 0.0,
        });
    restored.load_state(dir.path()).unwrap();
    let log2 = restored.step(&data.next_batch().unwrap()).unwrap();
    assert!(log2
        .metrics
        .contains(&("probe.after_steps".to_string(), 3.0)));
}

#[test]
fn source_only_calls_no_target_hooks() {
    let cfg = tiny();
    let calls = Arc::new(Mutex::new(Vec::new()));
    struct Counter(Arc<Mutex<Vec<String>>>);
    impl StepHook for Counter {
        fn name(&self) -> &str {
            "counter"
        }
        fn on_pseudo_labels(
            &mut self,
            _: &mut PseudoLabels,
            _: &StepView,
            _: &mut ChaCha8Rng,
        ) -> omuda::Result<()> {
            self.0.lock().unwrap().push("pseudo".into());
            Ok(())
        }
        fn extra_losses(
            &mut self,
            view: &StepView,
            _: &mut ChaCha8Rng,
        ) -> omuda::Result<Vec<NamedLoss>> {
            assert!(view.pseudo.is_none() && view.mixed.is_none() && view.teacher.is_none());
            self.0.lock().unwrap().push("extra".into());
            Ok(Vec::new())
        }
    }
    let mut m = build_method("source_only", &cfg, &Device::Cpu)
        .unwrap()
        .with(Counter(calls.clone()));
    let mut data = SynthPairLoader::new(
        cfg.data.synth.clone(),
        cfg.data.dataset_seed,
        Domain::Source,
        2,
        0,
        &Device::Cpu,
    );
    m.step(&data.next_batch().unwrap()).unwrap();
    assert_eq!(*calls.lock().unwrap(), ["extra"]);
}
