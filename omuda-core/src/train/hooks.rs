//! Hook points of the shared self-training step.
//!
//! A hook sees the step at four points and may change what flows on:
//!
//! 1. [`StepHook::on_pseudo_labels`] — after the teacher's pseudo-labels and
//!    pixel weights are computed (and border margins applied), before mixing.
//!    May rewrite the weights (e.g. class-wise thresholds).
//! 2. [`StepHook::on_mix_masks`] — after the ClassMix masks are drawn, before
//!    the images are mixed. May replace the masks.
//! 3. [`StepHook::extra_losses`] — after the host's own losses are built. Returns
//!    named, already weighted losses that join the total before the backward.
//! 4. [`StepHook::after_step`] — after the optimizer step (state updates).
//!
//! Two more methods are read once when the step runs, not per point:
//!
//! - [`StepHook::target_averaging`] — how the target part of the mixed loss
//!   (and of hook losses that follow the host, e.g. a masked-consistency loss)
//!   is averaged: per pixel (the reference) or per class
//!   ([`TargetAveraging::ClassBalanced`]); the last hook that asks wins.
//! - [`StepHook::replaces`] — names of hooks this one replaces. When a hook is
//!   attached, hooks already attached under a replaced name are removed, and a
//!   hook whose name an attached hook replaces is not added
//!   ([`crate::train::SelfTraining::replaced_hooks`] lists both cases). E.g.
//!   CAM replaces a MIC hook named `"mic"`.
//!
//! Hooks run in the order they were attached; each sees what the previous
//! ones changed. Every method has a do-nothing default, so a hook implements
//! only what it uses.

use std::collections::HashMap;

use candle_core::Tensor;
/// The generator hooks draw from (re-exported so a hook needs no extra dependency).
pub use rand_chacha::ChaCha8Rng;

use crate::data::batch::UdaBatch;
use crate::nn::SegModel;
use crate::ops::mix::MixedBatch;
use crate::ops::pseudo::PseudoLabels;
use crate::train::objective::SegObjective;
use crate::train::spec::SelfTrainingSpec;
use crate::Result;

/// How the target part of a pseudo-labelled loss is averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetAveraging {
    /// mmseg: every pixel counts once (mean over all pixels).
    #[default]
    PerPixel,
    /// The target pixels are averaged per pseudo-label class, then over the
    /// classes present ([`class_balanced_weight`]).
    ClassBalanced,
}

impl TargetAveraging {
    /// The pixel weights to use with a mean-over-all-pixels loss so that its
    /// target part is averaged this way. `target` (B, H, W) is 1 on pixels
    /// whose label is a pseudo-label, 0 elsewhere (pasted source pixels).
    pub fn weights(
        self,
        label: &Tensor,
        target: &Tensor,
        weight: &Tensor,
        num_classes: usize,
    ) -> Result<Tensor> {
        match self {
            TargetAveraging::PerPixel => Ok(weight.clone()),
            TargetAveraging::ClassBalanced => {
                class_balanced_weight(label, target, weight, num_classes)
            }
        }
    }
}

/// Pixel weights that make a mean-over-all-pixels weighted loss average its
/// target part per class, then over the classes present.
///
/// With `N` pixels in the batch, `N_t` target pixels with a valid label
/// (`< num_classes`), `n_c` of them labelled `c` and `|C|` classes present:
/// `w'_p = w_p · N_t / (|C| · n_c)` on target pixels, `w'_p = w_p` elsewhere.
/// Then `Σ_p l_p w'_p / N = Σ_src l w / N + (N_t / N) · mean_c mean_{p∈c} l_p w_p`:
/// the source part is unchanged and the target part keeps its share of the
/// loss, but each present class weighs the same. Shapes: `label` (B, H, W)
/// `u32` (255 = ignore, left unchanged), `target` and `weight` (B, H, W) float.
pub fn class_balanced_weight(
    label: &Tensor,
    target: &Tensor,
    weight: &Tensor,
    num_classes: usize,
) -> Result<Tensor> {
    if label.dims() != weight.dims() || target.dims() != weight.dims() || label.rank() != 3 {
        return Err(crate::Error::msg(format!(
            "class_balanced_weight: label {:?}, target {:?} and weight {:?} must all be (B, H, W)",
            label.dims(),
            target.dims(),
            weight.dims()
        )));
    }
    let lab = label
        .flatten_all()?
        .to_dtype(candle_core::DType::U32)?
        .to_vec1::<u32>()?;
    let tgt = target
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?;
    let mut counts = vec![0usize; num_classes];
    for (&l, &t) in lab.iter().zip(&tgt) {
        if t > 0.5 && (l as usize) < num_classes {
            counts[l as usize] += 1;
        }
    }
    let n_t: usize = counts.iter().sum();
    let present = counts.iter().filter(|&&n| n > 0).count();
    let scale: Vec<f32> = lab
        .iter()
        .zip(&tgt)
        .map(|(&l, &t)| {
            if t > 0.5 && (l as usize) < num_classes {
                (n_t as f64 / (present as f64 * counts[l as usize] as f64)) as f32
            } else {
                1.0
            }
        })
        .collect();
    let scale =
        Tensor::from_vec(scale, weight.shape(), weight.device())?.to_dtype(weight.dtype())?;
    Ok(weight.mul(&scale)?)
}

/// A loss term with its name as logged (e.g. `"loss_mic"`).
pub struct NamedLoss {
    pub name: String,
    pub value: Tensor,
}

/// Read-only view of the step, given to every hook.
pub struct StepView<'a> {
    /// 0-based iteration of this step.
    pub iter: usize,
    pub batch: &'a UdaBatch,
    pub student: &'a dyn SegModel,
    pub teacher: Option<&'a dyn SegModel>,
    /// How the host turns a student forward into a segmentation loss (so a
    /// hook's extra loss is computed exactly as the host computes its own).
    pub objective: &'a dyn SegObjective,
    /// Student encoder features of the source batch (with graph).
    pub source_features: Option<&'a [Tensor]>,
    /// Teacher pseudo-labels on the target batch, after `on_pseudo_labels`.
    pub pseudo: Option<&'a PseudoLabels>,
    /// The ClassMix batch the host trained on.
    pub mixed: Option<&'a MixedBatch>,
    pub num_classes: usize,
    /// The host's settings (model, seed, pseudo-label threshold, margins).
    pub spec: &'a SelfTrainingSpec,
    /// How the host averages the target part of its mixed loss this step.
    pub target_averaging: TargetAveraging,
}

/// Something that attaches to the shared self-training step.
pub trait StepHook: Send {
    /// Short name, used as a prefix in logs and checkpoints.
    fn name(&self) -> &str;

    /// Names of hooks this one replaces (e.g. `["mic"]`); see the module docs.
    fn replaces(&self) -> Vec<String> {
        Vec::new()
    }

    /// How this hook wants the target part of the mixed loss averaged; None
    /// leaves it to the host or the other hooks.
    fn target_averaging(&self) -> Option<TargetAveraging> {
        None
    }

    fn on_pseudo_labels(
        &mut self,
        _pseudo: &mut PseudoLabels,
        _view: &StepView,
        _rng: &mut ChaCha8Rng,
    ) -> Result<()> {
        Ok(())
    }

    fn on_mix_masks(
        &mut self,
        _masks: &mut Vec<Tensor>,
        _view: &StepView,
        _rng: &mut ChaCha8Rng,
    ) -> Result<()> {
        Ok(())
    }

    fn extra_losses(&mut self, _view: &StepView, _rng: &mut ChaCha8Rng) -> Result<Vec<NamedLoss>> {
        Ok(Vec::new())
    }

    fn after_step(&mut self, _view: &StepView) -> Result<()> {
        Ok(())
    }

    /// Scalars to log for this step (e.g. the realised mask ratio).
    fn metrics(&self) -> Vec<(String, f64)> {
        Vec::new()
    }

    /// Masks of the last step to show in debug images, as (title, tensor)
    /// with values in [0, 1], (B, H, W) or (B, 1, H, W). Asked for only on
    /// steps that are drawn (`train.debug_interval`).
    fn debug_masks(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// State to checkpoint, as named tensors.
    fn state(&self) -> Result<HashMap<String, Tensor>> {
        Ok(HashMap::new())
    }

    fn load_state(&mut self, _state: &HashMap<String, Tensor>) -> Result<()> {
        Ok(())
    }
}
