//! Bias addition with a cheap bias gradient, and the zero-initialised bias
//! parameter shared by the layers. Candle's `broadcast_add` reduces the bias
//! gradient with a slow strided sum; the fused op here sums contiguous runs.

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, InplaceOp2, Layout, Result, Shape, Tensor,
};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;

use super::cpu::{
    f32_data, f32_data_mut, may_overwrite, par_fill, rows_per_task, split_at_axis, sum_f32,
    sum_partials, use_cpu_kernels,
};
use crate::simd::wide;

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
        let block = c * inner;
        // Each task copies its chunk of x while it is in cache and adds the
        // bias there (no full copy of x that is then updated).
        let out = par_fill(
            x.len(),
            (block * rows_per_task(block)).max(1),
            |start, chunk| {
                chunk.copy_from_slice(&x[start..start + chunk.len()]);
                add_bias_chunk(chunk, b, inner);
            },
        );
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
            let parts = x
                .par_chunks((block * rows_per_task(block)).max(1))
                .map(|chunk| {
                    wide(
                        #[inline(always)]
                        || {
                            let mut acc = vec![0f32; c];
                            for row in chunk.chunks(block) {
                                for (a, v) in acc.iter_mut().zip(row.iter()) {
                                    *a += *v;
                                }
                            }
                            acc
                        },
                    )
                })
                .collect::<Vec<_>>();
            sum_partials(parts, c)
        } else {
            (0..c)
                .into_par_iter()
                .map(|ci| {
                    wide(
                        #[inline(always)]
                        || {
                            (0..outer)
                                .map(|o| {
                                    let start = o * block + ci * inner;
                                    sum_f32(&x[start..start + inner])
                                })
                                .sum::<f32>()
                        },
                    )
                })
                .collect()
        };
        Ok((CpuStorage::F32(sums), Shape::from(c)))
    }
}

/// An error unless `b` has the length of `x`'s dimension `axis`.
fn check_bias(x: &Tensor, b: &Tensor, axis: usize) -> Result<()> {
    let dims = x.dims();
    if axis >= dims.len() || b.dims() != [dims[axis]] {
        bail!(
            "add_bias: bias of shape {:?} does not match axis {axis} of input {:?}",
            b.dims(),
            dims
        );
    }
    Ok(())
}

/// `x + b` with `b` (C) broadcast along `axis` of `x`; differentiable in both.
pub fn add_bias(x: &Tensor, b: &Tensor, axis: usize) -> Result<Tensor> {
    check_bias(x, b, axis)?;
    let dims = x.dims();
    if use_cpu_kernels(x, &[b]) {
        return x
            .contiguous()?
            .apply_op2(&b.contiguous()?, AddBias { axis });
    }
    let mut shape = vec![1usize; dims.len()];
    shape[axis] = dims[axis];
    x.broadcast_add(&b.reshape(shape)?)
}

/// `y + b` along `axis` when the layer has a bias, else `y` unchanged. `y` is
/// the layer's fresh output: outside a graph the bias is added in place.
pub(super) fn add_optional_bias(y: Tensor, b: Option<&Tensor>, axis: usize) -> Result<Tensor> {
    match b {
        Some(b) if may_overwrite(&y, &[b]) => {
            check_bias(&y, b, axis)?;
            y.inplace_op2(&b.contiguous()?, &AddBiasInPlace { axis })?;
            Ok(y)
        }
        Some(b) => add_bias(&y, b, axis),
        None => Ok(y),
    }
}

/// `chunk += b` for a chunk of whole blocks of `b.len()` channels × `inner`
/// values (the kernel of [`AddBias`] and [`AddBiasInPlace`]).
fn add_bias_chunk(chunk: &mut [f32], b: &[f32], inner: usize) {
    let block = b.len() * inner;
    wide(
        #[inline(always)]
        || {
            for blk in chunk.chunks_mut(block) {
                if inner == 1 {
                    for (v, bv) in blk.iter_mut().zip(b.iter()) {
                        *v += *bv;
                    }
                } else {
                    for (ci, run) in blk.chunks_mut(inner).enumerate() {
                        let bv = b[ci];
                        for v in run.iter_mut() {
                            *v += bv;
                        }
                    }
                }
            }
        },
    )
}

/// `y += b` along `axis`, in `y`'s storage (the same sums as [`AddBias`]).
struct AddBiasInPlace {
    axis: usize,
}

impl InplaceOp2 for AddBiasInPlace {
    fn name(&self) -> &'static str {
        "add-bias-in-place"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (_, c, inner) = split_at_axis(l1.dims(), self.axis);
        let y = f32_data_mut(s1, l1, "add_bias input")?;
        let b = f32_data(s2, l2, "add_bias bias")?;
        let block = c * inner;
        y.par_chunks_mut((block * rows_per_task(block)).max(1))
            .for_each(|chunk| add_bias_chunk(chunk, b, inner));
        Ok(())
    }
}

/// The layers' `bias` parameter of `n` zeros, when `bias` is set.
pub(super) fn zero_bias(vb: &VarBuilder, n: usize, bias: bool) -> Result<Option<Tensor>> {
    if bias {
        Ok(Some(vb.get_with_hints(n, "bias", Init::Const(0.0))?))
    } else {
        Ok(None)
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
        let b = randn(&[4]);
        close(
            &f32(&add_bias(&f64(&x), &f64(&b), 1).unwrap()),
            &add_bias(&x, &b, 1).unwrap(),
            1e-6,
            "add_bias",
        );
    }
}
