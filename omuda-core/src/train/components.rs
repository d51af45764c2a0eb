//! Settings of the baseline components that attach to the shared step as
//! hooks: DAFormer's thing-class feature distance (`[fd]`, `lhoyer/MIC
//! seg/mmseg/models/uda/dacs.py::DACS.calc_feat_dist`) and MIC's masked image
//! consistency (`[mic]`, `seg/mmseg/models/uda/masking_consistency_module.py`).
//! The defaults are the reference's; the hooks themselves are in
//! `omuda-baselines` (`fd.rs`, `mic.rs`).

use serde::{Deserialize, Serialize};

use crate::data::classes::THING_CLASSES;
use crate::ops::augment::StrongAugConfig;

/// Thing-class ImageNet feature distance (DAFormer `dacs_a999_fdthings.py`:
/// `imnet_feature_dist_lambda=0.005`, `imnet_feature_dist_classes=[6, 7, 11,
/// …, 18]`, `imnet_feature_dist_scale_min_ratio=0.75`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FdConfig {
    /// Loss weight λ (constant from iteration 0; no ramp).
    pub lambda: f64,
    /// Classes whose feature cells are pulled towards the frozen encoder's.
    pub thing_classes: Vec<u32>,
    /// A feature cell keeps its majority class only if that class covers at
    /// least this share of the cell (`downscale_label_ratio`).
    pub min_ratio: f32,
    /// Encoder level compared; negative counts from the end (-1: the last).
    pub layer: i64,
}

impl Default for FdConfig {
    fn default() -> Self {
        Self {
            lambda: 0.005,
            thing_classes: THING_CLASSES.iter().map(|&c| u32::from(c)).collect(),
            min_ratio: 0.75,
            layer: -1,
        }
    }
}

/// Masked image consistency (MIC `configs/mic/gtaHR2csHR_mic_hrda.py`:
/// `mask_mode='separatetrgaug'`, block mask 64 px at full resolution, ratio
/// 0.7, `mask_lambda=1`, colour jitter s 0.2 p 0.2 and blur as DACS's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MicConfig {
    /// Block size `b` in pixels at `reference_height`; `b` scales with the
    /// crop height (64 on 1024-high HRDA crops, 32 on 512-high DAFormer
    /// crops: `experiments.py` id 81). `reference_height = 0`: `b` as is.
    pub block_size: usize,
    pub reference_height: usize,
    /// A block is masked iff its uniform draw is `≤ mask_ratio` (kept iff `>`).
    pub mask_ratio: f32,
    /// Weight of the masked loss (`mask_lambda`): it scales the host's main
    /// term, which is the whole loss except under HRDA, whose detail term
    /// keeps its weight (as MIC scales only `decode.loss_seg`).
    pub lambda: f64,
    /// Colour jitter and blur of the target before masking (fresh draws). The
    /// reference's MIC blur ignores DACS's `uda.strong_aug.blur` flag, so
    /// `aug.blur` here is MIC's own switch (on, as published).
    pub aug: StrongAugConfig,
}

impl Default for MicConfig {
    fn default() -> Self {
        Self {
            block_size: 64,
            reference_height: 1024,
            mask_ratio: 0.7,
            lambda: 1.0,
            aug: StrongAugConfig::default(),
        }
    }
}

impl FdConfig {
    /// Range checks; each message names the key.
    pub fn validate(&self, num_classes: usize) -> std::result::Result<(), String> {
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return Err(format!(
                "fd.lambda = {}: expected a finite value >= 0",
                self.lambda
            ));
        }
        if !(0.0..=1.0).contains(&self.min_ratio) {
            return Err(format!(
                "fd.min_ratio = {}: expected a value in [0, 1]",
                self.min_ratio
            ));
        }
        if let Some(c) = self
            .thing_classes
            .iter()
            .find(|&&c| c as usize >= num_classes)
        {
            return Err(format!(
                "fd.thing_classes contains {c}: expected class ids below {num_classes}"
            ));
        }
        Ok(())
    }
}

impl MicConfig {
    /// Range checks; each message names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.block_size == 0 {
            return Err("mic.block_size must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.mask_ratio) {
            return Err(format!(
                "mic.mask_ratio = {}: expected a value in [0, 1]",
                self.mask_ratio
            ));
        }
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return Err(format!(
                "mic.lambda = {}: expected a finite value >= 0",
                self.lambda
            ));
        }
        self.aug.validate().map_err(|e| format!("mic.aug: {e}"))
    }
}
