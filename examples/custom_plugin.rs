//! A new masking plugin in a few lines: CutMix-style mixing. It replaces the
//! ClassMix masks of the shared step by one random rectangle per image
//! (covering `area` of the image on average), wraps DACS, and trains a few
//! iterations on the built-in synthetic pair.
//!
//! `cargo run --release --example custom_plugin`

use candle_core::{Device, Tensor};
use omuda::core::data::loader::SynthPairLoader;
use omuda::core::data::synth::{Domain, Split};
use omuda::core::eval::evaluate_synth;
use omuda::core::train::{ChaCha8Rng, StepView};
use omuda::{build_method, RunConfig, StepHook};
use rand::Rng;

/// Pastes one source rectangle per image instead of the source's classes.
struct CutMix {
    /// Mean share of the image the rectangle covers.
    area: f64,
    /// Realised pasted share of the last step, logged as `cutmix.pasted`.
    pasted: f64,
}

impl StepHook for CutMix {
    fn name(&self) -> &str {
        "cutmix"
    }

    fn on_mix_masks(
        &mut self,
        masks: &mut Vec<Tensor>,
        _view: &StepView,
        rng: &mut ChaCha8Rng,
    ) -> omuda::Result<()> {
        let mut pasted = 0.0;
        for m in masks.iter_mut() {
            let (h, w) = m.dims2()?;
            // Side ratio r with r² ~ U(0, 2·area): the rectangle covers `area` on average.
            let r = rng.gen_range(0.0..2.0 * self.area).sqrt();
            let (rh, rw) = (((h as f64) * r) as usize, ((w as f64) * r) as usize);
            let (y0, x0) = (rng.gen_range(0..=h - rh), rng.gen_range(0..=w - rw));
            let data: Vec<f32> = (0..h * w)
                .map(|i| {
                    let (y, x) = (i / w, i % w);
                    if (y0..y0 + rh).contains(&y) && (x0..x0 + rw).contains(&x) {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect();
            pasted += (rh * rw) as f64 / (h * w) as f64;
            *m = Tensor::from_vec(data, (h, w), m.device())?.to_dtype(m.dtype())?;
        }
        self.pasted = pasted / masks.len().max(1) as f64;
        Ok(())
    }

    fn metrics(&self) -> Vec<(String, f64)> {
        vec![("pasted".into(), self.pasted)]
    }
}

fn main() -> omuda::Result<()> {
    let device = Device::Cpu;
    let mut cfg = RunConfig::default();
    cfg.train.iters = 20;
    cfg.data.synth.height = 64;
    cfg.data.synth.width = 128;
    cfg.data.synth.val_size = 8;
    cfg.data.synth.dev_size = 8;
    cfg.data.synth.test_size = 8;

    // Any baseline built on the shared step takes the plugin the same way.
    let mut method = build_method("dacs", &cfg, &device)?.with(CutMix {
        area: 0.5,
        pasted: 0.0,
    });
    let mut data = SynthPairLoader::new(
        cfg.data.synth.clone(),
        cfg.data.dataset_seed,
        Domain::Source,
        2,
        cfg.seed,
        &device,
    );
    for _ in 0..cfg.train.iters {
        let log = method.step(&data.next_batch()?)?;
        println!(
            "iter {:>3}  {:?}  {:?}",
            log.iter,
            log.losses,
            log.metrics.iter().find(|(k, _)| k == "cutmix.pasted")
        );
    }
    let report = evaluate_synth(
        &cfg.data.synth,
        cfg.data.dataset_seed,
        Domain::Target,
        Split::Test,
        &cfg.eval,
        &device,
        &|x| Ok(method.predict(x)?),
    )?;
    print!("{}", report.table());
    Ok(())
}
