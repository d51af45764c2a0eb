//! Masking plugins: the trait they implement and their configuration.
//!
//! A masking plugin is a [`StepHook`](crate::train::hooks::StepHook) of the
//! shared self-training step; [`MaskingPlugin`] is the same trait under the
//! name the plugin crate (`omuda-plugins`) and its docs use. The
//! configuration of the three OMUDA plugins (CAM, FDM, CDM) lives here so the
//! run configuration can hold it (`plugins = ["cam", "fdm", "cdm"]` and the
//! `[plugin.cam]`, `[plugin.fdm]`, `[plugin.cdm]` tables).
//!
//! The designs are this project's own reading of the OMUDA abstract (Ou et
//! al., arXiv 2512.12303); see `docs/omuda.md`. Every constant is a field
//! here, with the design's default.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::classes::THING_CLASSES;
use crate::ops::augment::StrongAugConfig;

/// The plugin trait: every hook point of the shared step, each with a
/// do-nothing default.
pub use crate::train::hooks::StepHook as MaskingPlugin;

/// Names accepted in `plugins = [...]`, in the order `with_omuda` attaches them.
pub const PLUGIN_NAMES: [&str; 3] = ["cam", "fdm", "cdm"];

/// Settings shared by the plugins and one table per plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Foreground ("thing") class ids; every other valid class is background
    /// ("stuff"). Default: DAFormer's Cityscapes thing trainIds.
    pub thing_classes: Vec<u32>,
    pub cam: CamConfig,
    pub fdm: FdmConfig,
    pub cdm: CdmConfig,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            thing_classes: THING_CLASSES.iter().map(|&c| u32::from(c)).collect(),
            cam: CamConfig::default(),
            fdm: FdmConfig::default(),
            cdm: CdmConfig::default(),
        }
    }
}

/// Block size in pixels for an image of height `height`: `block_size` at
/// `reference_height`, scaled linearly, at least 1 (MIC: 64 px on 1024-high
/// crops, 32 px on 512-high crops).
pub fn scaled_block(block_size: usize, reference_height: usize, height: usize) -> usize {
    if reference_height == 0 {
        return block_size.max(1);
    }
    ((block_size as f64 * height as f64 / reference_height as f64).round() as usize).max(1)
}

/// CAM, Context-Aware Masking: a masked-consistency loss on the target whose
/// block mask depends on the pseudo-label's foreground share per block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CamConfig {
    /// Block size `b` in pixels at `reference_height` (MIC: 64 at 1024).
    pub block_size: usize,
    /// Image height at which `block_size` applies; `b` scales with the crop
    /// height. 0: use `block_size` as is.
    pub reference_height: usize,
    /// A block is foreground if the share of its pixels whose pseudo-label is
    /// a thing class is at least this.
    pub fg_min_fraction: f32,
    /// Probability that a background block is masked (at block size `b`).
    pub bg_mask_ratio: f32,
    /// Probability that a sub-block of a foreground block is masked.
    pub fg_mask_ratio: f32,
    /// Foreground blocks are split into sub-blocks of `b / fg_block_divisor`.
    pub fg_block_divisor: usize,
    /// Loss weight λ_cam.
    pub weight: f64,
    /// Colour jitter and blur of the target before masking (fresh draws; MIC's
    /// defaults).
    pub aug: StrongAugConfig,
    /// ClassMix pastes only thing classes from the source (keeps the target's
    /// stuff layout). Ablation switch.
    pub context_mix: bool,
}

impl Default for CamConfig {
    fn default() -> Self {
        Self {
            block_size: 64,
            reference_height: 1024,
            fg_min_fraction: 0.1,
            bg_mask_ratio: 0.7,
            fg_mask_ratio: 0.3,
            fg_block_divisor: 2,
            weight: 1.0,
            aug: StrongAugConfig::default(),
            context_mix: false,
        }
    }
}

/// FDM, Feature Distillation Masking: masked feature distillation from a
/// frozen encoder `E₀`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FdmConfig {
    /// Probability that an input block is masked.
    pub mask_ratio: f32,
    /// Mask block size at `reference_height` (scaled with the crop like CAM's).
    pub block_size: usize,
    pub reference_height: usize,
    /// Also distil on the target batch (labels = pseudo-labels).
    pub on_target: bool,
    /// Encoder level whose features are distilled; negative counts from the
    /// end (-1: the last, stride 32).
    pub layer: i64,
    /// A feature cell gets the label of its majority class when that class
    /// covers at least this share of the cell (DAFormer `downscale_label_ratio`).
    pub downscale_label_ratio: f32,
    /// Loss weight λ_fdm.
    pub weight: f64,
    /// Safetensors file with the frozen encoder's weights (names as the
    /// student's, e.g. `segformer.encoder.*`). None: the weights the student
    /// was initialised from (same model, same seed). `{seed}` in the path is
    /// replaced by the run's seed.
    pub encoder: Option<PathBuf>,
}

impl Default for FdmConfig {
    fn default() -> Self {
        Self {
            mask_ratio: 0.5,
            block_size: 64,
            reference_height: 1024,
            on_target: true,
            layer: -1,
            downscale_label_ratio: 0.75,
            weight: 0.005,
            encoder: None,
        }
    }
}

/// How CDM turns confidence into a pixel weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CdmMode {
    /// `w = 1[conf ≥ τ_ŷ]`.
    Hard,
    /// `w = min(1, conf / τ_ŷ)`.
    Soft,
}

/// CDM, Class Decoupling Masking: class-wise pseudo-label weights from running
/// class confidence statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CdmConfig {
    /// EMA momentum `m` of the per-class mean confidence μ_c.
    pub momentum: f64,
    /// Base threshold τ; None: the host's pseudo-label threshold (0.968).
    pub threshold: Option<f32>,
    pub mode: CdmMode,
    /// Average the target part of the mixed (and masked) losses per class,
    /// then over the classes present.
    pub class_balanced: bool,
}

impl Default for CdmConfig {
    fn default() -> Self {
        Self {
            momentum: 0.999,
            threshold: None,
            mode: CdmMode::Hard,
            class_balanced: true,
        }
    }
}

impl PluginsConfig {
    /// Range checks; each message names the key (`plugin.cam.bg_mask_ratio`, …).
    pub fn validate(&self, num_classes: usize) -> std::result::Result<(), String> {
        let prob = |key: &str, v: f32| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("plugin.{key} = {v}: expected a value in [0, 1]"))
            }
        };
        let weight = |key: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(format!("plugin.{key} = {v}: expected a finite value >= 0"))
            }
        };
        if let Some(c) = self
            .thing_classes
            .iter()
            .find(|&&c| c as usize >= num_classes)
        {
            return Err(format!(
                "plugin.thing_classes contains {c}: expected class ids below {num_classes}"
            ));
        }
        let c = &self.cam;
        prob("cam.fg_min_fraction", c.fg_min_fraction)?;
        prob("cam.bg_mask_ratio", c.bg_mask_ratio)?;
        prob("cam.fg_mask_ratio", c.fg_mask_ratio)?;
        weight("cam.weight", c.weight)?;
        if c.block_size == 0 {
            return Err("plugin.cam.block_size must be at least 1".into());
        }
        if c.fg_block_divisor == 0 {
            return Err("plugin.cam.fg_block_divisor must be at least 1".into());
        }
        c.aug
            .validate()
            .map_err(|e| format!("plugin.cam.aug: {e}"))?;
        let f = &self.fdm;
        prob("fdm.mask_ratio", f.mask_ratio)?;
        prob("fdm.downscale_label_ratio", f.downscale_label_ratio)?;
        weight("fdm.weight", f.weight)?;
        if f.block_size == 0 {
            return Err("plugin.fdm.block_size must be at least 1".into());
        }
        let d = &self.cdm;
        if !(0.0..=1.0).contains(&d.momentum) {
            return Err(format!(
                "plugin.cdm.momentum = {}: expected a value in [0, 1]",
                d.momentum
            ));
        }
        if let Some(t) = d.threshold {
            if !(t > 0.0 && t <= 1.0) {
                return Err(format!(
                    "plugin.cdm.threshold = {t}: expected a value in (0, 1]"
                ));
            }
        }
        Ok(())
    }
}
