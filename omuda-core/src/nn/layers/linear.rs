//! Fully connected layer, and the same affine map applied to dimension 1 of a
//! channels-first tensor (a 1x1 convolution as one batched matmul, without
//! transposing the feature map).

use candle_core::{bail, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::bias::{add_optional_bias, zero_bias};

/// Fully connected layer: `weight` (out, in), `bias` (out).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Weight N(0, 0.02) (the truncation at ±2 of mmseg's trunc-normal is
    /// irrelevant at this std), bias 0.
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Self::with_init(
            in_dim,
            out_dim,
            true,
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
            vb,
        )
    }

    pub fn with_init(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        init: Init,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
        let bias = zero_bias(&vb, out_dim, bias)?;
        Ok(Self { weight, bias })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Applies the layer to the last dimension of `x` (any rank ≥ 1).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (out_dim, in_dim) = self.weight.dims2()?;
        match dims.last() {
            Some(&d) if d == in_dim => {}
            _ => bail!("Linear: expected input with last dim {in_dim}, got {dims:?}"),
        }
        let rows = x.elem_count() / in_dim;
        let y = x
            .contiguous()?
            .reshape((rows, in_dim))?
            .matmul(&self.weight.t()?)?;
        let y = add_optional_bias(y, self.bias.as_ref(), 1)?;
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = out_dim;
        }
        y.reshape(out_dims)
    }

    /// Applies the layer to dimension 1 of a channels-first `x` (B, in, ...):
    /// the 1x1-convolution view, computed as `W · x` per sample without
    /// transposing `x`.
    pub fn forward_channels_first(&self, x: &Tensor) -> Result<Tensor> {
        channels_first_affine(x, &self.weight, self.bias.as_ref())
    }
}

/// `W · x + b` applied to dimension 1 of a channels-first `x` (B, in, ...) with
/// `w` (out, in) and `b` (out): a 1x1 convolution as one batched matmul.
pub fn channels_first_affine(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (out_dim, in_dim) = w.dims2()?;
    if dims.len() < 2 || dims[1] != in_dim {
        bail!("channels-first linear map: expected input (B, {in_dim}, ...), got {dims:?}");
    }
    let bs = dims[0];
    let spatial = x.elem_count() / (bs * in_dim).max(1);
    let xs = x.contiguous()?.reshape((bs, in_dim, spatial))?;
    let y = w.broadcast_left(bs)?.matmul(&xs)?;
    let y = add_optional_bias(y, b, 1)?;
    let mut out_dims = dims;
    out_dims[1] = out_dim;
    y.reshape(out_dims)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::randn;
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn linear_rejects_wrong_input_width() {
        let vm = VarMap::new();
        let lin =
            Linear::new(4, 2, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        let err = lin.forward(&randn(&[3, 5])).unwrap_err().to_string();
        assert!(err.contains("last dim 4"), "{err}");
        assert!(lin.forward_channels_first(&randn(&[1, 5, 2])).is_err());
    }
}
