//! The sum of two tensors of one shape (the residual connections, the
//! SegFormer head's per-level sum) as a fused op: on the CPU in f32 it runs on
//! the compute pool's threads with wide vectors (see `crate::simd`) instead of
//! Candle's separate element-wise pool, whose worker has to be woken for
//! every op. Same values and gradients as Candle's `+`.

use candle_core::{CpuStorage, CustomOp2, InplaceOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::{
    f32_data, f32_data_mut, may_overwrite, par_map2, use_cpu_kernels, ELEMWISE_CHUNK,
};
use crate::simd::wide;

struct Add;

impl CustomOp2 for Add {
    fn name(&self) -> &'static str {
        "add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = f32_data(s1, l1, "add lhs")?;
        let b = f32_data(s2, l2, "add rhs")?;
        if l1.dims() != l2.dims() {
            candle_core::bail!("add: shapes {:?} and {:?} differ", l1.dims(), l2.dims());
        }
        let out = par_map2(
            a,
            b,
            #[inline(always)]
            |xa, xb, o| {
                for ((ov, &av), &bv) in o.iter_mut().zip(xa).zip(xb) {
                    *ov = av + bv;
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// d(a + b) = (g, g), accumulated by the autograd as for Candle's `+`.
    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), Some(grad.clone())))
    }
}

/// `a += b` in `a`'s storage, for tensors outside any graph.
struct AddInPlace;

impl InplaceOp2 for AddInPlace {
    fn name(&self) -> &'static str {
        "add-in-place"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        if l1.dims() != l2.dims() {
            candle_core::bail!("add: shapes {:?} and {:?} differ", l1.dims(), l2.dims());
        }
        let a = f32_data_mut(s1, l1, "add lhs")?;
        let b = f32_data(s2, l2, "add rhs")?;
        a.par_chunks_mut(ELEMWISE_CHUNK)
            .zip(b.par_chunks(ELEMWISE_CHUNK))
            .for_each(|(a, b)| {
                wide(
                    #[inline(always)]
                    || {
                        for (av, &bv) in a.iter_mut().zip(b) {
                            *av += bv;
                        }
                    },
                )
            });
        Ok(())
    }
}

/// `a + b` where `b` is a tensor the caller owns and shares with no other
/// tensor (a layer's fresh output): outside any graph the sum is written into
/// `b`'s storage (float addition commutes: the same values as [`add`]).
pub(crate) fn add_owned(a: &Tensor, b: Tensor) -> Result<Tensor> {
    if may_overwrite(&b, &[a]) && a.dims() == b.dims() {
        b.inplace_op2(&a.contiguous()?, &AddInPlace)?;
        return Ok(b);
    }
    add(a, &b)
}

/// `a + b` for tensors of equal shape: the fused op on the CPU in f32,
/// Candle's `+` elsewhere (and for shapes that differ, whose error it gives).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if use_cpu_kernels(a, &[b]) && a.dims() == b.dims() {
        return a.contiguous()?.apply_op2(&b.contiguous()?, Add);
    }
    a + b
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{bits, randn};
    use super::*;
    use candle_core::Var;

    /// Values and both gradients equal Candle's `+` bit for bit, also when an
    /// operand is used twice (its gradients accumulate).
    #[test]
    fn equals_candle_add_bit_for_bit() {
        let (a, b) = (
            Var::from_tensor(&randn(&[2, 3, 37, 11])).unwrap(),
            Var::from_tensor(&randn(&[2, 3, 37, 11])).unwrap(),
        );
        let w = randn(&[2, 3, 37, 11]);
        let ours = add(&add(&a, &b).unwrap(), &a).unwrap();
        let theirs = ((a.as_tensor() + b.as_tensor()).unwrap() + a.as_tensor()).unwrap();
        assert_eq!(bits(&ours), bits(&theirs));
        let go = (&ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gt = (&theirs * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_eq!(bits(go.get(&a).unwrap()), bits(gt.get(&a).unwrap()));
        assert_eq!(bits(go.get(&b).unwrap()), bits(gt.get(&b).unwrap()));
        // Shapes that differ fall back to Candle (which broadcasts nothing here).
        assert!(add(&randn(&[2, 3]), &randn(&[3, 2])).is_err());
    }
}
