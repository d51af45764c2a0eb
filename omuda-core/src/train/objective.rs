//! How a segmentation network is turned into logits and a loss.
//!
//! The shared step and every hook compute their segmentation losses through
//! one `SegObjective`, so a method that changes how the network is run (e.g.
//! multi-resolution training) changes it everywhere at once.

use candle_core::{Result, Tensor};

use crate::nn::{ForwardCtx, SegModel};
use crate::ops::{cross_entropy, resize_bilinear, CeReduction};

pub trait SegObjective: Send + Sync {
    /// Loss of `model` on `image` (B,3,H,W) against `label` (B,H,W) with optional
    /// pixel `weight` (B,H,W); also returns the encoder features (with graph).
    fn loss(
        &self,
        model: &dyn SegModel,
        image: &Tensor,
        label: &Tensor,
        weight: Option<&Tensor>,
        ctx: &mut ForwardCtx,
    ) -> Result<(Tensor, Vec<Tensor>)>;

    /// [`Self::loss`] with its main term scaled by `main_weight`: the term
    /// mmseg names `decode.loss_seg`, which MIC's `mask_lambda` scales (MIC
    /// `seg/mmseg/models/uda/masking_consistency_module.py`,
    /// `MaskingConsistencyModule.__call__`). For a single-resolution objective
    /// that is the whole loss; multi-resolution training overrides this to
    /// leave its auxiliary detail term unscaled.
    fn loss_with_main_weight(
        &self,
        model: &dyn SegModel,
        image: &Tensor,
        label: &Tensor,
        weight: Option<&Tensor>,
        ctx: &mut ForwardCtx,
        main_weight: f64,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let (loss, features) = self.loss(model, image, label, weight, ctx)?;
        Ok(((loss * main_weight)?, features))
    }

    /// Whether [`Self::loss_with_main_weight`] with a main weight of 0 is
    /// the zero loss (no term keeps its own weight), so that a caller may
    /// skip the forward altogether.
    fn main_weight_scales_everything(&self) -> bool {
        true
    }

    /// Logits at the input resolution (B,K,H,W).
    fn logits(&self, model: &dyn SegModel, image: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor>;

    /// The image the encoder sees for the features that [`Self::loss`]
    /// returns (the input itself here; the downscaled context image for
    /// multi-resolution training). A frozen encoder compared with those
    /// features (feature distance) runs on this image.
    fn feature_input(&self, image: &Tensor) -> Result<Tensor> {
        Ok(image.clone())
    }
}

/// The mmseg single-scale objective: logits bilinearly resized to the label
/// size, cross-entropy with ignore 255, mean over all pixels (`lhoyer/MIC
/// seg/mmseg/models/losses/cross_entropy_loss.py::cross_entropy` as called by
/// `BaseDecodeHead.losses`).
#[derive(Debug, Clone, Copy)]
pub struct WholeImage {
    pub reduction: CeReduction,
}

impl Default for WholeImage {
    fn default() -> Self {
        Self {
            reduction: CeReduction::MeanAll,
        }
    }
}

impl SegObjective for WholeImage {
    fn loss(
        &self,
        model: &dyn SegModel,
        image: &Tensor,
        label: &Tensor,
        weight: Option<&Tensor>,
        ctx: &mut ForwardCtx,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let features = model.features(image, ctx)?;
        let logits = model.decode(&features, ctx)?;
        let (_, h, w) = label.dims3()?;
        let logits = resize_bilinear(&logits, h, w)?;
        let loss = cross_entropy(&logits, label, weight, self.reduction)?;
        Ok((loss, features))
    }

    fn logits(&self, model: &dyn SegModel, image: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let (_, _, h, w) = image.dims4()?;
        resize_bilinear(&model.forward(image, ctx)?, h, w)
    }
}
