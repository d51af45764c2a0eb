//! Plumbing shared by the fused CPU ops: when they apply, access to the raw
//! `f32` data, the rayon work split, shape checks, and the vectorisable
//! reductions. The reductions fix their summation order (eight accumulators),
//! so every kernel built on them is bit-reproducible whatever the thread count.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, DType, Layout, Result, Tensor};
use gemm::gemm;
pub(super) use gemm::Parallelism;
use rayon::prelude::*;

use crate::simd::wide;

/// True when the fused CPU kernels apply: `x` is an f32 tensor on the CPU and
/// every one of `others` (weights, biases) is f32 as well.
pub(super) fn use_cpu_kernels(x: &Tensor, others: &[&Tensor]) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && others.iter().all(|t| t.dtype() == DType::F32)
}

/// True when the fused CPU kernels apply (see [`use_cpu_kernels`]) and neither
/// `x` nor any of `others` is part of an autograd graph: an evaluation or
/// teacher forward on graph-free weights, where ops need no backward.
pub(super) fn graph_free_cpu(x: &Tensor, others: &[&Tensor]) -> bool {
    use_cpu_kernels(x, others) && !x.track_op() && others.iter().all(|t| !t.track_op())
}

/// True when `y`, a tensor the caller owns and no other tensor shares, can be
/// overwritten by a fused op instead of allocating the result: `y` is
/// contiguous and [`graph_free_cpu`].
pub(crate) fn may_overwrite(y: &Tensor, others: &[&Tensor]) -> bool {
    y.is_contiguous() && graph_free_cpu(y, others)
}

/// The contiguous `f32` data of a CPU storage, or an error naming the operand.
pub(crate) fn f32_data<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
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

/// [`f32_data`] for the operand an in-place op writes.
pub(crate) fn f32_data_mut<'a>(
    s: &'a mut CpuStorage,
    l: &Layout,
    what: &str,
) -> Result<&'a mut [f32]> {
    let dtype = s.dtype();
    let CpuStorage::F32(data) = s else {
        bail!("{what}: expected an f32 tensor, got {dtype:?}")
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&mut data[start..end]),
        None => bail!(
            "{what}: expected a contiguous tensor, got strides {:?}",
            l.stride()
        ),
    }
}

/// The four dimensions of a 4-d operand, in storage order.
pub(super) fn dims4(l: &Layout, what: &str) -> Result<(usize, usize, usize, usize)> {
    match *l.dims() {
        [b, c, h, w] => Ok((b, c, h, w)),
        ref d => bail!("{what}: expected a 4-d tensor, got {d:?}"),
    }
}

/// The (non-zero) last dimension of a row-wise operand.
pub(super) fn last_dim(l: &Layout, what: &str) -> Result<usize> {
    match l.dims().last() {
        Some(&n) if n > 0 => Ok(n),
        _ => bail!("{what}: empty last dimension in {:?}", l.dims()),
    }
}

/// `x` viewed as (outer, channels, inner) around `axis`.
pub(super) fn split_at_axis(dims: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = dims[..axis].iter().product();
    let inner = dims[axis + 1..].iter().product();
    (outer, dims[axis], inner)
}

/// Memory order of a 4-d feature map, for the kernels that exist in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MapOrder {
    /// (B, C, H, W).
    Nchw,
    /// (B, H, W, C): channels last, the layout of transformer tokens.
    Nhwc,
}

impl MapOrder {
    /// (B, C, H, W) of a map whose dimensions in storage order are `dims`.
    pub(super) fn bchw(self, dims: (usize, usize, usize, usize)) -> (usize, usize, usize, usize) {
        match self {
            MapOrder::Nchw => dims,
            MapOrder::Nhwc => (dims.0, dims.3, dims.1, dims.2),
        }
    }
}

/// Rows handed to one rayon task: enough work to amortise the task overhead.
pub(super) fn rows_per_task(row_len: usize) -> usize {
    (16 * 1024 / row_len.max(1)).max(1)
}

/// Merge per-task partial sums in task order. Tasks are fixed-size chunks and
/// `collect` keeps their order, so the result does not depend on the thread
/// count or on work stealing (rayon's `reduce`/`fold` would associate the
/// float additions differently from run to run).
pub(super) fn sum_partials(parts: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    parts.into_iter().fold(vec![0f32; len], add_vecs)
}

/// Element-wise sum of two equally long vectors (used to merge per-task partial sums).
pub(super) fn add_vecs(mut a: Vec<f32>, b: Vec<f32>) -> Vec<f32> {
    for (x, y) in a.iter_mut().zip(b.iter()) {
        *x += *y;
    }
    a
}

/// Sum with eight independent accumulators: a sequential float sum cannot be
/// vectorised (it fixes the order of additions); this one can, and is at least
/// as accurate.
#[inline(always)]
pub(super) fn sum_f32(xs: &[f32]) -> f32 {
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
#[inline(always)]
pub(super) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
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
#[inline(always)]
pub(super) fn sq_dev_sum(xs: &[f32], m: f32) -> f32 {
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
#[inline(always)]
pub(super) fn centered_dot(g: &[f32], x: &[f32], m: f32) -> f32 {
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
pub(super) const ELEMWISE_CHUNK: usize = 16 * 1024;

/// A vector of `len` values written in parallel chunks of `chunk` elements:
/// `f(start, out_chunk)` for the chunk at `start`, which must write every value
/// of it. Each chunk is zeroed by the task that then writes it, while it is in
/// that core's cache, instead of the whole vector zeroed up front on one thread
/// (`vec![0.0; len]`: a `memset` of cold memory).
pub(super) fn par_fill(len: usize, chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let chunk = chunk.max(1);
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(i, c)| {
            for v in c.iter_mut() {
                v.write(0.0);
            }
            // SAFETY: every element of `c` was initialised just above, and
            // `MaybeUninit<f32>` has the layout of `f32`.
            let c = unsafe { &mut *(c as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
            f(i * chunk, c);
        });
    // SAFETY: the chunks cover `0..len` and each was initialised by its task.
    unsafe { out.set_len(len) };
    out
}

/// A vector of `planes` planes of `plane_len` values each (the (sample,
/// channel) planes of an NCHW map), written plane by plane:
/// `f(plane, out_plane)`, which must write every value of it. Whole planes per
/// rayon task, about 16 K values; each zeroed by its task ([`par_fill`]).
pub(super) fn par_planes(
    planes: usize,
    plane_len: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let task = plane_len * rows_per_task(plane_len);
    par_fill(planes * plane_len, task, |start, o| {
        wide(
            #[inline(always)]
            || {
                for (i, op) in o.chunks_mut(plane_len).enumerate() {
                    f(start / plane_len + i, op);
                }
            },
        )
    })
}

/// In-place element-wise kernel over `x` in parallel chunks: `f(chunk)`.
pub(super) fn par_update(x: &mut [f32], f: impl Fn(&mut [f32]) + Sync) {
    x.par_chunks_mut(ELEMWISE_CHUNK).for_each(|c| {
        wide(
            #[inline(always)]
            || f(c),
        )
    });
}

/// Element-wise kernel over `x` in parallel chunks; `f(x_chunk, out_chunk)` runs
/// a plain loop so that it vectorises (rayon's per-item `map` does not).
pub(super) fn par_map(x: &[f32], f: impl Fn(&[f32], &mut [f32]) + Sync) -> Vec<f32> {
    par_fill(x.len(), ELEMWISE_CHUNK, |start, o| {
        wide(
            #[inline(always)]
            || f(&x[start..start + o.len()], o),
        )
    })
}

/// Two-input version of [`par_map`] (`a` and `b` of equal length).
pub(super) fn par_map2(
    a: &[f32],
    b: &[f32],
    f: impl Fn(&[f32], &[f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    par_fill(a.len(), ELEMWISE_CHUNK, |start, o| {
        let end = start + o.len();
        wide(
            #[inline(always)]
            || f(&a[start..end], &b[start..end], o),
        )
    })
}

/// Row-wise kernel over `x` seen as rows of `n` values (`n` > 0 unless `x` is
/// empty): `f(x_row, out_row)` for every row, whole rows per rayon task.
pub(super) fn par_rows(x: &[f32], n: usize, f: impl Fn(&[f32], &mut [f32]) + Sync) -> Vec<f32> {
    let task = (n * rows_per_task(n)).max(1);
    par_fill(x.len(), task, |start, o| {
        let xs = &x[start..start + o.len()];
        wide(
            #[inline(always)]
            || {
                for (orow, xrow) in o.chunks_mut(n).zip(xs.chunks(n)) {
                    f(xrow, orow);
                }
            },
        )
    })
}

/// Two-input version of [`par_rows`] (`a` and `b` of equal length):
/// `f(a_row, b_row, out_row)`.
pub(super) fn par_rows2(
    a: &[f32],
    b: &[f32],
    n: usize,
    f: impl Fn(&[f32], &[f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    let task = (n * rows_per_task(n)).max(1);
    par_fill(a.len(), task, |start, o| {
        let end = start + o.len();
        let (xa, xb) = (&a[start..end], &b[start..end]);
        wide(
            #[inline(always)]
            || {
                for ((orow, arow), brow) in o.chunks_mut(n).zip(xa.chunks(n)).zip(xb.chunks(n)) {
                    f(arow, brow, orow);
                }
            },
        )
    })
}

/// gemm's parallelism for the current thread count.
fn gemm_threads() -> Parallelism {
    match candle_core::utils::get_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// dst (m×n, row-major, row stride `dst_rs`) (+)= lhs (m×k) · rhs (k×n), all
/// given by raw row / column strides.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_into(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: &[f32],
    rhs_rs: isize,
    rhs_cs: isize,
) {
    gemm_into_on(
        gemm_threads(),
        m,
        n,
        k,
        dst,
        dst_rs,
        accumulate,
        lhs,
        lhs_rs,
        lhs_cs,
        rhs,
        rhs_rs,
        rhs_cs,
    )
}

/// [`gemm_into`] with the given parallelism (`Parallelism::None` for GEMMs that
/// already run as parallel tasks).
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_into_on(
    parallelism: Parallelism,
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: &[f32],
    rhs_rs: isize,
    rhs_cs: isize,
) {
    // Bounds: every index the strides reach lies inside the slices.
    debug_assert!(m == 0 || n == 0 || (m - 1) * dst_rs + n <= dst.len());
    // SAFETY: the callers size `dst`, `lhs` and `rhs` so that every element the
    // (m, n, k) product addresses with these strides is in bounds (checked in
    // debug builds above and by the callers' shape checks), and `dst` does not
    // alias the operands.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.as_ptr(),
            rhs_cs,
            rhs_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
