//! Tensor operations that Candle lacks or gets wrong for training segmentation
//! models. Every op runs on any device: custom CPU kernels where they pay off,
//! Candle's own ops elsewhere.

pub mod augment;
pub mod loss;
pub mod mix;
pub mod pseudo;
pub mod resize;

pub use loss::{cross_entropy, CeReduction};
pub use resize::resize_bilinear;
