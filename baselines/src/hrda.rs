//! HRDA (`lhoyer/HRDA configs/hrda/gtaHR2csHR_hrda.py`):
//! DAFormer's step and feature distance with multi-resolution training.
//!
//! What HRDA changes in code is how the network is run, so it is an
//! objective of the shared step ([`MultiResolution`]: context + detail crop,
//! scale attention, 0.9 fused + 0.1 detail loss, overlapping-window
//! pseudo-labels, sliding-window test) plus the scale-attention head of the
//! model (`model.scale_attention`, set here). The feature distance hook
//! (`"fd"`) compares the context features, its frozen encoder seeing the
//! downscaled image (`SegObjective::feature_input`; HRDA's
//! `hrda_encoder_decoder.py::HRDAEncoderDecoder.extract_feat` with `feature_scale = 0.5`).
//!
//! The rest is configuration (the `hrda-*` presets): `[hrda]` (published
//! defaults), `uda.ema_alpha = 0.999`, `uda.pseudo_margins = [30, 240, 30, 30]`
//! at the original target frame size, `[data.rcs] min_crop_ratio = 2.0`,
//! 1024² crops, the DAFormer network, AdamW with head ×10.

use candle_core::Device;
use omuda_core::train::multires::{HrdaConfig, MultiResolution};
use omuda_core::train::spec::SelfTrainingSpec;
use omuda_core::train::SelfTraining;
use omuda_core::Result;

use crate::fd::{FdConfig, FeatureDistance};

/// Constructors only: HRDA is a configuration of the shared step.
pub struct Hrda;

#[allow(clippy::new_ret_no_self)]
impl Hrda {
    /// HRDA: the DACS step of `spec` with the multi-resolution objective and
    /// scale-attention head of `hrda`, and the feature distance `fd`.
    pub fn new(
        mut spec: SelfTrainingSpec,
        fd: FdConfig,
        hrda: HrdaConfig,
        device: &Device,
    ) -> Result<SelfTraining> {
        spec.uda.self_training = true;
        // The scale-attention head is part of the student (and so of the
        // teacher's EMA, AdamW's head group and the checkpoints).
        spec.model.scale_attention = true;
        spec.model.scale_attention_classwise = hrda.attention_classwise;
        let objective = MultiResolution::new(hrda).map_err(|e| omuda_core::Error::Config {
            origin: "hrda".into(),
            message: e.to_string(),
        })?;
        let mut method = SelfTraining::new(spec, device)?;
        method.set_objective(Box::new(objective));
        Ok(method.with(FeatureDistance::new(fd)))
    }
}
