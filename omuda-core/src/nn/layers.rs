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

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, Var, D,
};
use candle_nn::{Init, VarBuilder};
use rand::Rng;
use rayon::prelude::*;

use super::ForwardCtx;

// ---------------------------------------------------------------------------
// Helpers shared by the custom ops
// ---------------------------------------------------------------------------

/// True when the fused CPU kernels apply to `x`.
fn use_cpu_kernels(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// The contiguous `f32` data of a CPU storage, or an error naming the operand.
fn f32_data<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        other => bail!("{what}: expected an f32 tensor, got {:?}", other.dtype()),
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!(
            "{what}: expected a contiguous tensor, got strides {:?}",
            l.stride()
        ),
    }
}

/// Rows handed to one rayon task: enough work to amortise the task overhead.
fn rows_per_task(row_len: usize) -> usize {
    (16 * 1024 / row_len.max(1)).max(1)
}

/// Element-wise sum of two equally long vectors (used to merge per-task partial sums).
fn add_vecs(mut a: Vec<f32>, b: Vec<f32>) -> Vec<f32> {
    for (x, y) in a.iter_mut().zip(b.iter()) {
        *x += *y;
    }
    a
}

/// Sum with eight independent accumulators: a sequential float sum cannot be
/// vectorised (it fixes the order of additions); this one can, and is at least
/// as accurate.
#[inline]
fn sum_f32(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Σ a·b with eight accumulators (see [`sum_f32`]).
#[inline]
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Σ (x − m)² with eight accumulators (see [`sum_f32`]).
#[inline]
fn sq_dev_sum(xs: &[f32], m: f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|v| (v - m) * (v - m)).sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += (c[i] - m) * (c[i] - m);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Σ g·(x − m) with eight accumulators (see [`sum_f32`]).
#[inline]
fn centered_dot(g: &[f32], x: &[f32], m: f32) -> f32 {
    let mut acc = [0f32; 8];
    let (cg, cx) = (g.chunks_exact(8), x.chunks_exact(8));
    let tail: f32 = cg
        .remainder()
        .iter()
        .zip(cx.remainder())
        .map(|(a, b)| a * (b - m))
        .sum();
    for (a, b) in cg.zip(cx) {
        for i in 0..8 {
            acc[i] += a[i] * (b[i] - m);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Elements per rayon task of the element-wise kernels.
const ELEMWISE_CHUNK: usize = 16 * 1024;

/// Element-wise kernel over `x` in parallel chunks; `f(x_chunk, out_chunk)` runs
/// a plain loop so that it vectorises (rayon's per-item `map` does not).
fn par_map(x: &[f32], f: impl Fn(&[f32], &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(ELEMWISE_CHUNK)
        .zip(x.par_chunks(ELEMWISE_CHUNK))
        .for_each(|(o, xs)| f(xs, o));
    out
}

/// Two-input version of [`par_map`] (`a` and `b` of equal length).
fn par_map2(a: &[f32], b: &[f32], f: impl Fn(&[f32], &[f32], &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; a.len()];
    out.par_chunks_mut(ELEMWISE_CHUNK)
        .zip(
            a.par_chunks(ELEMWISE_CHUNK)
                .zip(b.par_chunks(ELEMWISE_CHUNK)),
        )
        .for_each(|(o, (xa, xb))| f(xa, xb, o));
    out
}

/// `x` viewed as (outer, channels, inner) around `axis`.
fn split_at_axis(dims: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = dims[..axis].iter().product();
    let inner = dims[axis + 1..].iter().product();
    (outer, dims[axis], inner)
}

// ---------------------------------------------------------------------------
// Bias addition with a cheap bias gradient
// ---------------------------------------------------------------------------

/// `x + b` where `b` (C) is broadcast along `axis` of `x`. Candle's
/// `broadcast_add` reduces the bias gradient with a slow strided sum; this op
/// sums contiguous runs instead.
struct AddBias {
    axis: usize,
}

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, "add_bias input")?;
        let b = f32_data(s2, l2, "add_bias bias")?;
        let (_, c, inner) = split_at_axis(l1.dims(), self.axis);
        let mut out = x.to_vec();
        let block = c * inner;
        out.par_chunks_mut((block * rows_per_task(block)).max(1))
            .for_each(|chunk| {
                for blk in chunk.chunks_mut(block) {
                    if inner == 1 {
                        for (v, bv) in blk.iter_mut().zip(b.iter()) {
                            *v += *bv;
                        }
                    } else {
                        for (ci, run) in blk.chunks_mut(inner).enumerate() {
                            let bv = b[ci];
                            run.iter_mut().for_each(|v| *v += bv);
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_b = if b.track_op() {
            Some(
                grad.contiguous()?
                    .apply_op1_no_bwd(&SumToChannels { axis: self.axis })?,
            )
        } else {
            None
        };
        Ok((Some(grad.clone()), grad_b))
    }
}

/// Sum of `x` over every axis except `axis` → (C).
struct SumToChannels {
    axis: usize,
}

impl CustomOp1 for SumToChannels {
    fn name(&self) -> &'static str {
        "sum-to-channels"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, "bias gradient")?;
        let (outer, c, inner) = split_at_axis(l.dims(), self.axis);
        let block = c * inner;
        let sums = if inner == 1 {
            x.par_chunks((block * rows_per_task(block)).max(1))
                .map(|chunk| {
                    let mut acc = vec![0f32; c];
                    for row in chunk.chunks(block) {
                        for (a, v) in acc.iter_mut().zip(row.iter()) {
                            *a += *v;
                        }
                    }
                    acc
                })
                .reduce(|| vec![0f32; c], add_vecs)
        } else {
            (0..c)
                .into_par_iter()
                .map(|ci| {
                    (0..outer)
                        .map(|o| {
                            let start = o * block + ci * inner;
                            sum_f32(&x[start..start + inner])
                        })
                        .sum::<f32>()
                })
                .collect()
        };
        Ok((CpuStorage::F32(sums), Shape::from(c)))
    }
}

/// `x + b` with `b` (C) broadcast along `axis` of `x`; differentiable in both.
pub fn add_bias(x: &Tensor, b: &Tensor, axis: usize) -> Result<Tensor> {
    let dims = x.dims();
    if axis >= dims.len() || b.dims() != [dims[axis]] {
        bail!(
            "add_bias: bias of shape {:?} does not match axis {axis} of input {:?}",
            b.dims(),
            dims
        );
    }
    if use_cpu_kernels(x) && b.dtype() == DType::F32 {
        return x
            .contiguous()?
            .apply_op2(&b.contiguous()?, AddBias { axis });
    }
    let mut shape = vec![1usize; dims.len()];
    shape[axis] = dims[axis];
    x.broadcast_add(&b.reshape(shape)?)
}

// ---------------------------------------------------------------------------
// Constant per-group scaling (drop-path and Dropout2d masks)
// ---------------------------------------------------------------------------

/// Multiplies the g-th of `s.len()` equal contiguous slices of `x` by `s[g]`.
/// `s` is a constant mask: it receives no gradient, so the backward pass does not
/// spend a full-size product and a reduction on it as `broadcast_mul` would.
struct ScaleGroups;

impl CustomOp2 for ScaleGroups {
    fn name(&self) -> &'static str {
        "scale-groups"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, "scale_groups input")?;
        let s = f32_data(s2, l2, "scale_groups mask")?;
        let group = x.len() / s.len().max(1);
        let mut out = x.to_vec();
        out.par_chunks_mut(group.max(1))
            .zip(s.par_iter())
            .for_each(|(chunk, &sv)| {
                if sv == 0.0 {
                    chunk.iter_mut().for_each(|v| *v = 0.0);
                } else if sv != 1.0 {
                    chunk.iter_mut().for_each(|v| *v *= sv);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        s: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(scale_groups(grad, s)?), None))
    }
}

/// `x` with its g-th contiguous group (of `x.elem_count() / s.elem_count()`
/// elements) multiplied by the constant `s[g]`. `s` gets no gradient.
fn scale_groups(x: &Tensor, s: &Tensor) -> Result<Tensor> {
    let n = s.elem_count();
    if n == 0 || !x.elem_count().is_multiple_of(n) {
        bail!(
            "scale_groups: mask of {n} elements does not split input {:?}",
            x.dims()
        );
    }
    let s = s.detach();
    if use_cpu_kernels(x) {
        return x.contiguous()?.apply_op2(&s.contiguous()?, ScaleGroups);
    }
    let flat = x.reshape((n, x.elem_count() / n))?;
    flat.broadcast_mul(&s.reshape((n, 1))?.to_dtype(x.dtype())?)?
        .reshape(x.shape())
}

/// Bernoulli(keep) mask of `n` values, each 0 or 1/keep.
fn keep_mask(
    n: usize,
    keep: f64,
    ctx: &mut ForwardCtx,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let scale = (1.0 / keep) as f32;
    let mask: Vec<f32> = (0..n)
        .map(|_| {
            if ctx.rng.gen::<f64>() < keep {
                scale
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(mask, n, device)
}

/// Stochastic depth: each sample's residual branch is dropped with probability
/// `rate` and the kept ones are scaled by 1/(1-rate). Active only when
/// `ctx.stochastic`.
#[derive(Debug, Clone, Copy)]
pub struct DropPath {
    rate: f64,
}

impl DropPath {
    pub fn new(rate: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&rate) {
            bail!("DropPath: rate must be in [0, 1), got {rate}");
        }
        Ok(Self { rate })
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// `x`: (B, ...). One draw per sample from `ctx.rng`.
    pub fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        if !ctx.stochastic || self.rate == 0.0 {
            return Ok(x.clone());
        }
        let b = x.dim(0)?;
        let mask = keep_mask(b, 1.0 - self.rate, ctx, x.device())?;
        scale_groups(x, &mask)
    }
}

/// Channel dropout on (B, C, H, W): whole channels are zeroed with probability
/// `rate`, the others scaled by 1/(1-rate). Active only when `ctx.stochastic`.
#[derive(Debug, Clone, Copy)]
pub struct Dropout2d {
    rate: f64,
}

impl Dropout2d {
    pub fn new(rate: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&rate) {
            bail!("Dropout2d: rate must be in [0, 1), got {rate}");
        }
        Ok(Self { rate })
    }

    pub fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        if !ctx.stochastic || self.rate == 0.0 {
            return Ok(x.clone());
        }
        let (b, c, _, _) = x.dims4()?;
        let mask = keep_mask(b * c, 1.0 - self.rate, ctx, x.device())?;
        scale_groups(x, &mask)
    }
}

// ---------------------------------------------------------------------------
// Linear
// ---------------------------------------------------------------------------

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
        let bias = if bias {
            Some(vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?)
        } else {
            None
        };
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
        let y = match &self.bias {
            Some(b) => add_bias(&y, b, 1)?,
            None => y,
        };
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
    let y = match b {
        Some(bias) => add_bias(&y, bias, 1)?,
        None => y,
    };
    let mut out_dims = dims;
    out_dims[1] = out_dim;
    y.reshape(out_dims)
}

// ---------------------------------------------------------------------------
// Conv2d
// ---------------------------------------------------------------------------

/// Stride, padding and dilation of a square 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvCfg {
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
}

impl Default for ConvCfg {
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
            dilation: 1,
        }
    }
}

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
        let bias = if bias {
            Some(vb.get_with_hints(out_c, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self { weight, bias, cfg })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Channels-last variant: (B, H, W, C) → (B, Ho, Wo, O).
    pub fn forward_nhwc(&self, x: &Tensor) -> Result<Tensor> {
        let y = conv2d_nhwc(x, &self.weight, self.cfg)?;
        match &self.bias {
            Some(bias) => add_bias(&y, bias, 3),
            None => Ok(y),
        }
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
        match &self.bias {
            Some(bias) => add_bias(&y, bias, 1),
            None => Ok(y),
        }
    }
}

/// Geometry of a dense convolution for the im2col kernels.
#[derive(Debug, Clone, Copy)]
struct ColGeom {
    k: usize,
    cfg: ConvCfg,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
}

impl ColGeom {
    fn new(k: usize, cfg: ConvCfg, h: usize, w: usize) -> Result<Self> {
        let span = cfg.dilation * (k - 1) + 1;
        let out = |n: usize| match (n + 2 * cfg.padding).checked_sub(span) {
            Some(v) => Ok(v / cfg.stride + 1),
            None => bail!("conv2d: input size {n} too small for kernel {k} with {cfg:?}"),
        };
        Ok(Self {
            k,
            cfg,
            h,
            w,
            ho: out(h)?,
            wo: out(w)?,
        })
    }

    /// Input index of output index `o` at tap `t`, if inside the input.
    #[inline]
    fn src(&self, o: usize, t: usize, n: usize) -> Option<usize> {
        let i = (o * self.cfg.stride + t * self.cfg.dilation) as isize - self.cfg.padding as isize;
        (i >= 0 && (i as usize) < n).then_some(i as usize)
    }
}

/// (B, C, H, W) → columns (B, C·k·k, Ho·Wo), zero where the window leaves the input.
struct Im2Col {
    geom: ColGeom,
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, "conv2d input")?;
        let (b, c, h, w) = dims4(l)?;
        let g = self.geom;
        let (kk, len) = (g.k * g.k, g.ho * g.wo);
        let mut out = vec![0f32; b * c * kk * len];
        // One task per (sample, input channel): it owns k·k consecutive rows.
        out.par_chunks_mut(kk * len)
            .enumerate()
            .for_each(|(plane, rows)| {
                let xp = &x[plane * h * w..(plane + 1) * h * w];
                for ki in 0..g.k {
                    for kj in 0..g.k {
                        let row = &mut rows[(ki * g.k + kj) * len..(ki * g.k + kj + 1) * len];
                        for oi in 0..g.ho {
                            let Some(ii) = g.src(oi, ki, h) else { continue };
                            let xr = &xp[ii * w..(ii + 1) * w];
                            let dst = &mut row[oi * g.wo..(oi + 1) * g.wo];
                            for (oj, d) in dst.iter_mut().enumerate() {
                                if let Some(jj) = g.src(oj, kj, w) {
                                    *d = xr[jj];
                                }
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, c * kk, len))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // The network input (an image) does not track gradients: skip the scatter.
        if !x.track_op() {
            return Ok(None);
        }
        let (_, c, _, _) = x.dims4()?;
        Ok(Some(
            grad.contiguous()?
                .apply_op1_no_bwd(&Col2Im { geom: self.geom, c })?,
        ))
    }
}

/// Columns (B, C·k·k, Ho·Wo) → (B, C, H, W), summing overlapping windows (adjoint of [`Im2Col`]).
struct Col2Im {
    geom: ColGeom,
    c: usize,
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let cols = f32_data(s, l, "im2col gradient")?;
        let g = self.geom;
        let (kk, len) = (g.k * g.k, g.ho * g.wo);
        let b = cols.len() / (self.c * kk * len).max(1);
        let (h, w) = (g.h, g.w);
        let mut out = vec![0f32; b * self.c * h * w];
        out.par_chunks_mut(h * w)
            .enumerate()
            .for_each(|(plane, dx)| {
                let rows = &cols[plane * kk * len..(plane + 1) * kk * len];
                for ki in 0..g.k {
                    for kj in 0..g.k {
                        let row = &rows[(ki * g.k + kj) * len..(ki * g.k + kj + 1) * len];
                        for oi in 0..g.ho {
                            let Some(ii) = g.src(oi, ki, h) else { continue };
                            let dr = &mut dx[ii * w..(ii + 1) * w];
                            for (oj, v) in row[oi * g.wo..(oi + 1) * g.wo].iter().enumerate() {
                                if let Some(jj) = g.src(oj, kj, w) {
                                    dr[jj] += *v;
                                }
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, self.c, h, w))))
    }
}

/// Dense convolution (groups = 1, no bias) of (B, C, H, W) with `weight` (O, C, k, k).
/// On the CPU in f32 it is im2col + one batched matmul: the backward is then a
/// matmul plus a scatter (skipped for inputs that need no gradient, such as the
/// image), several times faster than Candle's convolution backward.
pub fn conv2d(x: &Tensor, weight: &Tensor, cfg: ConvCfg) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (o, wc, k, k2) = weight.dims4()?;
    if wc != c || k != k2 {
        bail!(
            "conv2d: weight {:?} does not fit input {:?}",
            weight.dims(),
            x.dims()
        );
    }
    if !(use_cpu_kernels(x) && weight.dtype() == DType::F32) {
        return x.conv2d(weight, cfg.padding, cfg.stride, cfg.dilation, 1);
    }
    let geom = ColGeom::new(k, cfg, h, w)?;
    let cols = x.contiguous()?.apply_op1(Im2Col { geom })?;
    let wm = weight.reshape((o, c * k * k))?;
    wm.broadcast_left(b)?
        .matmul(&cols)?
        .reshape((b, o, geom.ho, geom.wo))
}

/// Channels-last (B, H, W, C) → columns (B·Ho·Wo, k·k·C): one row per output
/// pixel, taps in (ki, kj, c) order, zero where the window leaves the input.
struct Im2ColNhwc {
    geom: ColGeom,
}

impl CustomOp1 for Im2ColNhwc {
    fn name(&self) -> &'static str {
        "im2col-nhwc"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, "conv2d (channels-last) input")?;
        let (b, h, w, c) = dims4(l)?;
        let g = self.geom;
        let row = g.k * g.k * c;
        let mut out = vec![0f32; b * g.ho * g.wo * row];
        // One task per output row (sample, oi): it owns Wo consecutive column rows.
        out.par_chunks_mut((g.wo * row).max(1))
            .enumerate()
            .for_each(|(r, o)| {
                let (bi, oi) = (r / g.ho, r % g.ho);
                for ki in 0..g.k {
                    let Some(ii) = g.src(oi, ki, h) else { continue };
                    let xrow = &x[(bi * h + ii) * w * c..(bi * h + ii + 1) * w * c];
                    for oj in 0..g.wo {
                        for kj in 0..g.k {
                            if let Some(jj) = g.src(oj, kj, w) {
                                let dst = oj * row + (ki * g.k + kj) * c;
                                o[dst..dst + c].copy_from_slice(&xrow[jj * c..(jj + 1) * c]);
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b * g.ho * g.wo, row))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        let (b, _, _, c) = x.dims4()?;
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Col2ImNhwc {
            geom: self.geom,
            b,
            c,
        })?))
    }
}

/// Adjoint of [`Im2ColNhwc`]: columns → (B, H, W, C). Written as a gather (each
/// task owns one input row), so overlapping windows need no synchronisation.
struct Col2ImNhwc {
    geom: ColGeom,
    b: usize,
    c: usize,
}

impl ColGeom {
    /// Output index whose tap `t` reads input index `i`, if any.
    #[inline]
    fn dst(&self, i: usize, t: usize, n_out: usize) -> Option<usize> {
        let v = (i + self.cfg.padding) as isize - (t * self.cfg.dilation) as isize;
        if v < 0 || !(v as usize).is_multiple_of(self.cfg.stride) {
            return None;
        }
        let o = v as usize / self.cfg.stride;
        (o < n_out).then_some(o)
    }
}

impl CustomOp1 for Col2ImNhwc {
    fn name(&self) -> &'static str {
        "col2im-nhwc"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let cols = f32_data(s, l, "im2col (channels-last) gradient")?;
        let (g, c) = (self.geom, self.c);
        let row = g.k * g.k * c;
        let mut out = vec![0f32; self.b * g.h * g.w * c];
        out.par_chunks_mut((g.w * c).max(1))
            .enumerate()
            .for_each(|(r, dx)| {
                let (bi, ii) = (r / g.h, r % g.h);
                for ki in 0..g.k {
                    let Some(oi) = g.dst(ii, ki, g.ho) else {
                        continue;
                    };
                    for jj in 0..g.w {
                        let d = &mut dx[jj * c..(jj + 1) * c];
                        for kj in 0..g.k {
                            if let Some(oj) = g.dst(jj, kj, g.wo) {
                                let src =
                                    ((bi * g.ho + oi) * g.wo + oj) * row + (ki * g.k + kj) * c;
                                for (dv, sv) in d.iter_mut().zip(&cols[src..src + c]) {
                                    *dv += *sv;
                                }
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((self.b, g.h, g.w, c))))
    }
}

/// Dense convolution (groups = 1, no bias) of a channels-last map (B, H, W, C) with
/// `weight` (O, C, k, k) → (B, Ho, Wo, O). Token tensors (B, H·W, C) are this
/// layout already, so transformer stages convolve without transposes.
pub fn conv2d_nhwc(x: &Tensor, weight: &Tensor, cfg: ConvCfg) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let (o, wc, k, k2) = weight.dims4()?;
    if wc != c || k != k2 {
        bail!(
            "conv2d_nhwc: weight {:?} does not fit channels-last input {:?}",
            weight.dims(),
            x.dims()
        );
    }
    if !(use_cpu_kernels(x) && weight.dtype() == DType::F32) {
        let y =
            x.permute((0, 3, 1, 2))?
                .conv2d(weight, cfg.padding, cfg.stride, cfg.dilation, 1)?;
        return y.permute((0, 2, 3, 1))?.contiguous();
    }
    let geom = ColGeom::new(k, cfg, h, w)?;
    let cols = x.contiguous()?.apply_op1(Im2ColNhwc { geom })?;
    // Weight in (O, ki, kj, C) order to match the column layout (a small copy).
    let wr = weight
        .permute((0, 2, 3, 1))?
        .contiguous()?
        .reshape((o, k * k * c))?;
    cols.matmul(&wr.t()?)?.reshape((b, geom.ho, geom.wo, o))
}

// ---------------------------------------------------------------------------
// LayerNorm
// ---------------------------------------------------------------------------

/// Mean and 1/std (biased variance) of one row.
#[inline]
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = sum_f32(row) / n;
    let var = sq_dev_sum(row, mean) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Fused LayerNorm over the last dim: (x, weight, bias) → y.
struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm"
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
        let x = f32_data(s1, l1, "layer_norm input")?;
        let w = f32_data(s2, l2, "layer_norm weight")?;
        let b = f32_data(s3, l3, "layer_norm bias")?;
        let c = w.len();
        let mut out = vec![0f32; x.len()];
        let task = (c * rows_per_task(c)).max(1);
        out.par_chunks_mut(task)
            .zip(x.par_chunks(task))
            .for_each(|(o, xs)| {
                for (orow, xrow) in o.chunks_mut(c).zip(xs.chunks(c)) {
                    let (mean, rstd) = row_stats(xrow, self.eps);
                    for i in 0..c {
                        orow[i] = (xrow[i] - mean) * rstd * w[i] + b[i];
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let grad_x = if x.track_op() {
            Some(x.apply_op3_no_bwd(&w.detach(), &grad, &LayerNormBwdInput { eps: self.eps })?)
        } else {
            None
        };
        let (grad_w, grad_b) = if w.track_op() || b.track_op() {
            let wb = x.apply_op2_no_bwd(&grad, &LayerNormBwdParams { eps: self.eps })?;
            (Some(wb.get(0)?), Some(wb.get(1)?))
        } else {
            (None, None)
        };
        Ok((grad_x, grad_w, grad_b))
    }
}

/// LayerNorm gradient with respect to the input: (x, weight, grad_y) → grad_x.
struct LayerNormBwdInput {
    eps: f32,
}

impl CustomOp3 for LayerNormBwdInput {
    fn name(&self) -> &'static str {
        "layer-norm-bwd-input"
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
        let x = f32_data(s1, l1, "layer_norm input")?;
        let w = f32_data(s2, l2, "layer_norm weight")?;
        let g = f32_data(s3, l3, "layer_norm output gradient")?;
        let c = w.len();
        let mut out = vec![0f32; x.len()];
        let task = (c * rows_per_task(c)).max(1);
        out.par_chunks_mut(task)
            .zip(x.par_chunks(task).zip(g.par_chunks(task)))
            .for_each(|(o, (xs, gs))| {
                for ((orow, xrow), grow) in o.chunks_mut(c).zip(xs.chunks(c)).zip(gs.chunks(c)) {
                    let (mean, rstd) = row_stats(xrow, self.eps);
                    // dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) with ĝ = g·w.
                    let (mut sum_g, mut sum_gx) = (0f32, 0f32);
                    for i in 0..c {
                        let gh = grow[i] * w[i];
                        sum_g += gh;
                        sum_gx += gh * (xrow[i] - mean) * rstd;
                    }
                    let (mg, mgx) = (sum_g / c as f32, sum_gx / c as f32);
                    for i in 0..c {
                        let xh = (xrow[i] - mean) * rstd;
                        orow[i] = rstd * (grow[i] * w[i] - mg - xh * mgx);
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// LayerNorm gradients of weight and bias: (x, grad_y) → (2, C) = [Σ g·x̂; Σ g].
struct LayerNormBwdParams {
    eps: f32,
}

impl CustomOp2 for LayerNormBwdParams {
    fn name(&self) -> &'static str {
        "layer-norm-bwd-params"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, "layer_norm input")?;
        let g = f32_data(s2, l2, "layer_norm output gradient")?;
        let c = match l1.dims().last() {
            Some(&c) if c > 0 => c,
            _ => bail!(
                "layer_norm backward: empty last dimension in {:?}",
                l1.dims()
            ),
        };
        let task = (c * rows_per_task(c)).max(1);
        let sums = x
            .par_chunks(task)
            .zip(g.par_chunks(task))
            .map(|(xs, gs)| {
                let mut acc = vec![0f32; 2 * c];
                for (xrow, grow) in xs.chunks(c).zip(gs.chunks(c)) {
                    let (mean, rstd) = row_stats(xrow, self.eps);
                    let (aw, ab) = acc.split_at_mut(c);
                    for i in 0..c {
                        aw[i] += grow[i] * (xrow[i] - mean) * rstd;
                        ab[i] += grow[i];
                    }
                }
                acc
            })
            .reduce(|| vec![0f32; 2 * c], add_vecs);
        Ok((CpuStorage::F32(sums), Shape::from((2, c))))
    }
}

/// Composed LayerNorm over the last dim (differentiable on every device).
pub fn layer_norm_composed(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xhat = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xhat.broadcast_mul(w)?.broadcast_add(b)
}

/// LayerNorm over the last dim with weight and bias (C), differentiable in all three.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let c = w.elem_count();
    if x.dims().last() != Some(&c) || b.elem_count() != c {
        bail!(
            "layer_norm: weight {:?} / bias {:?} do not match the last dim of input {:?}",
            w.dims(),
            b.dims(),
            x.dims()
        );
    }
    if use_cpu_kernels(x) && w.dtype() == DType::F32 && b.dtype() == DType::F32 {
        return x.contiguous()?.apply_op3(
            &w.contiguous()?,
            &b.contiguous()?,
            LayerNormOp { eps: eps as f32 },
        );
    }
    layer_norm_composed(x, w, b, eps)
}

/// Layer normalisation over the last dimension: `weight` (1), `bias` (0).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(dim, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias, eps })
    }

    pub fn eps(&self) -> f64 {
        self.eps
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

// ---------------------------------------------------------------------------
// BatchNorm2d
// ---------------------------------------------------------------------------

/// Per-channel [mean; biased variance] of (B, C, H, W) → (2, C). No gradient: the
/// train-mode BatchNorm backward accounts for the statistics itself.
struct ChannelStats;

impl CustomOp1 for ChannelStats {
    fn name(&self) -> &'static str {
        "channel-stats"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, "batch_norm input")?;
        let (b, c, hw) = split_at_axis(l.dims(), 1);
        let n = (b * hw) as f32;
        let stats: Vec<(f32, f32)> = (0..c)
            .into_par_iter()
            .map(|ci| {
                let planes =
                    || (0..b).map(move |bi| &x[(bi * c + ci) * hw..(bi * c + ci + 1) * hw]);
                let mean = planes().map(sum_f32).sum::<f32>() / n;
                let var = planes().map(|p| sq_dev_sum(p, mean)).sum::<f32>() / n;
                (mean, var)
            })
            .collect();
        let mut out = vec![0f32; 2 * c];
        for (ci, (m, v)) in stats.into_iter().enumerate() {
            out[ci] = m;
            out[c + ci] = v;
        }
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}

/// Train-mode BatchNorm: (x (B,C,H,W), stats (2,C) = [mean; var], wb (2,C) = [weight; bias]) → y.
struct BatchNormTrainOp {
    eps: f32,
}

impl CustomOp3 for BatchNormTrainOp {
    fn name(&self) -> &'static str {
        "batch-norm-train"
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
        let x = f32_data(s1, l1, "batch_norm input")?;
        let st = f32_data(s2, l2, "batch_norm statistics")?;
        let wb = f32_data(s3, l3, "batch_norm weight/bias")?;
        let (_, c, hw) = split_at_axis(l1.dims(), 1);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(hw.max(1))
            .zip(x.par_chunks(hw.max(1)))
            .enumerate()
            .for_each(|(plane, (o, xp))| {
                let ci = plane % c;
                let scale = wb[ci] / (st[c + ci] + self.eps).sqrt();
                let shift = wb[c + ci] - st[ci] * scale;
                for (ov, xv) in o.iter_mut().zip(xp.iter()) {
                    *ov = xv * scale + shift;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        stats: &Tensor,
        wb: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // [Σ g·x̂; Σ g] per channel: the weight/bias gradient, and the two sums
        // the input gradient needs.
        let sums = x.apply_op3_no_bwd(&grad, stats, &BatchNormBwdParams { eps: self.eps })?;
        let grad_x = if x.track_op() {
            let params = Tensor::cat(&[stats, &wb.detach(), &sums], 0)?;
            Some(x.apply_op3_no_bwd(&grad, &params, &BatchNormBwdInput { eps: self.eps })?)
        } else {
            None
        };
        let grad_wb = if wb.track_op() { Some(sums) } else { None };
        Ok((grad_x, None, grad_wb))
    }
}

/// (x, grad_y, stats) → (2, C) = [Σ g·x̂; Σ g] over batch and space.
struct BatchNormBwdParams {
    eps: f32,
}

impl CustomOp3 for BatchNormBwdParams {
    fn name(&self) -> &'static str {
        "batch-norm-bwd-params"
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
        let x = f32_data(s1, l1, "batch_norm input")?;
        let g = f32_data(s2, l2, "batch_norm output gradient")?;
        let st = f32_data(s3, l3, "batch_norm statistics")?;
        let (b, c, hw) = split_at_axis(l1.dims(), 1);
        let sums: Vec<(f32, f32)> = (0..c)
            .into_par_iter()
            .map(|ci| {
                let mean = st[ci];
                let rstd = 1.0 / (st[c + ci] + self.eps).sqrt();
                let (mut sgx, mut sg) = (0f32, 0f32);
                for bi in 0..b {
                    let r = (bi * c + ci) * hw..(bi * c + ci + 1) * hw;
                    sgx += centered_dot(&g[r.clone()], &x[r.clone()], mean);
                    sg += sum_f32(&g[r]);
                }
                (sgx * rstd, sg)
            })
            .collect();
        let mut out = vec![0f32; 2 * c];
        for (ci, (a, s)) in sums.into_iter().enumerate() {
            out[ci] = a;
            out[c + ci] = s;
        }
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}

/// (x, grad_y, params (6, C) = [mean; var; weight; bias; Σ g·x̂; Σ g]) → grad_x.
struct BatchNormBwdInput {
    eps: f32,
}

impl CustomOp3 for BatchNormBwdInput {
    fn name(&self) -> &'static str {
        "batch-norm-bwd-input"
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
        let x = f32_data(s1, l1, "batch_norm input")?;
        let g = f32_data(s2, l2, "batch_norm output gradient")?;
        let p = f32_data(s3, l3, "batch_norm backward parameters")?;
        let (b, c, hw) = split_at_axis(l1.dims(), 1);
        let n = (b * hw) as f32;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(hw.max(1))
            .enumerate()
            .for_each(|(plane, o)| {
                let ci = plane % c;
                let mean = p[ci];
                let rstd = 1.0 / (p[c + ci] + self.eps).sqrt();
                let w = p[2 * c + ci];
                let (mgx, mg) = (p[4 * c + ci] / n, p[5 * c + ci] / n);
                let r = plane * hw..(plane + 1) * hw;
                // dx = w·rstd·(g − mean(g) − x̂·mean(g·x̂)).
                for ((ov, xv), gv) in o.iter_mut().zip(x[r.clone()].iter()).zip(g[r].iter()) {
                    let xh = (xv - mean) * rstd;
                    *ov = w * rstd * (gv - mg - xh * mgx);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Batch statistics [mean; biased var] (2, C) of (B, C, H, W), composed and detached.
fn channel_stats_composed(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let xs = x.detach().contiguous()?.reshape((b, c, h * w))?;
    let mean = xs.mean_keepdim(2)?.mean_keepdim(0)?; // (1, C, 1)
    let var = xs
        .broadcast_sub(&mean)?
        .sqr()?
        .mean_keepdim(2)?
        .mean_keepdim(0)?;
    Tensor::cat(&[mean.reshape((1, c))?, var.reshape((1, c))?], 0)
}

/// Composed train-mode batch normalisation, differentiable through the batch
/// statistics (the reference for the fused op and the path off the CPU).
pub fn batch_norm_train_composed(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let (bs, c, h, wd) = x.dims4()?;
    let xs = x.contiguous()?.reshape((bs, c, h * wd))?;
    let mean = xs.mean_keepdim(2)?.mean_keepdim(0)?;
    let xc = xs.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(2)?.mean_keepdim(0)?;
    let y = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    let y = y
        .broadcast_mul(&w.reshape((1, c, 1))?)?
        .broadcast_add(&b.reshape((1, c, 1))?)?;
    y.reshape((bs, c, h, wd))
}

/// Batch normalisation over (B, C, H, W) with `weight`, `bias`, `running_mean`,
/// `running_var` and `num_batches_tracked` (an f32 scalar count) in the VarBuilder,
/// so the running statistics are saved with the model.
///
/// Train mode (`ctx.bn_train`) normalises with the batch statistics (biased
/// variance) and updates the running ones in place: `r ← (1−m)·r + m·batch` with
/// momentum m = 0.1 and the unbiased batch variance, as PyTorch does.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    num_batches_tracked: Var,
    eps: f64,
    momentum: f64,
    name: String,
}

impl BatchNorm2d {
    /// eps 1e-5, momentum 0.1 (PyTorch defaults).
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        // With a VarMap backend these tensors are the VarMap's own variables, so
        // `Var::from_tensor` shares their storage and `set` updates the stored state.
        let running_mean =
            Var::from_tensor(&vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?)?;
        let running_var =
            Var::from_tensor(&vb.get_with_hints(channels, "running_var", Init::Const(1.0))?)?;
        let num_batches_tracked =
            Var::from_tensor(&vb.get_with_hints((), "num_batches_tracked", Init::Const(0.0))?)?;
        Ok(Self {
            weight,
            bias,
            running_mean,
            running_var,
            num_batches_tracked,
            eps: 1e-5,
            momentum: 0.1,
            name: vb.prefix(),
        })
    }

    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }

    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }

    pub fn num_batches_tracked(&self) -> &Tensor {
        self.num_batches_tracked.as_tensor()
    }

    pub fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if c != self.weight.elem_count() {
            bail!(
                "BatchNorm2d {}: expected {} channels, got input {:?}",
                self.name,
                self.weight.elem_count(),
                x.dims()
            );
        }
        if !ctx.bn_train {
            return self.forward_eval(x);
        }
        let n = b * h * w;
        if n < 2 {
            bail!(
                "BatchNorm2d {}: train mode needs more than one value per channel, got input {:?}",
                self.name,
                x.dims()
            );
        }
        let (y, stats) = if use_cpu_kernels(x) {
            let x = x.contiguous()?;
            let stats = x.apply_op1_no_bwd(&ChannelStats)?;
            let wb = Tensor::stack(&[&self.weight, &self.bias], 0)?;
            (
                x.apply_op3(
                    &stats,
                    &wb,
                    BatchNormTrainOp {
                        eps: self.eps as f32,
                    },
                )?,
                stats,
            )
        } else {
            (
                batch_norm_train_composed(x, &self.weight, &self.bias, self.eps)?,
                channel_stats_composed(x)?,
            )
        };
        self.update_running_stats(&stats, n)?;
        Ok(y)
    }

    fn forward_eval(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.weight.elem_count();
        // Running statistics are state, not parameters: detached so that no
        // gradient is computed for them.
        let rstd = (self.running_var.as_detached_tensor() + self.eps)?
            .sqrt()?
            .recip()?;
        let scale = (&self.weight * rstd)?;
        let shift = (&self.bias - (self.running_mean.as_detached_tensor() * &scale)?)?;
        x.broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
            .broadcast_add(&shift.reshape((1, c, 1, 1))?)
    }

    fn update_running_stats(&self, stats: &Tensor, n: usize) -> Result<()> {
        let m = self.momentum;
        let mean = stats.get(0)?.to_dtype(self.running_mean.dtype())?;
        let unbiased =
            (stats.get(1)? * (n as f64 / (n as f64 - 1.0)))?.to_dtype(self.running_var.dtype())?;
        let new_mean = ((self.running_mean.as_detached_tensor() * (1.0 - m))? + (mean * m)?)?;
        let new_var = ((self.running_var.as_detached_tensor() * (1.0 - m))? + (unbiased * m)?)?;
        let new_count = (self.num_batches_tracked.as_detached_tensor() + 1.0)?;
        self.running_mean.set(&new_mean)?;
        self.running_var.set(&new_var)?;
        self.num_batches_tracked.set(&new_count)
    }
}

// ---------------------------------------------------------------------------
// Depthwise convolution
// ---------------------------------------------------------------------------

/// Geometry of a stride-1 depthwise convolution.
#[derive(Debug, Clone, Copy)]
struct DwGeom {
    k: usize,
    padding: usize,
    dilation: usize,
}

impl DwGeom {
    fn out_size(&self, n: usize) -> Result<usize> {
        let span = self.dilation * (self.k - 1);
        match (n + 2 * self.padding).checked_sub(span) {
            Some(o) if o > 0 => Ok(o),
            _ => bail!(
                "depthwise conv: input size {n} too small for kernel {} dilation {} padding {}",
                self.k,
                self.dilation,
                self.padding
            ),
        }
    }

    /// For tap `t` with input offset `off = t·d − p`: output index range whose
    /// input index `o + off` lies in [0, n_in).
    #[inline]
    fn valid(&self, t: usize, n_in: usize, n_out: usize) -> (isize, usize, usize) {
        let off = (t * self.dilation) as isize - self.padding as isize;
        let lo = (-off).max(0) as usize;
        let hi = ((n_in as isize - off).max(0) as usize).min(n_out);
        (off, lo, hi.max(lo))
    }

    /// Calls `f(tap, di, dj, i0, i1, j0, j1)` for every tap (row-major index into
    /// the k×k kernel) whose valid output window [i0, i1)×[j0, j1) is not empty;
    /// output (i, j) reads input (i + di, j + dj).
    #[inline]
    fn for_each_tap(
        &self,
        h: usize,
        w: usize,
        ho: usize,
        wo: usize,
        mut f: impl FnMut(usize, isize, isize, usize, usize, usize, usize),
    ) {
        for ki in 0..self.k {
            let (di, i0, i1) = self.valid(ki, h, ho);
            if i0 >= i1 {
                continue;
            }
            for kj in 0..self.k {
                let (dj, j0, j1) = self.valid(kj, w, wo);
                if j0 < j1 {
                    f(ki * self.k + kj, di, dj, i0, i1, j0, j1);
                }
            }
        }
    }
}

/// Depthwise conv forward: (x (B,C,H,W), w (C,1,k,k)) → y (B,C,Ho,Wo).
struct DepthwiseConvOp {
    geom: DwGeom,
}

impl CustomOp2 for DepthwiseConvOp {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, "depthwise conv input")?;
        let wt = f32_data(s2, l2, "depthwise conv weight")?;
        let (b, c, h, w) = dims4(l1)?;
        let g = self.geom;
        let (ho, wo) = (g.out_size(h)?, g.out_size(w)?);
        let kk = g.k * g.k;
        let mut out = vec![0f32; b * c * ho * wo];
        out.par_chunks_mut(ho * wo)
            .enumerate()
            .for_each(|(plane, y)| {
                let ci = plane % c;
                let xp = &x[plane * h * w..(plane + 1) * h * w];
                let wk = &wt[ci * kk..(ci + 1) * kk];
                g.for_each_tap(h, w, ho, wo, |t, di, dj, i0, i1, j0, j1| {
                    let wv = wk[t];
                    for i in i0..i1 {
                        let src = ((i as isize + di) as usize) * w;
                        let xs = &xp[(src as isize + j0 as isize + dj) as usize
                            ..(src as isize + j1 as isize + dj) as usize];
                        for (yv, xv) in y[i * wo + j0..i * wo + j1].iter_mut().zip(xs) {
                            *yv += wv * xv;
                        }
                    }
                });
            });
        Ok((CpuStorage::F32(out), Shape::from((b, c, ho, wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (_, _, h, wd) = x.dims4()?;
        let grad_x = if x.track_op() {
            Some(grad.apply_op2_no_bwd(
                &w.detach(),
                &DepthwiseBwdInput {
                    geom: self.geom,
                    h,
                    w: wd,
                },
            )?)
        } else {
            None
        };
        let grad_w = if w.track_op() {
            Some(
                x.detach()
                    .apply_op2_no_bwd(&grad, &DepthwiseBwdWeight { geom: self.geom })?,
            )
        } else {
            None
        };
        Ok((grad_x, grad_w))
    }
}

fn dims4(l: &Layout) -> Result<(usize, usize, usize, usize)> {
    match *l.dims() {
        [b, c, h, w] => Ok((b, c, h, w)),
        ref d => bail!("depthwise conv: expected a 4-d tensor, got {d:?}"),
    }
}

/// Depthwise conv gradient of the input: (grad_y, w) → grad_x (B,C,H,W).
struct DepthwiseBwdInput {
    geom: DwGeom,
    h: usize,
    w: usize,
}

impl CustomOp2 for DepthwiseBwdInput {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-bwd-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gy = f32_data(s1, l1, "depthwise conv output gradient")?;
        let wt = f32_data(s2, l2, "depthwise conv weight")?;
        let (b, c, ho, wo) = dims4(l1)?;
        let (h, w, g) = (self.h, self.w, self.geom);
        let kk = g.k * g.k;
        let mut out = vec![0f32; b * c * h * w];
        out.par_chunks_mut(h * w)
            .enumerate()
            .for_each(|(plane, dx)| {
                let ci = plane % c;
                let gp = &gy[plane * ho * wo..(plane + 1) * ho * wo];
                let wk = &wt[ci * kk..(ci + 1) * kk];
                g.for_each_tap(h, w, ho, wo, |t, di, dj, i0, i1, j0, j1| {
                    let wv = wk[t];
                    for i in i0..i1 {
                        let dst = ((i as isize + di) as usize) * w;
                        let d = &mut dx[(dst as isize + j0 as isize + dj) as usize
                            ..(dst as isize + j1 as isize + dj) as usize];
                        for (dv, gv) in d.iter_mut().zip(&gp[i * wo + j0..i * wo + j1]) {
                            *dv += wv * gv;
                        }
                    }
                });
            });
        Ok((CpuStorage::F32(out), Shape::from((b, c, h, w))))
    }
}

/// Depthwise conv gradient of the weight: (x, grad_y) → grad_w (C,1,k,k).
struct DepthwiseBwdWeight {
    geom: DwGeom,
}

impl CustomOp2 for DepthwiseBwdWeight {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-bwd-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, "depthwise conv input")?;
        let gy = f32_data(s2, l2, "depthwise conv output gradient")?;
        let (b, c, h, w) = dims4(l1)?;
        let (_, _, ho, wo) = dims4(l2)?;
        let g = self.geom;
        let kk = g.k * g.k;
        let mut out = vec![0f32; c * kk];
        // One task per channel: it owns its k·k outputs, so no reduction across tasks.
        out.par_chunks_mut(kk).enumerate().for_each(|(ci, dw)| {
            for bi in 0..b {
                let plane = bi * c + ci;
                let xp = &x[plane * h * w..(plane + 1) * h * w];
                let gp = &gy[plane * ho * wo..(plane + 1) * ho * wo];
                g.for_each_tap(h, w, ho, wo, |t, di, dj, i0, i1, j0, j1| {
                    let mut acc = 0f32;
                    for i in i0..i1 {
                        let src = ((i as isize + di) as usize) * w;
                        let xs = &xp[(src as isize + j0 as isize + dj) as usize
                            ..(src as isize + j1 as isize + dj) as usize];
                        acc += dot_f32(xs, &gp[i * wo + j0..i * wo + j1]);
                    }
                    dw[t] += acc;
                });
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((c, 1, g.k, g.k))))
    }
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
    let (wc, one, k, k2) = weight.dims4()?;
    if wc != c || one != 1 || k != k2 || k == 0 || dilation == 0 {
        bail!(
            "depthwise_conv2d: weight {:?} does not fit input {:?} (expected ({c}, 1, k, k))",
            weight.dims(),
            x.dims()
        );
    }
    let geom = DwGeom {
        k,
        padding,
        dilation,
    };
    if use_cpu_kernels(x) && weight.dtype() == DType::F32 {
        return x
            .contiguous()?
            .apply_op2(&weight.contiguous()?, DepthwiseConvOp { geom });
    }
    x.conv2d(weight, padding, 1, dilation, c)
}

/// Channels-last depthwise conv forward: (x (B,H,W,C), w (k·k, C)) → y (B,Ho,Wo,C).
struct DepthwiseNhwcOp {
    geom: DwGeom,
}

/// Shape (B, H, W, C) and output size of a channels-last depthwise conv.
fn dw_nhwc_dims(l: &Layout, g: &DwGeom) -> Result<(usize, usize, usize, usize, usize, usize)> {
    let (b, h, w, c) = dims4(l)?;
    Ok((b, h, w, c, g.out_size(h)?, g.out_size(w)?))
}

impl CustomOp2 for DepthwiseNhwcOp {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-nhwc"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, "depthwise conv (channels-last) input")?;
        let wt = f32_data(s2, l2, "depthwise conv (channels-last) weight")?;
        let g = self.geom;
        let (b, h, w, c, ho, wo) = dw_nhwc_dims(l1, &g)?;
        let mut out = vec![0f32; b * ho * wo * c];
        // One task per output row (sample, oi); the innermost loop runs over channels.
        out.par_chunks_mut((wo * c).max(1))
            .enumerate()
            .for_each(|(r, y)| {
                let (bi, oi) = (r / ho, r % ho);
                for ki in 0..g.k {
                    let ii = (oi + ki * g.dilation) as isize - g.padding as isize;
                    if ii < 0 || ii as usize >= h {
                        continue;
                    }
                    let xrow =
                        &x[(bi * h + ii as usize) * w * c..(bi * h + ii as usize + 1) * w * c];
                    for kj in 0..g.k {
                        let (dj, j0, j1) = g.valid(kj, w, wo);
                        let wv = &wt[(ki * g.k + kj) * c..(ki * g.k + kj + 1) * c];
                        for oj in j0..j1 {
                            let jj = (oj as isize + dj) as usize;
                            let xs = &xrow[jj * c..(jj + 1) * c];
                            for ((yv, xv), wc) in y[oj * c..(oj + 1) * c].iter_mut().zip(xs).zip(wv)
                            {
                                *yv += wc * xv;
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, ho, wo, c))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (_, h, wd, _) = x.dims4()?;
        let grad_x = if x.track_op() {
            Some(grad.apply_op2_no_bwd(
                &w.detach(),
                &DepthwiseNhwcBwdInput {
                    geom: self.geom,
                    h,
                    w: wd,
                },
            )?)
        } else {
            None
        };
        let grad_w = if w.track_op() {
            Some(x.apply_op2_no_bwd(&grad, &DepthwiseNhwcBwdWeight { geom: self.geom })?)
        } else {
            None
        };
        Ok((grad_x, grad_w))
    }
}

/// (grad_y (B,Ho,Wo,C), w (k·k, C)) → grad_x (B,H,W,C), as a gather per input row.
struct DepthwiseNhwcBwdInput {
    geom: DwGeom,
    h: usize,
    w: usize,
}

impl CustomOp2 for DepthwiseNhwcBwdInput {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-nhwc-bwd-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gy = f32_data(s1, l1, "depthwise conv (channels-last) output gradient")?;
        let wt = f32_data(s2, l2, "depthwise conv (channels-last) weight")?;
        let (b, ho, wo, c) = dims4(l1)?;
        let (h, w, g) = (self.h, self.w, self.geom);
        let mut out = vec![0f32; b * h * w * c];
        out.par_chunks_mut((w * c).max(1))
            .enumerate()
            .for_each(|(r, dx)| {
                let (bi, ii) = (r / h, r % h);
                for ki in 0..g.k {
                    // Output row oi reads input row ii through tap ki.
                    let oi = (ii + g.padding) as isize - (ki * g.dilation) as isize;
                    if oi < 0 || oi as usize >= ho {
                        continue;
                    }
                    let grow =
                        &gy[(bi * ho + oi as usize) * wo * c..(bi * ho + oi as usize + 1) * wo * c];
                    for kj in 0..g.k {
                        let (dj, j0, j1) = g.valid(kj, w, wo);
                        let wv = &wt[(ki * g.k + kj) * c..(ki * g.k + kj + 1) * c];
                        for oj in j0..j1 {
                            let jj = (oj as isize + dj) as usize;
                            let gs = &grow[oj * c..(oj + 1) * c];
                            for ((dv, gv), wc) in
                                dx[jj * c..(jj + 1) * c].iter_mut().zip(gs).zip(wv)
                            {
                                *dv += wc * gv;
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, h, w, c))))
    }
}

/// (x (B,H,W,C), grad_y (B,Ho,Wo,C)) → grad_w (k·k, C), per-task partial sums.
struct DepthwiseNhwcBwdWeight {
    geom: DwGeom,
}

impl CustomOp2 for DepthwiseNhwcBwdWeight {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-nhwc-bwd-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, "depthwise conv (channels-last) input")?;
        let gy = f32_data(s2, l2, "depthwise conv (channels-last) output gradient")?;
        let g = self.geom;
        let (b, h, w, c, ho, wo) = dw_nhwc_dims(l1, &g)?;
        let kk = g.k * g.k;
        let rows_per = rows_per_task(wo * c * kk).max(1);
        let sums = (0..b * ho)
            .into_par_iter()
            .with_min_len(rows_per)
            .fold(
                || vec![0f32; kk * c],
                |mut acc, r| {
                    let (bi, oi) = (r / ho, r % ho);
                    let grow = &gy[r * wo * c..(r + 1) * wo * c];
                    for ki in 0..g.k {
                        let ii = (oi + ki * g.dilation) as isize - g.padding as isize;
                        if ii < 0 || ii as usize >= h {
                            continue;
                        }
                        let xrow =
                            &x[(bi * h + ii as usize) * w * c..(bi * h + ii as usize + 1) * w * c];
                        for kj in 0..g.k {
                            let (dj, j0, j1) = g.valid(kj, w, wo);
                            let a = &mut acc[(ki * g.k + kj) * c..(ki * g.k + kj + 1) * c];
                            for oj in j0..j1 {
                                let jj = (oj as isize + dj) as usize;
                                let gs = &grow[oj * c..(oj + 1) * c];
                                for ((av, gv), xv) in
                                    a.iter_mut().zip(gs).zip(&xrow[jj * c..(jj + 1) * c])
                                {
                                    *av += gv * xv;
                                }
                            }
                        }
                    }
                    acc
                },
            )
            .reduce(|| vec![0f32; kk * c], add_vecs);
        Ok((CpuStorage::F32(sums), Shape::from((kk, c))))
    }
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
    let (wc, one, k, k2) = weight.dims4()?;
    if wc != c || one != 1 || k != k2 || k == 0 || dilation == 0 {
        bail!(
            "depthwise_conv2d_nhwc: weight {:?} does not fit channels-last input {:?}",
            weight.dims(),
            x.dims()
        );
    }
    if !(use_cpu_kernels(x) && weight.dtype() == DType::F32) {
        let y = x
            .permute((0, 3, 1, 2))?
            .conv2d(weight, padding, 1, dilation, c)?;
        return y.permute((0, 2, 3, 1))?.contiguous();
    }
    // (C, 1, k, k) → (k·k, C): a tiny transpose that keeps the kernels' inner loop over channels.
    let wt = weight.reshape((c, k * k))?.t()?.contiguous()?;
    x.contiguous()?.apply_op2(
        &wt,
        DepthwiseNhwcOp {
            geom: DwGeom {
                k,
                padding,
                dilation,
            },
        },
    )
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
        let bias = if bias {
            Some(vb.get_with_hints(channels, "bias", Init::Const(0.0))?)
        } else {
            None
        };
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
        match &self.bias {
            Some(b) => add_bias(&y, b, 1),
            None => Ok(y),
        }
    }

    /// Channels-last variant: (B, H, W, C) → (B, Ho, Wo, C).
    pub fn forward_nhwc(&self, x: &Tensor) -> Result<Tensor> {
        let y = depthwise_conv2d_nhwc(x, &self.weight, self.padding, self.dilation)?;
        match &self.bias {
            Some(b) => add_bias(&y, b, 3),
            None => Ok(y),
        }
    }
}

// ---------------------------------------------------------------------------
// Misc
// ---------------------------------------------------------------------------

/// erfc(z) for z ≥ 0, Chebyshev fit with fractional error < 1.2e-7 everywhere
/// (Numerical Recipes `erfcc`): relative accuracy also in the far tail.
#[inline]
fn erfc_pos(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    t * exp_f32(poly)
}

/// Standard normal CDF Φ(x) = erfc(−x/√2)/2 (branch-free so that loops vectorise).
#[inline]
fn normal_cdf(x: f32) -> f32 {
    let half_tail = 0.5 * erfc_pos(x.abs() * std::f32::consts::FRAC_1_SQRT_2);
    if x <= 0.0 {
        half_tail
    } else {
        1.0 - half_tail
    }
}

/// e^x in f32 (Cephes `expf` polynomial, ≤ 2 ulp), written with plain arithmetic
/// so that the fused GELU / softmax loops vectorise; `f32::exp` is a scalar libm
/// call. Returns 0 below −87.3 (where the result would be subnormal).
#[inline]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Round-to-nearest by the 1.5·2^23 trick (no `floor`, which is a libm call
    // without SSE4.1).
    const MAGIC: f32 = 12_582_912.0;
    let xc = x.clamp(-87.3, 88.7);
    let shifted = xc * LOG2E + MAGIC;
    let n = shifted - MAGIC;
    // x − n·ln2 in two parts for precision.
    let r = xc - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let r2 = r * r;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 0.5)
        * r2
        + r
        + 1.0;
    // n as an integer, read from the mantissa of `shifted` (1.5·2^23 + n): a
    // saturating `as i32` cast would block vectorisation.
    let ni = (shifted.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    if x < -87.3 {
        0.0
    } else {
        p * scale
    }
}

/// 1/√(2π).
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// Exact-erf GELU, y = x·Φ(x), fused forward.
struct GeluOp;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, "gelu input")?;
        let out = par_map(x, |xs, o| {
            for (ov, &xv) in o.iter_mut().zip(xs) {
                *ov = xv * normal_cdf(xv);
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GeluBwd)?))
    }
}

/// (x, grad_y) → grad_y · (Φ(x) + x·φ(x)).
struct GeluBwd;

impl CustomOp2 for GeluBwd {
    fn name(&self) -> &'static str {
        "gelu-erf-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, "gelu input")?;
        let g = f32_data(s2, l2, "gelu output gradient")?;
        let out = par_map2(x, g, |xs, gs, o| {
            for ((ov, &xv), &gv) in o.iter_mut().zip(xs).zip(gs) {
                *ov = gv * (normal_cdf(xv) + xv * INV_SQRT_2PI * exp_f32(-0.5 * xv * xv));
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// GELU with the exact erf form (as `torch.nn.GELU()`). On the CPU in f32 a fused
/// op (Candle's `gelu_erf` backward is ~10 tensor ops); elsewhere `gelu_erf`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if use_cpu_kernels(x) {
        return x.contiguous()?.apply_op1(GeluOp);
    }
    x.gelu_erf()
}

/// Softmax over the last dim, fused (numerically stable: max subtracted).
struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, "softmax input")?;
        let n = match l.dims().last() {
            Some(&n) if n > 0 => n,
            _ => bail!("softmax: empty last dimension in {:?}", l.dims()),
        };
        let mut out = vec![0f32; x.len()];
        let task = n * rows_per_task(n);
        out.par_chunks_mut(task)
            .zip(x.par_chunks(task))
            .for_each(|(o, xs)| {
                for (orow, xrow) in o.chunks_mut(n).zip(xs.chunks(n)) {
                    let max = xrow.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                    for (ov, &xv) in orow.iter_mut().zip(xrow) {
                        *ov = exp_f32(xv - max);
                    }
                    let inv = 1.0 / sum_f32(orow);
                    orow.iter_mut().for_each(|v| *v *= inv);
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBwd)?,
        ))
    }
}

/// (y, grad_y) → y·(g − Σ g·y) per row.
struct SoftmaxBwd;

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "softmax-last-dim-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = f32_data(s1, l1, "softmax output")?;
        let g = f32_data(s2, l2, "softmax output gradient")?;
        let n = match l1.dims().last() {
            Some(&n) if n > 0 => n,
            _ => bail!("softmax backward: empty last dimension in {:?}", l1.dims()),
        };
        let mut out = vec![0f32; y.len()];
        let task = n * rows_per_task(n);
        out.par_chunks_mut(task)
            .zip(y.par_chunks(task).zip(g.par_chunks(task)))
            .for_each(|(o, (ys, gs))| {
                for ((orow, yrow), grow) in o.chunks_mut(n).zip(ys.chunks(n)).zip(gs.chunks(n)) {
                    let dot = dot_f32(yrow, grow);
                    for ((ov, &yv), &gv) in orow.iter_mut().zip(yrow).zip(grow) {
                        *ov = yv * (gv - dot);
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Softmax over the last dimension with a backward pass: fused on the CPU in f32,
/// the composed `candle_nn::ops::softmax` elsewhere (never `softmax_last_dim`,
/// which has no backward).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if use_cpu_kernels(x) {
        return x.contiguous()?.apply_op1(SoftmaxOp);
    }
    candle_nn::ops::softmax(x, D::Minus1)
}

/// max(x, 0) with a one-pass backward (Candle's goes through a comparison,
/// a dtype cast and a product).
struct ReluOp;

impl CustomOp1 for ReluOp {
    fn name(&self) -> &'static str {
        "relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, "relu input")?;
        let out = par_map(x, |xs, o| {
            for (ov, &xv) in o.iter_mut().zip(xs) {
                *ov = xv.max(0.0);
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&grad.contiguous()?, &ReluBwd)?))
    }
}

/// (y, grad_y) → grad_y where y > 0, else 0.
struct ReluBwd;

impl CustomOp2 for ReluBwd {
    fn name(&self) -> &'static str {
        "relu-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = f32_data(s1, l1, "relu output")?;
        let g = f32_data(s2, l2, "relu output gradient")?;
        let out = par_map2(y, g, |ys, gs, o| {
            for ((ov, &yv), &gv) in o.iter_mut().zip(ys).zip(gs) {
                *ov = if yv > 0.0 { gv } else { 0.0 };
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// ReLU; fused on the CPU in f32, Candle's `relu` elsewhere.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if use_cpu_kernels(x) {
        return x.contiguous()?.apply_op1(ReluOp);
    }
    x.relu()
}

/// Largest relative difference between two tensors of equal shape, scaled by the
/// largest magnitude of `b` (test helper for gradient checks).
pub fn max_rel_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let a = a.to_dtype(DType::F32)?.flatten_all()?;
    let b = b.to_dtype(DType::F32)?.flatten_all()?;
    let scale = b.abs()?.max(0)?.to_scalar::<f32>()?.max(1e-12);
    Ok((a - &b)?.abs()?.max(0)?.to_scalar::<f32>()? / scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn randn(shape: &[usize]) -> Tensor {
        Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
    }

    fn close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
        let d = max_rel_diff(a, b).unwrap();
        assert!(d < tol, "{what}: relative difference {d}");
    }

    #[test]
    fn reduction_helpers_match_naive_sums() {
        let x: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let y: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive_sum: f32 = x.iter().sum();
        let naive_dot: f32 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
        let naive_sq: f32 = x.iter().map(|v| (v - 0.3) * (v - 0.3)).sum();
        let naive_cd: f32 = y.iter().zip(&x).map(|(g, v)| g * (v - 0.3)).sum();
        assert!((sum_f32(&x) - naive_sum).abs() < 1e-5);
        assert!((dot_f32(&x, &y) - naive_dot).abs() < 1e-5);
        assert!((sq_dev_sum(&x, 0.3) - naive_sq).abs() < 1e-5);
        assert!((centered_dot(&y, &x, 0.3) - naive_cd).abs() < 1e-5);
        assert_eq!(sum_f32(&[]), 0.0);
    }

    #[test]
    fn normal_cdf_known_values() {
        // Φ(0) = 0.5, Φ(1) = 0.841344746, Φ(−3) = 0.001349898, Φ(−6) = 9.8659e-10.
        for (x, want) in [
            (0.0f32, 0.5f64),
            (1.0, 0.841_344_746),
            (-3.0, 0.001_349_898),
            (-6.0, 9.865_876e-10),
        ] {
            let got = normal_cdf(x) as f64;
            assert!(
                ((got - want) / want).abs() < 1e-6,
                "Φ({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn depthwise_geometry_windows() {
        let g = DwGeom {
            k: 3,
            padding: 2,
            dilation: 2,
        };
        assert_eq!(g.out_size(6).unwrap(), 6);
        // Tap 0 reads input o − 2: valid for outputs 2..6.
        assert_eq!(g.valid(0, 6, 6), (-2, 2, 6));
        assert_eq!(g.valid(2, 6, 6), (2, 0, 4));
        assert!(DwGeom {
            k: 5,
            padding: 0,
            dilation: 1
        }
        .out_size(3)
        .is_err());
    }

    /// The composed fallbacks (taken for dtypes other than f32, and off the CPU)
    /// give the same results as the fused f32 kernels.
    #[test]
    fn f64_fallbacks_match_f32_kernels() {
        let x = randn(&[2, 4, 5, 6]);
        let x64 = x.to_dtype(DType::F64).unwrap();
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let w = randn(&[4, 1, 3, 3]);
        close(
            &f(&depthwise_conv2d(&x64, &w.to_dtype(DType::F64).unwrap(), 2, 2).unwrap()),
            &depthwise_conv2d(&x, &w, 2, 2).unwrap(),
            1e-5,
            "depthwise",
        );
        let xn = x.permute((0, 2, 3, 1)).unwrap();
        close(
            &f(&depthwise_conv2d_nhwc(
                &xn.to_dtype(DType::F64).unwrap(),
                &w.to_dtype(DType::F64).unwrap(),
                1,
                1,
            )
            .unwrap()),
            &depthwise_conv2d_nhwc(&xn, &w, 1, 1).unwrap(),
            1e-5,
            "depthwise nhwc",
        );
        let wd = randn(&[3, 4, 3, 3]);
        let cfg = ConvCfg {
            stride: 2,
            padding: 1,
            dilation: 1,
        };
        close(
            &f(&conv2d(&x64, &wd.to_dtype(DType::F64).unwrap(), cfg).unwrap()),
            &conv2d(&x, &wd, cfg).unwrap(),
            1e-5,
            "conv2d",
        );
        close(
            &f(&conv2d_nhwc(
                &xn.to_dtype(DType::F64).unwrap(),
                &wd.to_dtype(DType::F64).unwrap(),
                cfg,
            )
            .unwrap()),
            &conv2d_nhwc(&xn, &wd, cfg).unwrap(),
            1e-5,
            "conv2d nhwc",
        );
        let (lw, lb) = (randn(&[6]), randn(&[6]));
        let ln64 = layer_norm(
            &x64,
            &lw.to_dtype(DType::F64).unwrap(),
            &lb.to_dtype(DType::F64).unwrap(),
            1e-5,
        )
        .unwrap();
        close(
            &f(&ln64),
            &layer_norm(&x, &lw, &lb, 1e-5).unwrap(),
            1e-5,
            "layer_norm",
        );
        let b = randn(&[4]);
        close(
            &f(&add_bias(&x64, &b.to_dtype(DType::F64).unwrap(), 1).unwrap()),
            &add_bias(&x, &b, 1).unwrap(),
            1e-6,
            "add_bias",
        );
        close(&f(&gelu(&x64).unwrap()), &gelu(&x).unwrap(), 1e-5, "gelu");
        close(&f(&relu(&x64).unwrap()), &relu(&x).unwrap(), 1e-6, "relu");
        close(
            &f(&softmax_last_dim(&x64).unwrap()),
            &softmax_last_dim(&x).unwrap(),
            1e-5,
            "softmax",
        );
        let mask = Tensor::new(&[0f32, 2.0, 1.0, 0.5], &Device::Cpu).unwrap();
        let xs = x.reshape((4, 60)).unwrap();
        close(
            &f(&scale_groups(&xs.to_dtype(DType::F64).unwrap(), &mask).unwrap()),
            &scale_groups(&xs, &mask).unwrap(),
            1e-6,
            "scale_groups",
        );
    }

    #[test]
    fn batch_norm_f64_composed_path_matches_f32() {
        let x = randn(&[3, 2, 4, 4]);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut out = Vec::new();
        let mut stats = Vec::new();
        for dtype in [DType::F32, DType::F64] {
            let vm = VarMap::new();
            let bn =
                BatchNorm2d::new(2, VarBuilder::from_varmap(&vm, dtype, &Device::Cpu)).unwrap();
            let y = bn
                .forward(
                    &x.to_dtype(dtype).unwrap(),
                    &mut ForwardCtx::train(&mut rng),
                )
                .unwrap();
            out.push(y.to_dtype(DType::F32).unwrap());
            stats.push(bn.running_var().to_dtype(DType::F32).unwrap());
        }
        close(&out[1], &out[0], 1e-5, "batch_norm output");
        close(&stats[1], &stats[0], 1e-5, "batch_norm running_var");
    }

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
