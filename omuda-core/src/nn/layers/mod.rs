//! Building blocks of the trainable networks, with Hugging Face compatible
//! parameter names and a backward pass for every layer.
//!
//! On the CPU with `f32` tensors the heavy layers (LayerNorm, BatchNorm in train
//! mode, depthwise convolution, bias addition, per-sample / per-channel masks) run
//! as fused custom ops whose backward passes are further custom ops. Candle's own
//! versions are either detached from the graph (`candle_nn::LayerNorm`), or
//! 10-100x slower in backward (grouped convolution, broadcast reductions). On other
//! devices or dtypes the same layers fall back to composed Candle ops, which are
//! also the references the custom ops are tested against.
//!
//! One file per layer family; every public item is re-exported here:
//! - `cpu`: helpers shared by the fused ops (data access, work split, reductions);
//! - `math`: vectorisable scalar `exp` and normal CDF;
//! - `bias`: bias addition with a cheap bias gradient;
//! - `add`: the sum of two equally shaped tensors (residual connections);
//! - `dropout`: drop-path and Dropout2d (constant per-group masks);
//! - `linear`: fully connected layer and the channels-first 1x1 map;
//! - `conv` (layer and entry points), `conv_shift` (stride-1 kernel: shifted GEMMs)
//!   and `im2col` (other strides): dense convolution;
//! - `layer_norm`, `batch_norm`: the normalisations;
//! - `depthwise` (layer and ops), `depthwise_geom` (window geometry),
//!   `depthwise_nchw` and `depthwise_nhwc` (kernels): stride-1 depthwise convolution;
//! - `activation`: GELU, ReLU and softmax;
//! - `attention`: the attention probabilities softmax(q·kᵀ), without keeping the scores;
//! - `pool`: max-pooling with padding and a backward pass;
//! - `transpose`: the tiled transposed copy of the last two dimensions.

mod activation;
mod add;
mod attention;
mod batch_norm;
mod bias;
mod conv;
mod conv_cfg;
mod conv_shift;
mod conv_winograd;
pub(crate) mod cpu;
mod depthwise;
mod depthwise_geom;
mod depthwise_nchw;
mod depthwise_nhwc;
mod dropout;
mod im2col;
mod layer_norm;
mod linear;
mod math;
mod pool;
mod transpose;

pub use activation::{gelu, relu, softmax_last_dim};
pub use add::add;
pub(crate) use add::add_owned;
pub(crate) use attention::attention_context;
pub use attention::{attention_probs, attention_probs_composed};
pub use batch_norm::{batch_norm_train_composed, BatchNorm2d};
pub use bias::add_bias;
pub use conv::{conv2d, conv2d_nhwc, Conv2d};
pub use conv_cfg::ConvCfg;
pub(crate) use cpu::may_overwrite;
pub use depthwise::{depthwise_conv2d, depthwise_conv2d_nhwc, DepthwiseConv2d};
pub use dropout::{DropPath, Dropout2d};
pub use layer_norm::{layer_norm, layer_norm_composed, LayerNorm};
pub use linear::{channels_first_affine, Linear};
pub use math::exp_f32;
pub use pool::{max_pool2d, max_pool2d_composed};
pub use transpose::transpose_last2;

use candle_core::{DType, Result, Tensor};

/// Largest relative difference between two tensors of equal shape, scaled by the
/// largest magnitude of `b` (test helper for gradient checks).
pub fn max_rel_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let a = a.to_dtype(DType::F32)?.flatten_all()?;
    let b = b.to_dtype(DType::F32)?.flatten_all()?;
    let scale = b.abs()?.max(0)?.to_scalar::<f32>()?.max(1e-12);
    Ok((a - &b)?.abs()?.max(0)?.to_scalar::<f32>()? / scale)
}

/// Helpers of the unit tests in this folder.
#[cfg(test)]
mod test_util {
    use candle_core::{DType, Device, Tensor};

    pub(super) fn randn(shape: &[usize]) -> Tensor {
        Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
    }

    pub(super) fn close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
        let d = super::max_rel_diff(a, b).unwrap();
        assert!(d < tol, "{what}: relative difference {d}");
    }

    /// `t` in f64, to take the composed fallback of a layer.
    pub(super) fn f64(t: &Tensor) -> Tensor {
        t.to_dtype(DType::F64).unwrap()
    }

    /// `t` back in f32, to compare with the fused kernel.
    pub(super) fn f32(t: &Tensor) -> Tensor {
        t.to_dtype(DType::F32).unwrap()
    }

    /// The bits of an f32 tensor's values, for bit-for-bit comparisons.
    pub(super) fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f32::to_bits)
            .collect()
    }
}
