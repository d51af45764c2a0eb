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
//! Hooks run in the order they were attached; each sees what the previous
//! ones changed. Every method has a do-nothing default, so a hook implements
//! only what it uses.

use std::collections::HashMap;

use candle_core::Tensor;
/// The generator hooks draw from (re-exported so a hook needs no extra dependency).
pub use rand_chacha::ChaCha8Rng;

use crate::nn::SegModel;
use crate::ops::mix::MixedBatch;
use crate::ops::pseudo::PseudoLabels;
use crate::train::batch::UdaBatch;
use crate::train::objective::SegObjective;
use crate::Result;

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
}

/// Something that attaches to the shared self-training step.
pub trait StepHook: Send {
    /// Short name, used as a prefix in logs and checkpoints.
    fn name(&self) -> &str;

    fn on_pseudo_labels(&mut self, _pseudo: &mut PseudoLabels, _view: &StepView, _rng: &mut ChaCha8Rng) -> Result<()> {
        Ok(())
    }

    fn on_mix_masks(&mut self, _masks: &mut Vec<Tensor>, _view: &StepView, _rng: &mut ChaCha8Rng) -> Result<()> {
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

    /// State to checkpoint, as named tensors.
    fn state(&self) -> Result<HashMap<String, Tensor>> {
        Ok(HashMap::new())
    }

    fn load_state(&mut self, _state: &HashMap<String, Tensor>) -> Result<()> {
        Ok(())
    }
}
