//! Activations with fused CPU kernels: GELU (exact erf form) and ReLU as
//! element-wise ops with a one-pass fused backward, and softmax over the last
//! dimension. Candle's `gelu_erf` backward is ~10 tensor ops, its `relu`
//! backward a comparison, a cast and a product, and its fused
//! `softmax_last_dim` has no backward at all.

use std::marker::PhantomData;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, InplaceOp1, Layout, Result, Shape, Tensor, D};

use super::cpu::{
    dot_f32, f32_data, f32_data_mut, last_dim, may_overwrite, par_map, par_map2, par_rows,
    par_rows2, par_update, sum_f32, use_cpu_kernels,
};
use super::math::{exp_f32, normal_cdf};

/// An element-wise activation y = f(x) whose input gradient depends only on
/// one saved value per element (the input or the output) and the output
/// gradient. [`UnaryOp`] and [`UnaryBwd`] turn it into fused custom ops.
trait Unary: Send + Sync + 'static {
    /// Names of the forward and backward ops.
    const NAME: &'static str;
    const BWD_NAME: &'static str;
    /// Labels of the forward input, of the tensor the backward reads (`x` or
    /// `y`) and of the output gradient, for error messages.
    const INPUT: &'static str;
    const SAVED: &'static str;
    const GRAD: &'static str;
    /// The backward reads the output y (else the input x).
    const SAVES_OUTPUT: bool;

    fn forward(x: f32) -> f32;
    /// dL/dx from the saved value and dL/dy.
    fn backward(saved: f32, grad: f32) -> f32;
    /// The composed Candle op used off the CPU or for other dtypes.
    fn fallback(x: &Tensor) -> Result<Tensor>;
}

/// Fused forward of a [`Unary`] activation.
struct UnaryOp<U>(PhantomData<U>);

impl<U: Unary> CustomOp1 for UnaryOp<U> {
    fn name(&self) -> &'static str {
        U::NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, U::INPUT)?;
        let out = par_map(
            x,
            #[inline(always)]
            |xs, o| {
                for (ov, &xv) in o.iter_mut().zip(xs) {
                    *ov = U::forward(xv);
                }
            },
        );
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let saved = if U::SAVES_OUTPUT { res } else { x };
        Ok(Some(saved.apply_op2_no_bwd(
            &grad.contiguous()?,
            &UnaryBwd::<U>(PhantomData),
        )?))
    }
}

/// (saved, grad_y) → grad_x of a [`Unary`] activation.
struct UnaryBwd<U>(PhantomData<U>);

impl<U: Unary> CustomOp2 for UnaryBwd<U> {
    fn name(&self) -> &'static str {
        U::BWD_NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let saved = f32_data(s1, l1, U::SAVED)?;
        let g = f32_data(s2, l2, U::GRAD)?;
        let out = par_map2(
            saved,
            g,
            #[inline(always)]
            |ss, gs, o| {
                for ((ov, &sv), &gv) in o.iter_mut().zip(ss).zip(gs) {
                    *ov = U::backward(sv, gv);
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `U` applied in place to a tensor outside any graph.
struct UnaryInPlace<U>(PhantomData<U>);

impl<U: Unary> InplaceOp1 for UnaryInPlace<U> {
    fn name(&self) -> &'static str {
        U::NAME
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let x = f32_data_mut(s, l, U::INPUT)?;
        par_update(
            x,
            #[inline(always)]
            |xs| {
                for v in xs.iter_mut() {
                    *v = U::forward(*v);
                }
            },
        );
        Ok(())
    }
}

/// `U` applied to `x`: the fused op on the CPU in f32, `U::fallback` elsewhere.
fn unary<U: Unary>(x: &Tensor) -> Result<Tensor> {
    if use_cpu_kernels(x, &[]) {
        return x.contiguous()?.apply_op1(UnaryOp::<U>(PhantomData));
    }
    U::fallback(x)
}

/// 1/√(2π).
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// Exact-erf GELU, y = x·Φ(x); dy/dx = Φ(x) + x·φ(x), from the input.
struct Gelu;

impl Unary for Gelu {
    const NAME: &'static str = "gelu-erf";
    const BWD_NAME: &'static str = "gelu-erf-bwd";
    const INPUT: &'static str = "gelu input";
    const SAVED: &'static str = "gelu input";
    const GRAD: &'static str = "gelu output gradient";
    const SAVES_OUTPUT: bool = false;

    #[inline(always)]
    fn forward(x: f32) -> f32 {
        x * normal_cdf(x)
    }

    #[inline(always)]
    fn backward(x: f32, g: f32) -> f32 {
        g * (normal_cdf(x) + x * INV_SQRT_2PI * exp_f32(-0.5 * x * x))
    }

    fn fallback(x: &Tensor) -> Result<Tensor> {
        x.gelu_erf()
    }
}

/// GELU of one value (for kernels that end in a GELU of their own).
#[inline(always)]
pub(super) fn gelu_f32(x: f32) -> f32 {
    Gelu::forward(x)
}

/// max(x, 0); the gradient passes where the output is positive.
struct Relu;

impl Unary for Relu {
    const NAME: &'static str = "relu";
    const BWD_NAME: &'static str = "relu-bwd";
    const INPUT: &'static str = "relu input";
    const SAVED: &'static str = "relu output";
    const GRAD: &'static str = "relu output gradient";
    const SAVES_OUTPUT: bool = true;

    #[inline(always)]
    fn forward(x: f32) -> f32 {
        x.max(0.0)
    }

    #[inline(always)]
    fn backward(y: f32, g: f32) -> f32 {
        if y > 0.0 {
            g
        } else {
            0.0
        }
    }

    fn fallback(x: &Tensor) -> Result<Tensor> {
        x.relu()
    }
}

/// GELU with the exact erf form (as `torch.nn.GELU()`). On the CPU in f32 a fused
/// op (Candle's `gelu_erf` backward is ~10 tensor ops); elsewhere `gelu_erf`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    unary::<Gelu>(x)
}

/// [`gelu`] of a tensor the caller owns and shares with no other tensor (a
/// layer's fresh output): computed in its storage when it is outside any graph
/// (evaluation, the teacher), so no second map is allocated. Same values.
pub(super) fn gelu_owned(x: Tensor) -> Result<Tensor> {
    if may_overwrite(&x, &[]) {
        x.inplace_op1(&UnaryInPlace::<Gelu>(PhantomData))?;
        return Ok(x);
    }
    gelu(&x)
}

/// ReLU; fused on the CPU in f32, Candle's `relu` elsewhere.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    unary::<Relu>(x)
}

/// The ReLU input gradient from its output `y` and output gradient (f32, CPU):
/// for ops that end in a ReLU of their own.
pub(super) fn relu_backward(y: &Tensor, grad: &Tensor) -> Result<Tensor> {
    y.apply_op2_no_bwd(&grad.contiguous()?, &UnaryBwd::<Relu>(PhantomData))
}

/// Softmax over the last dim, fused (numerically stable: max subtracted).
struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, "softmax input")?;
        let n = last_dim(l, "softmax")?;
        let out = par_rows(
            x,
            n,
            #[inline(always)]
            |xrow, orow| {
                orow.copy_from_slice(xrow);
                softmax_row_in_place(orow);
            },
        );
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBwd)?,
        ))
    }
}

/// Softmax of one row, in place (the kernel of every fused softmax).
#[inline(always)]
pub(super) fn softmax_row_in_place(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for v in row.iter_mut() {
        *v = exp_f32(*v - max);
    }
    let inv = 1.0 / sum_f32(row);
    row.iter_mut().for_each(|v| *v *= inv);
}

/// (y, grad_y) → y·(g − Σ g·y) per row.
pub(super) struct SoftmaxBwd;

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
        let n = last_dim(l1, "softmax backward")?;
        let out = par_rows2(
            y,
            g,
            n,
            #[inline(always)]
            |yrow, grow, orow| {
                let dot = dot_f32(yrow, grow);
                for ((ov, &yv), &gv) in orow.iter_mut().zip(yrow).zip(grow) {
                    *ov = yv * (gv - dot);
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Softmax over the last dimension with a backward pass: fused on the CPU in f32,
/// the composed `candle_nn::ops::softmax` elsewhere (never `softmax_last_dim`,
/// which has no backward).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if use_cpu_kernels(x, &[]) {
        return x.contiguous()?.apply_op1(SoftmaxOp);
    }
    candle_nn::ops::softmax(x, D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{close, f32, f64, randn};
    use super::*;

    /// The composed fallbacks (other dtypes, other devices) match the fused kernels.
    #[test]
    fn f64_fallback_matches_f32_kernel() {
        let x = randn(&[2, 4, 5, 6]);
        let x64 = f64(&x);
        close(&f32(&gelu(&x64).unwrap()), &gelu(&x).unwrap(), 1e-5, "gelu");
        close(&f32(&relu(&x64).unwrap()), &relu(&x).unwrap(), 1e-6, "relu");
        close(
            &f32(&softmax_last_dim(&x64).unwrap()),
            &softmax_last_dim(&x).unwrap(),
            1e-5,
            "softmax",
        );
    }
}
