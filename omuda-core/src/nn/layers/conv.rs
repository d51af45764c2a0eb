//! Dense 2-D convolution: the `Conv2d` layer and its NCHW / channels-last entry
//! points. On the CPU in f32 a convolution is im2col (see `im2col`) plus one
//! matmul, so its backward is a matmul plus a scatter. Candle's convolution
//! backward is several times slower, and gives a wrong-size input gradient when
//! the stride does not divide the padded input size.

use candle_core::{bail, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::bias::{add_optional_bias, zero_bias};
use super::conv_cfg::ConvCfg;
use super::conv_shift;
use super::conv_winograd;
use super::cpu::{use_cpu_kernels, MapOrder};
use super::im2col::{ColGeom, Im2Col};
use super::linear::channels_first_affine;
use super::transpose::transpose_last2;

/// Dense 2-D convolution on (B, C, H, W): `weight` (out, in, k, k), optional `bias` (out).
/// 1x1 convolutions run as a matmul, whose backward is far cheaper than Candle's
/// convolution backward.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    cfg: ConvCfg,
}

impl Conv2d {
    /// Weight N(0, sqrt(2 / fan_out)) with fan_out = k·k·out (mmseg MiT / Kaiming
    /// fan-out), bias 0.
    pub fn new(
        in_c: usize,
        out_c: usize,
        kernel: usize,
        cfg: ConvCfg,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let fan_out = (kernel * kernel * out_c) as f64;
        let init = Init::Randn {
            mean: 0.0,
            stdev: (2.0 / fan_out).sqrt(),
        };
        Self::with_init(in_c, out_c, kernel, cfg, bias, init, vb)
    }

    pub fn with_init(
        in_c: usize,
        out_c: usize,
        kernel: usize,
        cfg: ConvCfg,
        bias: bool,
        init: Init,
        vb: VarBuilder,
    ) -> Result<Self> {
        if kernel == 0 || cfg.stride == 0 || cfg.dilation == 0 {
            bail!(
                "Conv2d {}: kernel, stride and dilation must be positive, got k={kernel} {cfg:?}",
                vb.prefix()
            );
        }
        let weight = vb.get_with_hints((out_c, in_c, kernel, kernel), "weight", init)?;
        let bias = zero_bias(&vb, out_c, bias)?;
        Ok(Self { weight, bias, cfg })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Channels-last variant: (B, H, W, C) → (B, Ho, Wo, O).
    pub fn forward_nhwc(&self, x: &Tensor) -> Result<Tensor> {
        let y = conv2d_nhwc(x, &self.weight, self.cfg)?;
        add_optional_bias(y, self.bias.as_ref(), 3)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (out_c, in_c, k, _) = self.weight.dims4()?;
        let (_, c, _, _) = x.dims4()?;
        if c != in_c {
            bail!(
                "Conv2d: expected {in_c} input channels, got input {:?}",
                x.dims()
            );
        }
        if k == 1 && self.cfg == ConvCfg::default() {
            return channels_first_affine(
                x,
                &self.weight.reshape((out_c, in_c))?,
                self.bias.as_ref(),
            );
        }
        let y = conv2d(x, &self.weight, self.cfg)?;
        add_optional_bias(y, self.bias.as_ref(), 1)
    }
}

/// (O, k) of a dense `weight` (O, C, k, k) over `c` input channels, or `None`
/// when the weight does not fit.
fn dense_kernel(weight: &Tensor, c: usize) -> Result<Option<(usize, usize)>> {
    let (o, wc, k, k2) = weight.dims4()?;
    Ok((wc == c && k == k2).then_some((o, k)))
}

/// Dense convolution (groups = 1, no bias) of (B, C, H, W) with `weight` (O, C, k, k).
/// On the CPU in f32 a 3x3 convolution at stride 1 without dilation is
/// Winograd F(4×4, 3×3) (`conv_winograd`), other stride-1 convolutions are k²
/// shifted GEMMs on the padded input (`conv_shift`: no column buffer); other strides are im2col + one
/// batched matmul: the backward is then a matmul plus a scatter (skipped for inputs that need no gradient, such as the
/// image), several times faster than Candle's convolution backward.
pub fn conv2d(x: &Tensor, weight: &Tensor, cfg: ConvCfg) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let Some((o, k)) = dense_kernel(weight, c)? else {
        bail!(
            "conv2d: weight {:?} does not fit input {:?}",
            weight.dims(),
            x.dims()
        );
    };
    if !use_cpu_kernels(x, &[weight]) {
        return x.conv2d(weight, cfg.padding, cfg.stride, cfg.dilation, 1);
    }
    if conv_winograd::applies(k, cfg, c, o) {
        // 3x3, stride 1: Winograd F(4×4, 3×3), a quarter of the multiply-adds.
        return x
            .contiguous()?
            .apply_op2(&weight.contiguous()?, conv_winograd::ConvWinograd { cfg });
    }
    if conv_shift::applies(k, cfg) {
        // Stride 1: k² shifted GEMMs on the padded input, no column buffer.
        return x
            .contiguous()?
            .apply_op2(&weight.contiguous()?, conv_shift::ConvShift { cfg });
    }
    let geom = ColGeom::new(k, cfg, h, w)?;
    let cols = x.contiguous()?.apply_op1(Im2Col {
        geom,
        order: MapOrder::Nchw,
    })?;
    let wm = weight.reshape((o, c * k * k))?;
    wm.broadcast_left(b)?
        .matmul(&cols)?
        .reshape((b, o, geom.ho, geom.wo))
}

/// Dense convolution (groups = 1, no bias) of a channels-last map (B, H, W, C) with
/// `weight` (O, C, k, k) → (B, Ho, Wo, O). Token tensors (B, H·W, C) are this
/// layout already, so transformer stages convolve without transposes.
pub fn conv2d_nhwc(x: &Tensor, weight: &Tensor, cfg: ConvCfg) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let Some((o, k)) = dense_kernel(weight, c)? else {
        bail!(
            "conv2d_nhwc: weight {:?} does not fit channels-last input {:?}",
            weight.dims(),
            x.dims()
        );
    };
    if !use_cpu_kernels(x, &[weight]) {
        let y =
            x.permute((0, 3, 1, 2))?
                .conv2d(weight, cfg.padding, cfg.stride, cfg.dilation, 1)?;
        return y.permute((0, 2, 3, 1))?.contiguous();
    }
    let geom = ColGeom::new(k, cfg, h, w)?;
    let cols = x.contiguous()?.apply_op1(Im2Col {
        geom,
        order: MapOrder::Nhwc,
    })?;
    // Weight in (O, ki, kj, C) order to match the column layout (a small copy).
    let wr = transpose_last2(&weight.reshape((o, c, k * k))?)?.reshape((o, k * k * c))?;
    cols.matmul(&wr.t()?)?.reshape((b, geom.ho, geom.wo, o))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{close, f32, f64, randn};
    use super::*;

    /// The composed fallbacks (other dtypes, other devices) match the fused kernels.
    #[test]
    fn f64_fallback_matches_f32_kernel() {
        let x = randn(&[2, 4, 5, 6]);
        let xn = x.permute((0, 2, 3, 1)).unwrap();
        let wd = randn(&[3, 4, 3, 3]);
        let cfg = ConvCfg {
            stride: 2,
            padding: 1,
            dilation: 1,
        };
        close(
            &f32(&conv2d(&f64(&x), &f64(&wd), cfg).unwrap()),
            &conv2d(&x, &wd, cfg).unwrap(),
            1e-5,
            "conv2d",
        );
        close(
            &f32(&conv2d_nhwc(&f64(&xn), &f64(&wd), cfg).unwrap()),
            &conv2d_nhwc(&xn, &wd, cfg).unwrap(),
            1e-5,
            "conv2d nhwc",
        );
    }
}
