//! What a [`SelfTraining`](crate::train::SelfTraining) run is built from:
//! the `[uda]` settings of the shared step and the spec that gathers them
//! with the model, optimizer, schedule and seed.

use serde::{Deserialize, Serialize};

use crate::nn::ModelConfig;
use crate::ops::augment::StrongAugConfig;
use crate::train::optimizer::AdamWConfig;
use crate::train::schedule::PolySchedule;

/// What the shared step does; each baseline is a choice of these values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UdaConfig {
    /// Train on the target with teacher pseudo-labels and ClassMix (false: source only).
    pub self_training: bool,
    /// EMA teacher momentum α (0.99 for DACS, 0.999 for DAFormer/HRDA/MIC).
    pub ema_alpha: f64,
    /// Confidence threshold τ of the pseudo-label weight.
    pub pseudo_threshold: f32,
    /// Weight of the mixed loss.
    pub mix_loss_weight: f64,
    /// ClassMix picks classes from each image's own labels (original DACS)
    /// instead of the batch union (mmseg re-implementation, the default).
    pub per_image_classes: bool,
    /// Zero the pseudo-label weight of the top/bottom rows (DAFormer "croppl
    /// v1": [15, 120]), given for crops `pseudo_label_crop_height` high and
    /// scaled to the batch's crop height.
    #[serde(default, deserialize_with = "crate::exact_len::option_array")]
    pub pseudo_label_crop: Option<[usize; 2]>,
    /// Crop height at which `pseudo_label_crop` is given (512, DAFormer's crop).
    pub pseudo_label_crop_height: usize,
    /// HRDA / MIC "croppl v2" margins `[top, bottom, left, right]` in pixels
    /// of the original target frame ([30, 240, 30, 30] for 1024×2048
    /// Cityscapes): the loader builds the mask at frame size and transforms
    /// it with the target crop (`UdaBatch::target_valid`), the step multiplies
    /// it into the pseudo-label weight (`lhoyer/HRDA
    /// mmseg/datasets/cityscapes.py::CityscapesDataset.pre_pipeline` and
    /// `mmseg/models/uda/dacs.py::DACS.filter_valid_pseudo_region`).
    #[serde(
        default,
        deserialize_with = "crate::exact_len::option_array",
        skip_serializing_if = "Option::is_none"
    )]
    pub pseudo_margins: Option<[usize; 4]>,
    /// Colour jitter and blur applied to the mixed images.
    pub strong_aug: StrongAugConfig,
}

impl UdaConfig {
    /// `weight` (B, H, W) with the rows of `pseudo_label_crop` zeroed, the
    /// rows scaled from `pseudo_label_crop_height` to the weight's height
    /// (`lhoyer/MIC seg/mmseg/models/uda/dacs.py::DACS.filter_valid_pseudo_region`);
    /// unchanged without a crop.
    pub fn crop_pseudo_weight(
        &self,
        weight: &candle_core::Tensor,
    ) -> candle_core::Result<candle_core::Tensor> {
        let Some(rows) = self.pseudo_label_crop else {
            return Ok(weight.clone());
        };
        let h = weight.dim(1)?;
        let [top, bottom] =
            crate::data::valid_region::scaled_row_crop(rows, self.pseudo_label_crop_height, h);
        crate::ops::pseudo::zero_rows(weight, top, bottom)
    }
}

impl Default for UdaConfig {
    /// DACS as re-implemented in mmseg (`lhoyer/MIC seg/configs/_base_/uda/dacs.py`).
    fn default() -> Self {
        Self {
            self_training: true,
            ema_alpha: 0.99,
            pseudo_threshold: 0.968,
            mix_loss_weight: 1.0,
            per_image_classes: false,
            pseudo_label_crop: None,
            pseudo_label_crop_height: 512,
            pseudo_margins: None,
            strong_aug: StrongAugConfig::default(),
        }
    }
}

/// Everything a [`SelfTraining`] run is built from.
#[derive(Debug, Clone)]
pub struct SelfTrainingSpec {
    pub name: String,
    pub model: ModelConfig,
    pub uda: UdaConfig,
    pub optimizer: AdamWConfig,
    pub schedule: PolySchedule,
    pub seed: u64,
}
