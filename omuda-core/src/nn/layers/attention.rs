//! Attention probabilities softmax(q·kᵀ) as one op with a backward pass.
//!
//! Composed (`matmul`, then softmax), the autograd graph keeps both the scores
//! q·kᵀ and the probabilities until the backward ends: B·heads·N·M values each,
//! 134 MB per stage-1 block of MiT-B0 at 512×512, batch 2 (N = 128², M = 16²),
//! twice per DACS iteration. The softmax backward needs only the
//! probabilities and the matmul backward only q and k, so the fused op keeps
//! q, k and its output, and never the scores.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::activation::{softmax_last_dim, softmax_row_in_place, SoftmaxBwd};
use super::cpu::{
    f32_data, gemm_into, gemm_into_on, graph_free_cpu, par_fill, rows_per_task, use_cpu_kernels,
    Parallelism,
};
use crate::simd::wide;

/// softmax(q·kᵀ) over the last dimension for q (…, N, d) and k (…, M, d) with
/// equal leading dimensions: (…, N, M). One fused op for f32 on the CPU; the
/// composed matmul and softmax elsewhere.
pub fn attention_probs(q: &Tensor, k: &Tensor) -> Result<Tensor> {
    if use_cpu_kernels(q, &[k]) {
        return q.contiguous()?.apply_op2(&k.contiguous()?, AttentionProbs);
    }
    attention_probs_composed(q, k)
}

/// The composed version: the reference of the fused op's tests, and the path
/// on other devices and dtypes.
pub fn attention_probs_composed(q: &Tensor, k: &Tensor) -> Result<Tensor> {
    softmax_last_dim(&q.matmul(&k.transpose(candle_core::D::Minus2, candle_core::D::Minus1)?)?)
}

struct AttentionProbs;

/// (groups, N, M, d) of the operands, or an error naming the mismatch.
fn geometry(lq: &Layout, lk: &Layout) -> Result<(usize, usize, usize, usize)> {
    let (dq, dk) = (lq.dims(), lk.dims());
    if dq.len() < 2 || dq.len() != dk.len() {
        bail!("attention: q {dq:?} and k {dk:?} must have the same rank, at least 2");
    }
    let r = dq.len();
    if dq[..r - 2] != dk[..r - 2] || dq[r - 1] != dk[r - 1] {
        bail!("attention: q {dq:?} and k {dk:?} need equal leading dimensions and head size");
    }
    let groups = dq[..r - 2].iter().product();
    Ok((groups, dq[r - 2], dk[r - 2], dq[r - 1]))
}

impl CustomOp2 for AttentionProbs {
    fn name(&self) -> &'static str {
        "attention-probs"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = f32_data(s1, l1, "attention q")?;
        let k = f32_data(s2, l2, "attention k")?;
        let (groups, n, m, d) = geometry(l1, l2)?;
        let mut out = vec![0f32; groups * n * m];
        if m > 0 {
            for (g, scores) in out.chunks_mut(n * m).enumerate() {
                // scores (N×M) = q_g (N×d, row-major) · k_gᵀ (k_g is M×d row-major).
                let (qg, kg) = (
                    &q[g * n * d..(g + 1) * n * d],
                    &k[g * m * d..(g + 1) * m * d],
                );
                gemm_into(
                    n, m, d, scores, m, false, qg, d as isize, 1, kg, 1, d as isize,
                );
            }
            let task = (m * rows_per_task(m)).max(1);
            out.par_chunks_mut(task).for_each(|rows| {
                wide(
                    #[inline(always)]
                    || {
                        for row in rows.chunks_mut(m) {
                            softmax_row_in_place(row);
                        }
                    },
                )
            });
        }
        let mut dims = l1.dims().to_vec();
        let last = dims.len() - 1;
        dims[last] = m;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        probs: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // d scores = P ⊙ (G − Σ G⊙P) per row; then the matmul backward.
        let dscores = probs.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBwd)?;
        let dq = dscores.matmul(k)?;
        let dk = dscores
            .transpose(candle_core::D::Minus2, candle_core::D::Minus1)?
            .matmul(q)?;
        Ok((Some(dq), Some(dk)))
    }
}

/// softmax(q·kᵀ)·v per head, for forwards without a graph (evaluation, the
/// EMA teacher): q (B, N, C), k and v (B, M, C) token tensors → (B, N, C),
/// head h being channels h·C/heads to (h+1)·C/heads of each. `None` when it
/// does not apply (a graph to record, or not f32 on the CPU): the caller then
/// takes the composed path (`attention_probs`, a matmul, the heads merged).
///
/// The composed path splits the heads into copies, writes every head's
/// probabilities to memory and reads them back, and merges the heads with
/// another copy; each step is a parallel op of its own. Here each task takes
/// a block of query rows through every head: the scores of the block stay in
/// cache from the product to the softmax to the product with v, and the
/// result is written in place in the token layout. The products and the
/// softmax are the composed path's, so the values are the same bits.
pub(crate) fn attention_context(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
) -> Result<Option<Tensor>> {
    if !graph_free_cpu(q, &[k, v]) {
        return Ok(None);
    }
    let ctx = q.contiguous()?.apply_op3_no_bwd(
        &k.contiguous()?,
        &v.contiguous()?,
        &AttentionContext { heads },
    )?;
    Ok(Some(ctx))
}

struct AttentionContext {
    heads: usize,
}

impl CustomOp3 for AttentionContext {
    fn name(&self) -> &'static str {
        "attention-context"
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
        let q = f32_data(s1, l1, "attention q")?;
        let k = f32_data(s2, l2, "attention k")?;
        let v = f32_data(s3, l3, "attention v")?;
        let (&[b, n, c], &[bk, m, ck], true) = (l1.dims(), l2.dims(), l2.dims() == l3.dims())
        else {
            bail!(
                "attention: expected q (B, N, C) and k, v (B, M, C), got {:?}, {:?}, {:?}",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        };
        let heads = self.heads;
        if (bk, ck) != (b, c) || heads == 0 || c % heads != 0 || m == 0 {
            bail!(
                "attention: q {:?} and k, v {:?} do not fit {heads} heads",
                l1.dims(),
                l2.dims()
            );
        }
        let dh = c / heads;
        // Query rows per task: a block of scores of about 64 KB.
        let rows = rows_per_task(m);
        let out = par_fill(b * n * c, rows * c, |start, block| {
            let mut scores = vec![0f32; rows * m];
            // The block's rows, split where a batch element ends.
            let (mut r, end) = (start / c, start / c + block.len() / c);
            while r < end {
                let (bi, i0) = (r / n, r % n);
                let len = (n - i0).min(end - r);
                let scores = &mut scores[..len * m];
                let dst = &mut block[(r - start / c) * c..(r - start / c + len) * c];
                let (kb, vb) = (&k[bi * m * c..], &v[bi * m * c..]);
                for h in 0..heads {
                    // scores (len × M) = q rows (len × dh) · k_hᵀ (dh × M).
                    gemm_into_on(
                        Parallelism::None,
                        len,
                        m,
                        dh,
                        scores,
                        m,
                        false,
                        &q[r * c + h * dh..],
                        c as isize,
                        1,
                        &kb[h * dh..],
                        1,
                        c as isize,
                    );
                    wide(
                        #[inline(always)]
                        || {
                            for row in scores.chunks_mut(m) {
                                softmax_row_in_place(row);
                            }
                        },
                    );
                    // out rows, head h (len × dh) = probabilities (len × M) · v_h (M × dh).
                    gemm_into_on(
                        Parallelism::None,
                        len,
                        dh,
                        m,
                        &mut dst[h * dh..],
                        c,
                        false,
                        scores,
                        m as isize,
                        1,
                        &vb[h * dh..],
                        c as isize,
                        1,
                    );
                }
                r += len;
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, n, c))))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{bits, close, f32, f64, randn};
    use super::*;
    use candle_core::Var;

    /// The graph-free context equals the composed path (heads split, fused
    /// probabilities, matmul, heads merged) bit for bit: one and several heads,
    /// query blocks that end inside a batch element, keys longer than a block.
    #[test]
    fn graph_free_context_is_the_composed_path() {
        for (b, n, m, c, heads) in [(2, 37, 11, 8, 1), (2, 300, 64, 32, 2), (1, 50, 700, 20, 5)] {
            let (q, k, v) = (randn(&[b, n, c]), randn(&[b, m, c]), randn(&[b, m, c]));
            let split = |x: &Tensor, len: usize| {
                x.reshape((b, len, heads, c / heads))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .contiguous()
                    .unwrap()
            };
            let probs = attention_probs(&split(&q, n), &split(&k, m)).unwrap();
            let composed = probs
                .matmul(&split(&v, m))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
                .reshape((b, n, c))
                .unwrap();
            let fused = attention_context(&q, &k, &v, heads).unwrap().unwrap();
            assert_eq!(fused.dims(), &[b, n, c]);
            assert!(
                bits(&fused) == bits(&composed),
                "b{b} n{n} m{m} c{c} heads {heads}: values differ, largest {}",
                super::super::max_rel_diff(&fused, &composed).unwrap()
            );
        }
        // With a graph to record it does not apply.
        let q = Var::from_tensor(&randn(&[1, 4, 8])).unwrap();
        let k = randn(&[1, 3, 8]);
        assert!(attention_context(q.as_tensor(), &k, &k, 2)
            .unwrap()
            .is_none());
    }

    /// Values and both gradients of the fused op against the composed ops
    /// (f32 and the f64 fallback), with heads and with a single group.
    #[test]
    fn fused_matches_composed_with_gradients() {
        for (qs, ks) in [
            (vec![2, 3, 37, 8], vec![2, 3, 11, 8]),
            (vec![1, 70, 16], vec![1, 9, 16]),
        ] {
            let (q, k) = (
                Var::from_tensor(&randn(&qs)).unwrap(),
                Var::from_tensor(&randn(&ks)).unwrap(),
            );
            let w = randn(&[qs[..qs.len() - 1].to_vec(), vec![ks[ks.len() - 2]]].concat());
            let fused = attention_probs(&q, &k).unwrap();
            let composed = attention_probs_composed(&q, &k).unwrap();
            close(&fused, &composed, 1e-5, "probabilities");
            let row_sums = fused.sum(candle_core::D::Minus1).unwrap();
            close(
                &row_sums,
                &row_sums.ones_like().unwrap(),
                1e-6,
                "rows sum to 1",
            );
            let gf = (&fused * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gc = (&composed * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            close(gf.get(&q).unwrap(), gc.get(&q).unwrap(), 1e-5, "dq");
            close(gf.get(&k).unwrap(), gc.get(&k).unwrap(), 1e-5, "dk");
            // The f64 fallback (composed) agrees with the f32 kernel.
            let p64 = attention_probs(&f64(&q), &f64(&k)).unwrap();
            close(&f32(&p64), &fused, 1e-5, "f64 fallback");
        }
    }

    #[test]
    fn mismatched_operands_are_refused() {
        let err = attention_probs(&randn(&[2, 5, 4]), &randn(&[3, 6, 4]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("attention"), "{err}");
        let err = attention_probs(&randn(&[2, 5, 4]), &randn(&[2, 6, 3]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("head size"), "{err}");
    }
}
