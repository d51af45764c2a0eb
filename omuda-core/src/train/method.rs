//! The interface every UDA method implements.

use std::path::Path;

use candle_core::Tensor;

use crate::data::batch::UdaBatch;
use crate::Result;

/// What one training step reports: named losses and extra metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StepLog {
    pub iter: usize,
    /// Base learning rate used for this step.
    pub lr: f64,
    /// (name, value) of every loss term, in the order they were added.
    pub losses: Vec<(String, f64)>,
    /// Other scalars (confident share of pseudo-labels, hook metrics, …).
    pub metrics: Vec<(String, f64)>,
    /// Why the parameter update was skipped (a non-finite loss or gradient
    /// under the skip policy); `None` for a normal step.
    pub skipped: Option<String>,
}

impl StepLog {
    pub fn total_loss(&self) -> f64 {
        self.losses.iter().map(|(_, v)| v).sum()
    }
}

/// What a debug image shows in one tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebugKind {
    /// (B, 3, H, W) ImageNet-normalised RGB.
    Image,
    /// (B, H, W) u32 trainIds (255 = ignore), drawn with the Cityscapes palette.
    Labels,
    /// (B, H, W) or (B, 1, H, W) values in [0, 1], drawn as grey levels.
    Gray,
}

/// Intermediate tensors of one training step, for debug images.
#[derive(Debug, Clone, Default)]
pub struct StepDebug {
    /// (title, kind, tensor), in display order.
    pub tiles: Vec<(String, DebugKind, Tensor)>,
}

/// A UDA method: trains on (labelled source, unlabelled target) batches and
/// predicts on images.
pub trait UdaMethod {
    /// Name as shown in logs and result tables (e.g. `"DACS"`).
    fn name(&self) -> String;

    /// One training iteration.
    fn train_step(&mut self, batch: &UdaBatch) -> Result<StepLog>;

    /// Logits (B, K, H, W) at the input resolution, with the evaluation network
    /// (the student, as in the reference code), deterministic.
    fn predict(&self, images: &Tensor) -> Result<Tensor>;

    /// Number of training iterations done.
    fn iteration(&self) -> usize;

    /// Write everything needed to continue training into `dir`.
    fn save_state(&self, dir: &Path) -> Result<()>;

    /// Restore what `save_state` wrote.
    fn load_state(&mut self, dir: &Path) -> Result<()>;

    /// Keep the intermediate tensors of the following steps (for debug
    /// images) while `on`. Methods without intermediates ignore it.
    fn capture_debug(&mut self, _on: bool) {}

    /// The intermediate tensors kept from the last step, if any.
    fn take_debug(&mut self) -> Option<StepDebug> {
        None
    }
}
