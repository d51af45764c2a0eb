//! The OMUDA masking plugins for the shared self-training step of
//! `omuda-core`: [`Cam`] (Context-Aware Masking), [`Fdm`] (Feature
//! Distillation Masking) and [`Cdm`] (Class Decoupling Masking).
//!
//! The OMUDA paper (Ou et al., arXiv 2512.12303) was available only as its
//! abstract: these designs are this project's own reading of it, built on the
//! documented baselines (MIC's masked consistency, DAFormer's feature
//! distance, DACS's pseudo-label weight). Every constant is a field of the
//! plugin's settings ([`CamConfig`], [`FdmConfig`], [`CdmConfig`], gathered in
//! [`PluginsConfig`]); see `docs/omuda.md`.
//!
//! A plugin is a [`StepHook`] of the shared step and wraps any baseline built
//! on it:
//!
//! ```
//! use omuda_core::train::SelfTraining;
//! use omuda_plugins::{with_omuda, Cam};
//! // `dacs` is any baseline built on the shared step, e.g. `omuda::Dacs::new(spec, &device)?`.
//! fn one_plugin(dacs: SelfTraining) -> SelfTraining {
//!     dacs.with(Cam::default())
//! }
//! fn all_three(dacs: SelfTraining) -> SelfTraining {
//!     with_omuda(dacs) // CAM, FDM and CDM
//! }
//! ```
//!
//! Order: [`with_omuda`] and [`attach`] attach CAM, FDM, CDM in that order.
//! Each hook point runs the plugins in the order attached; CDM rewrites the
//! pseudo-label weights at `on_pseudo_labels`, which comes before every loss,
//! so CAM's masked loss already uses CDM's weights and averaging.

pub mod cam;
pub mod cdm;
pub mod config;
pub mod fdm;
pub mod masks;

pub use cam::{Cam, CamConfig};
pub use cdm::{Cdm, CdmConfig, CdmMode, ClassBalancing};
pub use config::{PluginsConfig, PLUGIN_NAMES};
pub use fdm::{Fdm, FdmConfig};

use omuda_core::train::{SelfTraining, StepHook};
use omuda_core::{Error, Result};

/// `method` with CAM, FDM and CDM attached (in that order), default settings
/// (CDM's `class_balanced = "auto"` resolved beside CAM's context mix).
pub fn with_omuda(method: SelfTraining) -> SelfTraining {
    let cfg = PluginsConfig::default();
    let context_mix = cfg.cam.context_mix;
    method
        .with(Cam::new(cfg.cam.clone(), cfg.thing_classes.clone()))
        .with(Fdm::new(cfg.fdm.clone(), cfg.thing_classes.clone()))
        .with(Cdm::new(cfg.cdm.clone()).beside_context_mix(context_mix))
}

/// One plugin by name (`"cam"`, `"fdm"`, `"cdm"`) with the settings of `cfg`,
/// alone (CDM's `class_balanced = "auto"` resolved without CAM).
pub fn build_plugin(name: &str, cfg: &PluginsConfig) -> Result<Box<dyn StepHook>> {
    build_in_set(name, cfg, false)
}

/// One plugin of a set; `context_mix`: CAM with its context mix is in the set.
fn build_in_set(name: &str, cfg: &PluginsConfig, context_mix: bool) -> Result<Box<dyn StepHook>> {
    Ok(match name {
        "cam" => Box::new(Cam::new(cfg.cam.clone(), cfg.thing_classes.clone())),
        "fdm" => Box::new(Fdm::new(cfg.fdm.clone(), cfg.thing_classes.clone())),
        "cdm" => Box::new(Cdm::new(cfg.cdm.clone()).beside_context_mix(context_mix)),
        other => {
            return Err(Error::Config {
                origin: "plugins".into(),
                message: format!(
                    "unknown plugin {other:?}; available: {}",
                    PLUGIN_NAMES.join(", ")
                ),
            })
        }
    })
}

/// `method` with the plugins `names` attached in the given order (the
/// `plugins = [...]` list of a run configuration).
pub fn attach(
    mut method: SelfTraining,
    names: &[String],
    cfg: &PluginsConfig,
) -> Result<SelfTraining> {
    let context_mix = cfg.cam.context_mix && names.iter().any(|n| n == "cam");
    for name in names {
        method.add_hook(build_in_set(name, cfg, context_mix)?);
    }
    Ok(method)
}
