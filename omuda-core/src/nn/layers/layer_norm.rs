//! Layer normalisation over the last dimension. Candle's fused
//! `candle_nn::LayerNorm` silently has no backward (it cuts the graph), and the
//! composed version is slow; on the CPU in f32 this is one fused op with fused
//! backward ops for the input and for the weight and bias.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;

use super::cpu::{
    f32_data, last_dim, par_rows, par_rows2, rows_per_task, sq_dev_sum, sum_f32, sum_partials,
    use_cpu_kernels,
};
use crate::simd::wide;

/// Mean and 1/std (biased variance) of one row.
#[inline(always)]
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
        let out = par_rows(
            x,
            c,
            #[inline(always)]
            |xrow, orow| {
                let (mean, rstd) = row_stats(xrow, self.eps);
                for i in 0..c {
                    orow[i] = (xrow[i] - mean) * rstd * w[i] + b[i];
                }
            },
        );
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
        let out = par_rows2(
            x,
            g,
            c,
            #[inline(always)]
            |xrow, grow, orow| {
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
            },
        );
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
        let c = last_dim(l1, "layer_norm backward")?;
        let task = (c * rows_per_task(c)).max(1);
        let sums = x
            .par_chunks(task)
            .zip(g.par_chunks(task))
            .map(|(xs, gs)| {
                wide(
                    #[inline(always)]
                    || {
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
                    },
                )
            })
            .collect::<Vec<_>>();
        Ok((
            CpuStorage::F32(sum_partials(sums, 2 * c)),
            Shape::from((2, c)),
        ))
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
    if use_cpu_kernels(x, &[w, b]) {
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

#[cfg(test)]
mod tests {
    use super::super::test_util::{close, f32, f64, randn};
    use super::*;

    /// The composed fallback (other dtypes, other devices) matches the fused kernel.
    #[test]
    fn f64_fallback_matches_f32_kernel() {
        let x = randn(&[2, 4, 5, 6]);
        let (lw, lb) = (randn(&[6]), randn(&[6]));
        close(
            &f32(&layer_norm(&f64(&x), &f64(&lw), &f64(&lb), 1e-5).unwrap()),
            &layer_norm(&x, &lw, &lb, 1e-5).unwrap(),
            1e-5,
            "layer_norm",
        );
    }
}
