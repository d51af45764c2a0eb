//! DAFormer (`lhoyer/MIC
//! seg/configs/daformer/gta2cs_uda_warm_fdthings_rcs_croppl_a999_daformer_mitb5_s0.py`):
//! the shared DACS step plus the thing-class ImageNet feature distance
//! ([`crate::fd::FeatureDistance`], hook `"fd"`).
//!
//! Everything else DAFormer changes is a setting of the run configuration,
//! not code, and the `daformer-*` presets hold the published values:
//! `uda.ema_alpha = 0.999`, `uda.pseudo_label_crop = [15, 120]` (rows of the
//! 512-high crop), `[data.rcs]` (T 0.01, 3000 px, crop ratio 0.5), the
//! DAFormer network (`model.name = "daformer_mitb5"`), AdamW 6e-5 with head
//! ×10 and no decay on norms, 1500 warm-up iterations then linear poly.

use candle_core::Device;
use omuda_core::train::spec::SelfTrainingSpec;
use omuda_core::train::SelfTraining;
use omuda_core::Result;

use crate::fd::{FdConfig, FeatureDistance};

/// Constructors only: DAFormer is a configuration of the shared step.
pub struct Daformer;

#[allow(clippy::new_ret_no_self)]
impl Daformer {
    /// DAFormer: the DACS step of `spec` with the feature distance `fd`.
    pub fn new(spec: SelfTrainingSpec, fd: FdConfig, device: &Device) -> Result<SelfTraining> {
        Ok(crate::Dacs::new(spec, device)?.with(FeatureDistance::new(fd)))
    }
}
