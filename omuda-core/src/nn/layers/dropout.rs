//! Drop-path (stochastic depth) and Dropout2d: constant per-sample or
//! per-channel masks drawn from the caller's generator, applied by a fused
//! scaling op whose backward spends no product and reduction on the mask (it
//! gets no gradient), unlike `broadcast_mul`.

use candle_core::{bail, CpuStorage, CustomOp2, Device, Layout, Result, Shape, Tensor};
use rand::Rng;
use rayon::prelude::*;

use super::cpu::{f32_data, use_cpu_kernels};
use crate::nn::ForwardCtx;
use crate::simd::wide;

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
                wide(
                    #[inline(always)]
                    || {
                        if sv == 0.0 {
                            chunk.iter_mut().for_each(|v| *v = 0.0);
                        } else if sv != 1.0 {
                            chunk.iter_mut().for_each(|v| *v *= sv);
                        }
                    },
                )
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
    if use_cpu_kernels(x, &[]) {
        return x.contiguous()?.apply_op2(&s.contiguous()?, ScaleGroups);
    }
    let flat = x.reshape((n, x.elem_count() / n))?;
    flat.broadcast_mul(&s.reshape((n, 1))?.to_dtype(x.dtype())?)?
        .reshape(x.shape())
}

/// Bernoulli(keep) mask of `n` values, each 0 or 1/keep.
fn keep_mask(n: usize, keep: f64, ctx: &mut ForwardCtx, device: &Device) -> Result<Tensor> {
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

/// `rate` if it is a valid drop rate for `layer`, in [0, 1).
fn checked_rate(rate: f64, layer: &str) -> Result<f64> {
    if !(0.0..1.0).contains(&rate) {
        bail!("{layer}: rate must be in [0, 1), got {rate}");
    }
    Ok(rate)
}

/// The forward pass of both dropouts: `x` unchanged unless `ctx.stochastic` and
/// `rate` > 0; otherwise each of the `groups(x)` equal contiguous groups of `x`
/// is zeroed with probability `rate` (one draw each from `ctx.rng`) and the
/// others are scaled by 1/(1-rate).
fn drop_groups(
    x: &Tensor,
    rate: f64,
    ctx: &mut ForwardCtx,
    groups: impl FnOnce(&Tensor) -> Result<usize>,
) -> Result<Tensor> {
    if !ctx.stochastic || rate == 0.0 {
        return Ok(x.clone());
    }
    let n = groups(x)?;
    let mask = keep_mask(n, 1.0 - rate, ctx, x.device())?;
    scale_groups(x, &mask)
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
        Ok(Self {
            rate: checked_rate(rate, "DropPath")?,
        })
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// `x`: (B, ...). One draw per sample from `ctx.rng`.
    pub fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        drop_groups(x, self.rate, ctx, |x| x.dim(0))
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
        Ok(Self {
            rate: checked_rate(rate, "Dropout2d")?,
        })
    }

    pub fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        drop_groups(x, self.rate, ctx, |x| {
            let (b, c, _, _) = x.dims4()?;
            Ok(b * c)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{close, f32, f64, randn};
    use super::*;

    /// The composed fallback (other dtypes, other devices) matches the fused kernel.
    #[test]
    fn f64_fallback_matches_f32_kernel() {
        let x = randn(&[2, 4, 5, 6]);
        let mask = Tensor::new(&[0f32, 2.0, 1.0, 0.5], &Device::Cpu).unwrap();
        let xs = x.reshape((4, 60)).unwrap();
        close(
            &f32(&scale_groups(&f64(&xs), &mask).unwrap()),
            &scale_groups(&xs, &mask).unwrap(),
            1e-6,
            "scale_groups",
        );
    }
}
