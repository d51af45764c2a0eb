//! One training batch of a UDA run.

use candle_core::Tensor;

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
