//! Stride-1 depthwise convolution (the 3x3 convolution of the Mix-FFN): the
//! layer, its NCHW and channels-last entry points and the custom ops, one op
//! per pass for both layouts (geometry in `depthwise_geom`, kernels in
//! `depthwise_nchw` and `depthwise_nhwc`). Candle runs a depthwise convolution
//! as a grouped convolution, 50-100x slower than these kernels in backward.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use candle_nn::{Init, VarBuilder};

use super::activation::gelu_owned;
use super::bias::{add_optional_bias, zero_bias};
use super::cpu::{f32_data, graph_free_cpu, use_cpu_kernels, MapOrder};
use super::depthwise_geom::DwGeom;
use super::transpose::transpose_last2;
use super::{depthwise_nchw, depthwise_nhwc};

/// `f32_data` labels of (input, weight, output gradient) for the layout.
fn labels(order: MapOrder) -> (&'static str, &'static str, &'static str) {
    match order {
        MapOrder::Nchw => (
            "depthwise conv input",
            "depthwise conv weight",
            "depthwise conv output gradient",
        ),
        MapOrder::Nhwc => (
            "depthwise conv (channels-last) input",
            "depthwise conv (channels-last) weight",
            "depthwise conv (channels-last) output gradient",
        ),
    }
}

/// Depthwise conv forward: (x, w) → y. NCHW: x (B,C,H,W), w (C,1,k,k) →
/// (B,C,Ho,Wo); channels-last: x (B,H,W,C), w (k·k, C) → (B,Ho,Wo,C).
struct DepthwiseOp {
    geom: DwGeom,
    order: MapOrder,
}

impl CustomOp2 for DepthwiseOp {
    fn name(&self) -> &'static str {
        match self.order {
            MapOrder::Nchw => "depthwise-conv2d",
            MapOrder::Nhwc => "depthwise-conv2d-nhwc",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (input, weight, _) = labels(self.order);
        let x = f32_data(s1, l1, input)?;
        let wt = f32_data(s2, l2, weight)?;
        let (out, shape) = match self.order {
            MapOrder::Nchw => depthwise_nchw::forward(self.geom, x, l1, wt)?,
            MapOrder::Nhwc => {
                depthwise_nhwc::forward(self.geom, x, l1, wt, depthwise_nhwc::Epilogue::None)?
            }
        };
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (_, _, h, wd) = self.order.bchw(x.dims4()?);
        let grad_x = if x.track_op() {
            Some(grad.apply_op2_no_bwd(
                &w.detach(),
                &DepthwiseBwdInput {
                    geom: self.geom,
                    order: self.order,
                    h,
                    w: wd,
                },
            )?)
        } else {
            None
        };
        let grad_w = if w.track_op() {
            Some(x.detach().apply_op2_no_bwd(
                &grad,
                &DepthwiseBwdWeight {
                    geom: self.geom,
                    order: self.order,
                },
            )?)
        } else {
            None
        };
        Ok((grad_x, grad_w))
    }
}

/// Depthwise conv gradient of the input: (grad_y, w) → grad_x of size (h, w).
struct DepthwiseBwdInput {
    geom: DwGeom,
    order: MapOrder,
    h: usize,
    w: usize,
}

impl CustomOp2 for DepthwiseBwdInput {
    fn name(&self) -> &'static str {
        match self.order {
            MapOrder::Nchw => "depthwise-conv2d-bwd-input",
            MapOrder::Nhwc => "depthwise-conv2d-nhwc-bwd-input",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, weight, grad) = labels(self.order);
        let gy = f32_data(s1, l1, grad)?;
        let wt = f32_data(s2, l2, weight)?;
        let size = (self.h, self.w);
        let (out, shape) = match self.order {
            MapOrder::Nchw => depthwise_nchw::backward_input(self.geom, gy, l1, wt, size)?,
            MapOrder::Nhwc => depthwise_nhwc::backward_input(self.geom, gy, l1, wt, size)?,
        };
        Ok((CpuStorage::F32(out), shape))
    }
}

/// Depthwise conv gradient of the weight: (x, grad_y) → grad_w, (C,1,k,k) for
/// NCHW and (k·k, C) channels-last.
struct DepthwiseBwdWeight {
    geom: DwGeom,
    order: MapOrder,
}

impl CustomOp2 for DepthwiseBwdWeight {
    fn name(&self) -> &'static str {
        match self.order {
            MapOrder::Nchw => "depthwise-conv2d-bwd-weight",
            MapOrder::Nhwc => "depthwise-conv2d-nhwc-bwd-weight",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (input, _, grad) = labels(self.order);
        let x = f32_data(s1, l1, input)?;
        let gy = f32_data(s2, l2, grad)?;
        let (out, shape) = match self.order {
            MapOrder::Nchw => depthwise_nchw::backward_weight(self.geom, x, l1, gy, l2)?,
            MapOrder::Nhwc => depthwise_nhwc::backward_weight(self.geom, x, l1, gy)?,
        };
        Ok((CpuStorage::F32(out), shape))
    }
}

/// The geometry of a depthwise `weight` (C, 1, k, k) over `c` channels, or
/// `None` when the weight does not fit (or k or the dilation is 0).
fn depthwise_geom(
    weight: &Tensor,
    c: usize,
    padding: usize,
    dilation: usize,
) -> Result<Option<DwGeom>> {
    let (wc, one, k, k2) = weight.dims4()?;
    let fits = wc == c && one == 1 && k == k2 && k != 0 && dilation != 0;
    Ok(fits.then(|| DwGeom::new(k, padding, dilation)))
}

/// Stride-1 depthwise convolution of (B, C, H, W) with `weight` (C, 1, k, k), no bias.
/// Fused CPU kernels for f32; Candle's grouped `conv2d` elsewhere.
pub fn depthwise_conv2d(
    x: &Tensor,
    weight: &Tensor,
    padding: usize,
    dilation: usize,
) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    let Some(geom) = depthwise_geom(weight, c, padding, dilation)? else {
        bail!(
            "depthwise_conv2d: weight {:?} does not fit input {:?} (expected ({c}, 1, k, k))",
            weight.dims(),
            x.dims()
        );
    };
    if use_cpu_kernels(x, &[weight]) {
        return x.contiguous()?.apply_op2(
            &weight.contiguous()?,
            DepthwiseOp {
                geom,
                order: MapOrder::Nchw,
            },
        );
    }
    x.conv2d(weight, padding, 1, dilation, c)
}

/// A depthwise weight (C, 1, k, k) as (k·k, C): a tiny transpose that keeps
/// the channels-last kernels' inner loop over channels.
fn nhwc_weight(weight: &Tensor, c: usize, geom: DwGeom) -> Result<Tensor> {
    transpose_last2(&weight.reshape((c, geom.k * geom.k))?)
}

/// Stride-1 depthwise convolution of a channels-last map (B, H, W, C) with
/// `weight` (C, 1, k, k), no bias → (B, Ho, Wo, C).
pub fn depthwise_conv2d_nhwc(
    x: &Tensor,
    weight: &Tensor,
    padding: usize,
    dilation: usize,
) -> Result<Tensor> {
    let (_, _, _, c) = x.dims4()?;
    let Some(geom) = depthwise_geom(weight, c, padding, dilation)? else {
        bail!(
            "depthwise_conv2d_nhwc: weight {:?} does not fit channels-last input {:?}",
            weight.dims(),
            x.dims()
        );
    };
    if !use_cpu_kernels(x, &[weight]) {
        let y = x
            .permute((0, 3, 1, 2))?
            .conv2d(weight, padding, 1, dilation, c)?;
        return y.permute((0, 2, 3, 1))?.contiguous();
    }
    let wt = nhwc_weight(weight, c, geom)?;
    x.contiguous()?.apply_op2(
        &wt,
        DepthwiseOp {
            geom,
            order: MapOrder::Nhwc,
        },
    )
}

/// GELU(depthwise conv + bias) on a channels-last map in one pass, for
/// tensors outside any graph: (x (B,H,W,C), w (k·k, C), b (C)) → y. No backward.
struct DepthwiseBiasGeluNhwc {
    geom: DwGeom,
}

impl CustomOp3 for DepthwiseBiasGeluNhwc {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-nhwc-bias-gelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (input, weight, _) = labels(MapOrder::Nhwc);
        let x = f32_data(s1, l1, input)?;
        let wt = f32_data(s2, l2, weight)?;
        let b = f32_data(s3, l3, "depthwise conv bias")?;
        let epilogue = depthwise_nhwc::Epilogue::BiasGelu(b);
        let (out, shape) = depthwise_nhwc::forward(self.geom, x, l1, wt, epilogue)?;
        Ok((CpuStorage::F32(out), shape))
    }
}

/// Depthwise 3x3-style convolution layer (stride 1): `weight` (C, 1, k, k), `bias` (C).
#[derive(Debug, Clone)]
pub struct DepthwiseConv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: usize,
    dilation: usize,
}

impl DepthwiseConv2d {
    /// Weight N(0, sqrt(2 / fan_out)) with fan_out = k·k·C/groups = k·k, bias 0.
    pub fn new(
        channels: usize,
        kernel: usize,
        padding: usize,
        dilation: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        if kernel == 0 || dilation == 0 {
            bail!(
                "DepthwiseConv2d {}: kernel and dilation must be positive",
                vb.prefix()
            );
        }
        let init = Init::Randn {
            mean: 0.0,
            stdev: (2.0 / (kernel * kernel) as f64).sqrt(),
        };
        let weight = vb.get_with_hints((channels, 1, kernel, kernel), "weight", init)?;
        let bias = zero_bias(&vb, channels, bias)?;
        Ok(Self {
            weight,
            bias,
            padding,
            dilation,
        })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// (B, C, H, W) → (B, C, Ho, Wo).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = depthwise_conv2d(x, &self.weight, self.padding, self.dilation)?;
        add_optional_bias(y, self.bias.as_ref(), 1)
    }

    /// Channels-last variant: (B, H, W, C) → (B, Ho, Wo, C).
    pub fn forward_nhwc(&self, x: &Tensor) -> Result<Tensor> {
        let y = depthwise_conv2d_nhwc(x, &self.weight, self.padding, self.dilation)?;
        add_optional_bias(y, self.bias.as_ref(), 3)
    }

    /// GELU of [`DepthwiseConv2d::forward_nhwc`] (the Mix-FFN's conv and
    /// activation). Outside a graph (evaluation, the teacher) on the CPU in
    /// f32 the bias and the GELU are applied to each output row as it is
    /// computed: one pass over the map instead of three, the same values.
    pub fn forward_nhwc_gelu(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, _, c) = x.dims4()?;
        let geom = depthwise_geom(&self.weight, c, self.padding, self.dilation)?;
        if let (Some(geom), Some(b)) = (geom, &self.bias) {
            if graph_free_cpu(x, &[&self.weight, b]) && b.dims() == [c] {
                let wt = nhwc_weight(&self.weight, c, geom)?;
                return x.contiguous()?.apply_op3_no_bwd(
                    &wt,
                    &b.contiguous()?,
                    &DepthwiseBiasGeluNhwc { geom },
                );
            }
        }
        gelu_owned(self.forward_nhwc(x)?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::gelu;
    use super::super::test_util::{bits, close, f32, f64, randn};
    use super::*;

    /// Outside a graph the conv, bias and GELU run in one pass (and GELU,
    /// bias and residual sums in place): bit for bit what the graph path
    /// (separate ops) gives.
    #[test]
    fn fused_graph_free_path_equals_the_graph_path_bit_for_bit() {
        use candle_core::{DType, Device, Var};
        use candle_nn::VarMap;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let layer = DepthwiseConv2d::new(12, 3, 1, 1, true, vb).unwrap();
        // A non-zero bias (it starts at 0).
        let bias = varmap.data().lock().unwrap()["bias"].clone();
        bias.set(&randn(&[12])).unwrap();
        let x = randn(&[2, 7, 9, 12]);
        // Tracked weights: separate ops.
        let graph = gelu(&layer.forward_nhwc(&x).unwrap()).unwrap();
        assert!(graph.track_op());
        // Graph-free copies of the weights: the fused op.
        let free = DepthwiseConv2d {
            weight: layer.weight.detach(),
            bias: layer.bias.as_ref().map(|b| b.detach()),
            padding: 1,
            dilation: 1,
        };
        let fused = free.forward_nhwc_gelu(&x).unwrap();
        assert!(!fused.track_op());
        assert_eq!(bits(&fused), bits(&graph));
        // The tracked layer's own `forward_nhwc_gelu` keeps the graph.
        assert!(layer.forward_nhwc_gelu(&x).unwrap().track_op());
        // In-place residual sum and GELU of owned, graph-free tensors.
        let a = randn(&[3, 50]);
        let b = randn(&[3, 50]);
        let want = super::super::add(&a, &b).unwrap();
        let got = super::super::add_owned(&a, b.copy().unwrap()).unwrap();
        assert_eq!(bits(&got), bits(&want));
        let gelu_in_place = super::super::activation::gelu_owned(a.copy().unwrap()).unwrap();
        assert_eq!(bits(&gelu_in_place), bits(&gelu(&a).unwrap()));
        // A tracked operand takes the graph path.
        let v = Var::from_tensor(&a).unwrap();
        assert!(super::super::add_owned(&b, v.as_tensor().clone())
            .unwrap()
            .track_op());
    }

    /// The composed fallbacks (other dtypes, other devices) match the fused kernels.
    #[test]
    fn f64_fallback_matches_f32_kernel() {
        let x = randn(&[2, 4, 5, 6]);
        let w = randn(&[4, 1, 3, 3]);
        close(
            &f32(&depthwise_conv2d(&f64(&x), &f64(&w), 2, 2).unwrap()),
            &depthwise_conv2d(&x, &w, 2, 2).unwrap(),
            1e-5,
            "depthwise",
        );
        let xn = x.permute((0, 2, 3, 1)).unwrap();
        close(
            &f32(&depthwise_conv2d_nhwc(&f64(&xn), &f64(&w), 1, 1).unwrap()),
            &depthwise_conv2d_nhwc(&xn, &w, 1, 1).unwrap(),
            1e-5,
            "depthwise nhwc",
        );
    }
}
