//! One training batch of a UDA run, and where batches come from.

use candle_core::Tensor;

use crate::{Error, Result};

/// Labelled source images and unlabelled target images.
#[derive(Debug, Clone)]
pub struct UdaBatch {
    /// (B, 3, H, W) f32, ImageNet-normalised RGB.
    pub source_image: Tensor,
    /// (B, H, W) u32 trainIds, 255 = ignore.
    pub source_label: Tensor,
    /// (B, 3, H, W) f32, ImageNet-normalised RGB. Its labels are never given to a method.
    pub target_image: Tensor,
    /// (B, H, W) f32 0/1: where target pseudo-labels may carry weight (the
    /// HRDA margin mask after the target's resize, crop and flip; `lhoyer/HRDA
    /// mmseg/datasets/cityscapes.py::CityscapesDataset.pre_pipeline`). `None` when
    /// `uda.pseudo_margins` is not set.
    pub target_valid: Option<Tensor>,
}

/// Where training batches come from.
pub trait BatchSource {
    fn next_batch(&mut self) -> Result<UdaBatch>;

    /// The data-order state (which batches come next) as JSON, saved in
    /// checkpoints so a resumed run draws the same batches. The default is an
    /// error: a source that cannot say where it is cannot be resumed exactly.
    fn order_state(&self) -> Result<serde_json::Value> {
        Err(Error::msg(
            "this batch source does not record its data order; it cannot be checkpointed",
        ))
    }

    /// Continue from a state written by [`BatchSource::order_state`].
    fn restore_order_state(&mut self, _state: &serde_json::Value) -> Result<()> {
        Err(Error::msg(
            "this batch source does not record its data order; it cannot be resumed",
        ))
    }
}
