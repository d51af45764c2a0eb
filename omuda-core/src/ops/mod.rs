//! Tensor operations that Candle lacks or gets wrong for training segmentation
//! models. Every op runs on any device: custom CPU kernels where they pay off,
//! Candle's own ops elsewhere.

pub mod augment;
pub mod block_mask;
pub mod feature_distance;
pub mod loss;
pub mod mix;
pub mod pseudo;
pub mod resize;

pub use loss::{cross_entropy, CeReduction};

/// Label value of pixels excluded from losses and metrics (mmseg / PyTorch
/// `ignore_index=255`): the one ignore constant of the workspace.
pub const IGNORE_INDEX: u32 = 255;
pub(crate) use resize::resize_bilinear_accumulate;
pub use resize::{resize_bilinear, resize_bilinear_scale_factor};

use candle_core::{CpuStorage, Layout, Result, WithDType};

/// Contiguous data of a CPU storage as `&[T]`, or an error naming the op
/// (the custom CPU ops make their inputs contiguous before calling it).
pub(crate) fn contiguous_slice<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage.as_slice::<T>()?[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}
