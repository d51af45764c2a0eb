//! DAFormer's thing-class ImageNet feature distance as a hook of the shared
//! step (`lhoyer/MIC seg/mmseg/models/uda/dacs.py`, `DACS.calc_feat_dist` and
//! `DACS.masked_feat_dist`).
//!
//! The student's source features (the ones the host's source loss computed,
//! with graph) are pulled, on cells whose downscaled source label is a thing
//! class, towards the features of a frozen copy of the initial network (the
//! "ImageNet" model: same config, same initialisation and pretrained weights,
//! never trained, evaluation mode). The frozen encoder sees
//! `objective.feature_input(x_s)`, the image behind the student's features
//! (HRDA: the downscaled context image, as `lhoyer/HRDA
//! mmseg/models/segmentors/hrda_encoder_decoder.py::HRDAEncoderDecoder.extract_feat`
//! with `feature_scale = 0.5`), so FD needs no method-specific code. The hook
//! is named `"fd"`: OMUDA's FDM replaces it.

use candle_core::Tensor;
use omuda_core::data::classes::THING_CLASSES;
use omuda_core::ops::feature_distance::{
    class_mask, downscale_label_ratio, level_index, masked_feature_distance,
};
use omuda_core::train::frozen_encoder::FrozenEncoder;
use omuda_core::train::{ChaCha8Rng, NamedLoss, StepHook, StepView};
use omuda_core::{Error, Result};

/// Thing-class ImageNet feature distance (DAFormer `dacs_a999_fdthings.py`:
/// `imnet_feature_dist_lambda=0.005`, `imnet_feature_dist_classes=[6, 7, 11,
/// …, 18]`, `imnet_feature_dist_scale_min_ratio=0.75`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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

/// The feature-distance hook.
pub struct FeatureDistance {
    cfg: FdConfig,
    /// The host's initial network, frozen.
    frozen: FrozenEncoder,
    metrics: Vec<(String, f64)>,
}

/// The FD loss before λ: the masked distance between the student features
/// `f` and the frozen features `f0` (both (B, C, h, w)) on the cells whose
/// label, `label` (B, H, W) downscaled by `W / w` (`downscale_label_ratio`
/// with `min_ratio`), is one of `thing_classes`. None when no cell is a
/// thing cell (the reference's NaN mean: no loss, no gradient).
pub fn feature_distance(
    f: &Tensor,
    f0: &Tensor,
    label: &Tensor,
    thing_classes: &[u32],
    min_ratio: f32,
    num_classes: usize,
) -> Result<Option<Tensor>> {
    let (_, _, hf, wf) = f.dims4()?;
    let (_, h, w) = label.dims3()?;
    // `scale_factor = gt.shape[-1] // feat[lay].shape[-1]`.
    let s = w / wf.max(1);
    let down = downscale_label_ratio(label, s, min_ratio, num_classes)?;
    if down.dims()[1..] != [hf, wf] {
        return Err(Error::msg(format!(
            "feature distance: the {h}×{w} label downscaled by {s} is {:?}, the features are {hf}×{wf}",
            &down.dims()[1..]
        )));
    }
    let mask = class_mask(&down, thing_classes)?.to_device(f.device())?;
    masked_feature_distance(f, f0, &mask)
}

impl FeatureDistance {
    pub fn new(cfg: FdConfig) -> Self {
        Self {
            cfg,
            frozen: FrozenEncoder::new(None),
            metrics: Vec::new(),
        }
    }

    pub fn config(&self) -> &FdConfig {
        &self.cfg
    }
}

impl StepHook for FeatureDistance {
    fn name(&self) -> &str {
        "fd"
    }

    fn extra_losses(&mut self, view: &StepView, rng: &mut ChaCha8Rng) -> Result<Vec<NamedLoss>> {
        self.metrics.clear();
        let Some(features) = view.source_features else {
            return Err(Error::msg("fd: the host step passed no source features"));
        };
        let layer = level_index(self.cfg.layer, features.len(), "fd.layer")?;
        let f = &features[layer];
        let x = view.objective.feature_input(&view.batch.source_image)?;
        let f0 = self
            .frozen
            .features(view, &x, self.cfg.layer, "fd.layer", rng)?;
        let d = feature_distance(
            f,
            &f0,
            &view.batch.source_label,
            &self.cfg.thing_classes,
            self.cfg.min_ratio,
            view.num_classes,
        )?;
        // An empty mask: the reference logs NaN and back-propagates nothing;
        // here the term is a constant 0 and `fd.empty_mask` = 1 says why.
        self.metrics
            .push(("empty_mask".into(), if d.is_none() { 1.0 } else { 0.0 }));
        let value = match d {
            Some(d) => (d * self.cfg.lambda)?,
            None => Tensor::new(0f32, f.device())?,
        };
        Ok(vec![NamedLoss {
            name: "loss_fd".into(),
            value,
        }])
    }

    fn metrics(&self) -> Vec<(String, f64)> {
        self.metrics.clone()
    }
}
