//! Masked image consistency, defined once (`lhoyer/MIC
//! seg/mmseg/models/uda/masking_consistency_module.py`,
//! `MaskingConsistencyModule.__call__`): the target image is colour-augmented
//! with fresh draws ([`StrongAugConfig::sample_shared_blur`]: jitter per
//! image, one blur σ per batch), masked by a keep-mask, and the student's
//! loss on it against the teacher's pseudo-labels, with the host's pixel
//! weights and target averaging, is added with its main term scaled by λ
//! (under HRDA the detail term keeps its weight, as MIC scales only
//! `decode.loss_seg`).
//!
//! Only the mask differs between the hooks built on it: MIC's uniform random
//! blocks (`omuda-baselines`, `mic.rs`) and CAM's content-aware blocks
//! (`omuda-plugins`, `cam.rs`). A [`MaskRule`] is that difference.

use candle_core::{DType, Tensor};
use rand_chacha::ChaCha8Rng;

use crate::nn::ForwardCtx;
use crate::ops::augment::{strong_augment, StrongAugConfig};
use crate::ops::pseudo::PseudoLabels;
use crate::train::hooks::{NamedLoss, StepView};
use crate::Result;

/// Which pixels of the augmented target the student sees.
pub trait MaskRule: Send {
    /// Keep-mask (B, 1, H, W) f32, 1 = seen, for the augmented target
    /// `image` (B, 3, H, W) and the teacher's pseudo-labels of it.
    fn keep_mask(
        &mut self,
        image: &Tensor,
        pseudo: &PseudoLabels,
        num_classes: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Tensor>;

    /// Metrics of the last mask besides `masked_share`.
    fn metrics(&self) -> Vec<(String, f64)> {
        Vec::new()
    }
}

/// The masked-consistency term with mask rule `R`.
pub struct MaskedConsistency<R: MaskRule> {
    /// Weight of the term's main loss (MIC `mask_lambda`).
    pub lambda: f64,
    /// Colour jitter and blur before masking.
    pub aug: StrongAugConfig,
    pub rule: R,
    loss_name: String,
    metrics: Vec<(String, f64)>,
    /// The last step's keep mask, for debug images.
    last_mask: Option<Tensor>,
}

impl<R: MaskRule> MaskedConsistency<R> {
    /// `loss_name` is the logged name of the term (`loss_mic`, `loss_cam`).
    pub fn new(loss_name: &str, lambda: f64, aug: StrongAugConfig, rule: R) -> Self {
        Self {
            lambda,
            aug,
            rule,
            loss_name: loss_name.to_string(),
            metrics: Vec::new(),
            last_mask: None,
        }
    }

    /// The term for one step; nothing without pseudo-labels (source-only).
    /// Draw order: augmentation, mask, then the student's forward.
    pub fn losses(&mut self, view: &StepView, rng: &mut ChaCha8Rng) -> Result<Vec<NamedLoss>> {
        self.metrics.clear();
        self.last_mask = None;
        let Some(pseudo) = view.pseudo else {
            return Ok(Vec::new());
        };
        // A weight of 0 contributes nothing (unless a detail term keeps its
        // own weight): no augmentation, mask or forward is spent on it.
        if self.lambda == 0.0 && view.objective.main_weight_scales_everything() {
            return Ok(Vec::new());
        }
        let target = &view.batch.target_image;
        let aug = self.aug.sample_shared_blur(rng, target.dim(0)?);
        let image = strong_augment(target, &aug)?;
        let keep = self.rule.keep_mask(&image, pseudo, view.num_classes, rng)?;
        let masked = image.broadcast_mul(&keep.to_dtype(image.dtype())?)?;
        let ones = pseudo.weight.ones_like()?;
        let weight = view.target_averaging.weights(
            &pseudo.label,
            &ones,
            &pseudo.weight,
            view.num_classes,
        )?;
        let (loss, _) = {
            let mut ctx = ForwardCtx::train(rng);
            view.objective.loss_with_main_weight(
                view.student,
                &masked,
                &pseudo.label,
                Some(&weight),
                &mut ctx,
                self.lambda,
            )?
        };
        let kept = keep.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        self.metrics.push(("masked_share".into(), 1.0 - kept));
        self.metrics.extend(self.rule.metrics());
        self.last_mask = Some(keep);
        Ok(vec![NamedLoss {
            name: self.loss_name.clone(),
            value: loss,
        }])
    }

    pub fn metrics(&self) -> Vec<(String, f64)> {
        self.metrics.clone()
    }

    /// The last keep mask under `label` (for debug images).
    pub fn debug_mask(&self, label: &str) -> Vec<(String, Tensor)> {
        self.last_mask
            .iter()
            .map(|m| (label.to_string(), m.clone()))
            .collect()
    }
}
