//! omuda-core: the building blocks of unsupervised domain adaptation for
//! semantic segmentation on Candle.
//!
//! - [`ops`]: differentiable bilinear resize, masked cross-entropy, ClassMix masks
//!   and mixing, strong augmentation, pseudo-labels.
//! - [`nn`]: trainable networks (SegFormer and DAFormer on MiT, DeepLabV2 on
//!   ResNet V1c), their layers, and pretrained-weight loading.
//! - [`data`]: class tables, the built-in synthetic domain pair and its
//!   pretraining set, datasets on disk, pipelines, RCS, batching.
//! - [`train`]: the `UdaMethod` trait, the shared self-training step and its hook
//!   points, EMA teacher, AdamW with parameter groups, LR schedules, the trainer loop,
//!   checkpoints, and the encoder pretraining of the built-in benchmark.
//! - [`eval`]: confusion-matrix mIoU, whole-image and sliding-window inference.
//! - [`check`]: range checks of settings, with messages that name the key.
//! - [`device`]: choosing `cpu` / `cuda:N`, with clear errors.
//! - [`simd`]: the CPU kernels' dispatch to AVX2 / AVX-512 when the processor has them.
//! - [`threads`]: the compute pool a command's tensor work runs on.

pub mod check;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod exact_len;
pub mod io;
pub mod nn;
pub mod ops;
pub mod rng_state;
pub mod simd;
pub mod threads;
pub mod train;

pub use error::{Error, Result};
