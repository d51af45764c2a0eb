//! omuda: unsupervised domain adaptation for semantic segmentation, on Candle.
//!
//! This crate re-exports the workspace: [`core`] (ops, networks, data,
//! training, evaluation, config), [`baselines`] (source-only, DACS,
//! DAFormer, HRDA and MIC on one shared step) and [`plugins`] (the OMUDA
//! masking plugins CAM, FDM and CDM).

pub mod plot;
pub mod presets;
pub mod tensorboard;
pub mod visual;

pub use omuda_baselines as baselines;
pub use omuda_core as core;

pub use omuda_baselines::{build_method, Dacs, SourceOnly};
pub use omuda_core::config::RunConfig;
pub use omuda_core::train::{SelfTraining, StepHook, UdaMethod};
pub use omuda_core::{Error, Result};

pub use omuda_plugins as plugins;
pub use omuda_plugins::{with_omuda, Cam, Cdm, Fdm, MaskingPlugin};

/// `method` with the plugins of `cfg.plugins` attached (settings from
/// `cfg.plugin`), in the listed order. Plugins act on the target side of
/// self-training, so a method without it (source-only, oracle) is returned
/// unchanged.
pub fn attach_plugins(method: SelfTraining, cfg: &RunConfig) -> Result<SelfTraining> {
    if !method.spec().uda.self_training || cfg.plugins.is_empty() {
        return Ok(method);
    }
    omuda_plugins::attach(method, &cfg.plugins, &cfg.plugin)
}
