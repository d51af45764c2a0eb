//! Fused in-place parameter updates for `f32` tensors on the CPU: one AdamW
//! step and one EMA step, each a single pass over memory that writes into the
//! parameter's own storage (candle `InplaceOp2`).
//!
//! The composed Candle versions (`optimizer::AdamW` and `ema::ema_update` on
//! other devices and dtypes) run 12 and 3 tensor ops per parameter, each
//! allocating a tensor of the parameter's size, and then copy the result into
//! the variable. The kernels here evaluate the same expressions in the same
//! order and precision (every scalar is rounded to `f32` where Candle's
//! `affine` rounds it), so both paths give bit-identical parameters; the
//! tests check that and compare against `torch.optim.AdamW`.

use std::cell::RefCell;

use candle_core::{bail, CpuStorage, DType, InplaceOp2, Layout, Result, Tensor};
use rayon::prelude::*;

use crate::nn::layers::cpu::{f32_data, f32_data_mut};
use crate::simd::wide;

/// Elements per rayon task: large enough to amortise the task, small enough to
/// split the big convolution weights over both cores.
const CHUNK: usize = 1 << 15;

/// True when the fused kernels apply to these tensors: all `f32` on the CPU
/// and contiguous (the parameters and moments always are; a gradient may be a
/// strided view, which the caller makes contiguous first).
pub(crate) fn applies(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous())
}

/// The scalars of one AdamW step for one parameter, rounded as Candle's
/// composed expression rounds them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamWScalars {
    pub beta1: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// 1 / sqrt(1 − β₂ᵗ).
    pub inv_sqrt_bias2: f32,
    pub eps: f32,
    /// lr / (1 − β₁ᵗ).
    pub step_size: f32,
    /// 1 − lr·wd (decoupled weight decay).
    pub decay: f32,
}

impl AdamWScalars {
    /// From the f64 settings, exactly as `AdamW::step_composed` turns them into
    /// Candle `affine` scalars.
    pub(crate) fn new(
        beta1: f64,
        beta2: f64,
        eps: f64,
        bias1: f64,
        bias2: f64,
        lr: f64,
        weight_decay: f64,
    ) -> Self {
        Self {
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            inv_sqrt_bias2: (1.0 / bias2.sqrt()) as f32,
            eps: eps as f32,
            step_size: (lr / bias1) as f32,
            decay: (1.0 - lr * weight_decay) as f32,
        }
    }
}

/// AdamW on one parameter (the in-place operand), its gradient (the source)
/// and its first and second moments, which live in host memory owned by the
/// optimizer. `RefCell` because Candle hands the op to the kernel by shared
/// reference; the op is used once, on one thread, then dropped.
pub(crate) struct AdamWKernel<'a> {
    pub scalars: AdamWScalars,
    pub m: RefCell<&'a mut [f32]>,
    pub v: RefCell<&'a mut [f32]>,
}

impl InplaceOp2 for AdamWKernel<'_> {
    fn name(&self) -> &'static str {
        "fused-adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let p = f32_data_mut(s1, l1, "AdamW parameter")?;
        let g = f32_data(s2, l2, "AdamW gradient")?;
        let mut m = self.m.borrow_mut();
        let mut v = self.v.borrow_mut();
        if g.len() != p.len() || m.len() != p.len() || v.len() != p.len() {
            bail!(
                "fused AdamW: parameter has {} elements, gradient {}, moments {} and {}",
                p.len(),
                g.len(),
                m.len(),
                v.len()
            );
        }
        let k = self.scalars;
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| {
                wide(
                    #[inline(always)]
                    || {
                        for i in 0..p.len() {
                            let gi = g[i];
                            // m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²
                            let mi = m[i] * k.beta1 + gi * k.one_minus_beta1;
                            let vi = v[i] * k.beta2 + (gi * gi) * k.one_minus_beta2;
                            // p ← p(1 − lr·wd) − lr/(1−β₁ᵗ) · m / (sqrt(v)/sqrt(1−β₂ᵗ) + ε)
                            let denom = vi.sqrt() * k.inv_sqrt_bias2 + k.eps;
                            p[i] = p[i] * k.decay - (mi / denom) * k.step_size;
                            m[i] = mi;
                            v[i] = vi;
                        }
                    },
                )
            });
        Ok(())
    }
}

/// θ' ← α·θ' + (1−α)·θ: the teacher parameter is the in-place operand, the
/// student's the source.
pub(crate) struct EmaKernel {
    pub alpha: f32,
    pub one_minus_alpha: f32,
}

impl EmaKernel {
    pub(crate) fn new(alpha: f64) -> Self {
        Self {
            alpha: alpha as f32,
            one_minus_alpha: (1.0 - alpha) as f32,
        }
    }
}

impl InplaceOp2 for EmaKernel {
    fn name(&self) -> &'static str {
        "fused-ema"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let t = f32_data_mut(s1, l1, "EMA teacher parameter")?;
        let s = f32_data(s2, l2, "EMA student parameter")?;
        if t.len() != s.len() {
            bail!(
                "fused EMA: teacher parameter has {} elements, student {}",
                t.len(),
                s.len()
            );
        }
        let (a, b) = (self.alpha, self.one_minus_alpha);
        t.par_chunks_mut(CHUNK)
            .zip(s.par_chunks(CHUNK))
            .for_each(|(t, s)| {
                wide(
                    #[inline(always)]
                    || {
                        for (t, s) in t.iter_mut().zip(s) {
                            *t = *t * a + *s * b;
                        }
                    },
                )
            });
        Ok(())
    }
}
