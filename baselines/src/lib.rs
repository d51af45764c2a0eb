//! The baseline UDA methods, each a configuration of omuda-core's shared
//! self-training step (`omuda_core::train::SelfTraining`); none copies it.
//! Components that add a loss are hooks of that step (`fd.rs`, `mic.rs`).
//!
//! | method | file | what it sets |
//! |---|---|---|
//! | source-only | `source_only.rs` | no teacher, no target loss |
//! | DACS (mmseg re-implementation) | `dacs.rs` | EMA teacher α 0.99, τ 0.968, ClassMix over the batch union, strong augmentation after mixing |
//! | DAFormer | `daformer.rs` | DACS step + thing-class feature distance (`fd.rs`, hook `"fd"`); α 0.999, pseudo-label crop, RCS and the DAFormer network come from the configuration (`configs/daformer-*.toml`) |
//! | HRDA | `hrda.rs` | DAFormer's step and FD + multi-resolution objective (`omuda_core::train::multires`) and the scale-attention head |
//! | MIC(host) | `mic.rs` | host + masked image consistency (hook `"mic"`): `mic_dacs`, `mic_daformer`, `mic_hrda` |

pub mod dacs;
pub mod daformer;
pub mod fd;
pub mod hrda;
pub mod mic;
pub mod source_only;

pub use dacs::Dacs;
pub use daformer::Daformer;
pub use fd::FeatureDistance;
pub use hrda::Hrda;
pub use mic::Mic;
pub use source_only::SourceOnly;

use candle_core::Device;
use omuda_core::config::RunConfig;
use omuda_core::train::step::SelfTrainingSpec;
use omuda_core::train::SelfTraining;
use omuda_core::{Error, Result};

/// Names accepted by [`build_method`].
pub const METHOD_NAMES: [&str; 8] = [
    "source_only",
    "dacs",
    "oracle",
    "daformer",
    "hrda",
    "mic_dacs",
    "mic_daformer",
    "mic_hrda",
];

/// The spec every baseline starts from: the run's model, optimizer, schedule
/// (its length = `train.iters`) and seed.
pub fn base_spec(name: &str, cfg: &RunConfig) -> SelfTrainingSpec {
    SelfTrainingSpec {
        name: name.to_string(),
        model: cfg.model.clone(),
        uda: cfg.uda.clone(),
        optimizer: cfg.optimizer.clone(),
        schedule: cfg.schedule.poly(cfg.train.iters),
        seed: cfg.seed,
    }
}

/// Build a method by name. `oracle` is source-only training whose labelled
/// domain is the target (the loader decides which domain it reads). A
/// `mic_<host>` method is `<host>` built under the `mic_<host>` name with
/// [`Mic`] attached.
pub fn build_method(name: &str, cfg: &RunConfig, device: &Device) -> Result<SelfTraining> {
    match name {
        "source_only" => SourceOnly::new(cfg, device),
        "oracle" => SourceOnly::named("oracle", cfg, device),
        "dacs" => Dacs::new(cfg, device),
        "daformer" => Daformer::new(cfg, device),
        "mic_dacs" => Ok(Mic::wrap(Dacs::named("mic_dacs", cfg, device)?, &cfg.mic)),
        "mic_daformer" => Ok(Mic::wrap(
            Daformer::named("mic_daformer", cfg, device)?,
            &cfg.mic,
        )),
        "hrda" => Hrda::new(cfg, device),
        "mic_hrda" => Ok(Mic::wrap(Hrda::named("mic_hrda", cfg, device)?, &cfg.mic)),
        other => Err(Error::Config {
            origin: "methods".into(),
            message: format!(
                "unknown method {other:?}; available: {}",
                METHOD_NAMES.join(", ")
            ),
        }),
    }
}

/// Construct a [`SelfTraining`] from a spec (shared by the baseline files).
pub(crate) fn build(spec: SelfTrainingSpec, device: &Device) -> Result<SelfTraining> {
    SelfTraining::new(spec, device)
}
