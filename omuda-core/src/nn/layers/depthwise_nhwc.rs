//! CPU kernels of the depthwise convolution on channels-last maps (see
//! `depthwise`): one rayon task per row of the map, the innermost loop over
//! channels (contiguous in this layout) so that it vectorises. The weight is
//! laid out (k·k, C) to match.

use candle_core::{Layout, Result, Shape};
use rayon::prelude::*;

use super::activation::gelu_f32;
use super::cpu::{dims4, par_fill, rows_per_task, sum_partials};
use super::depthwise_geom::DwGeom;
use crate::simd::wide;

/// Shape (B, H, W, C) and output size (Ho, Wo) of a channels-last depthwise conv.
fn dims_and_out(l: &Layout, g: &DwGeom) -> Result<(usize, usize, usize, usize, usize, usize)> {
    let (b, h, w, c) = dims4(l, "depthwise conv")?;
    Ok((b, h, w, c, g.out_size(h)?, g.out_size(w)?))
}

/// The `c` channels of pixel `p` (its flat index in the map).
#[inline(always)]
fn pixel(data: &[f32], p: usize, c: usize) -> &[f32] {
    &data[p * c..(p + 1) * c]
}

/// What the forward kernel does to each output row once its taps are summed,
/// while the row is in cache.
#[derive(Debug, Clone, Copy)]
pub(super) enum Epilogue<'a> {
    None,
    /// y = GELU(y + b), b (C): the same sums as the bias op then the GELU op.
    BiasGelu(&'a [f32]),
}

/// x (B,H,W,C), w (k·k, C) → y (B,Ho,Wo,C), then the epilogue.
pub(super) fn forward(
    g: DwGeom,
    x: &[f32],
    lx: &Layout,
    wt: &[f32],
    epilogue: Epilogue,
) -> Result<(Vec<f32>, Shape)> {
    let (b, h, w, c, ho, wo) = dims_and_out(lx, &g)?;
    // One task per output row (sample, oi); the innermost loop runs over channels.
    let row = (wo * c).max(1);
    let out = par_fill(b * ho * wo * c, row, |start, y| {
        let r = start / row;
        wide(
            #[inline(always)]
            || {
                let (bi, oi) = (r / ho, r % ho);
                g.for_each_nhwc_tap(
                    w,
                    wo,
                    |ki| g.cfg.src(oi, ki, h),
                    |tap, ii, oj, jj| {
                        let xs = pixel(x, (bi * h + ii) * w + jj, c);
                        let wv = pixel(wt, tap, c);
                        for ((yv, xv), wc) in y[oj * c..(oj + 1) * c].iter_mut().zip(xs).zip(wv) {
                            *yv += wc * xv;
                        }
                    },
                );
                if let Epilogue::BiasGelu(bias) = epilogue {
                    for px in y.chunks_mut(c) {
                        for (v, &bv) in px.iter_mut().zip(bias) {
                            *v = gelu_f32(*v + bv);
                        }
                    }
                }
            },
        )
    });
    Ok((out, Shape::from((b, ho, wo, c))))
}

/// (grad_y (B,Ho,Wo,C), w (k·k, C)) → grad_x (B,H,W,C) with (H, W) = `size`,
/// as a gather per input row.
pub(super) fn backward_input(
    g: DwGeom,
    gy: &[f32],
    lgy: &Layout,
    wt: &[f32],
    (h, w): (usize, usize),
) -> Result<(Vec<f32>, Shape)> {
    let (b, ho, wo, c) = dims4(lgy, "depthwise conv")?;
    let row = (w * c).max(1);
    let out = par_fill(b * h * w * c, row, |start, dx| {
        let r = start / row;
        wide(
            #[inline(always)]
            || {
                let (bi, ii) = (r / h, r % h);
                // Output row oi reads input row ii through kernel row ki.
                g.for_each_nhwc_tap(
                    w,
                    wo,
                    |ki| g.cfg.dst(ii, ki, ho),
                    |tap, oi, oj, jj| {
                        let gs = pixel(gy, (bi * ho + oi) * wo + oj, c);
                        let wv = pixel(wt, tap, c);
                        for ((dv, gv), wc) in dx[jj * c..(jj + 1) * c].iter_mut().zip(gs).zip(wv) {
                            *dv += wc * gv;
                        }
                    },
                );
            },
        )
    });
    Ok((out, Shape::from((b, h, w, c))))
}

/// (x (B,H,W,C), grad_y (B,Ho,Wo,C)) → grad_w (k·k, C), per-task partial sums.
pub(super) fn backward_weight(
    g: DwGeom,
    x: &[f32],
    lx: &Layout,
    gy: &[f32],
) -> Result<(Vec<f32>, Shape)> {
    let (b, h, w, c, ho, wo) = dims_and_out(lx, &g)?;
    let kk = g.k * g.k;
    let rows_per = rows_per_task(wo * c * kk).max(1);
    let rows = b * ho;
    let parts = (0..rows.div_ceil(rows_per))
        .into_par_iter()
        .map(|task| {
            wide(
                #[inline(always)]
                || {
                    let mut acc = vec![0f32; kk * c];
                    for r in task * rows_per..((task + 1) * rows_per).min(rows) {
                        let (bi, oi) = (r / ho, r % ho);
                        g.for_each_nhwc_tap(
                            w,
                            wo,
                            |ki| g.cfg.src(oi, ki, h),
                            |tap, ii, oj, jj| {
                                let gs = pixel(gy, r * wo + oj, c);
                                let xs = pixel(x, (bi * h + ii) * w + jj, c);
                                for ((av, gv), xv) in
                                    acc[tap * c..(tap + 1) * c].iter_mut().zip(gs).zip(xs)
                                {
                                    *av += gv * xv;
                                }
                            },
                        );
                    }
                    acc
                },
            )
        })
        .collect::<Vec<_>>();
    Ok((sum_partials(parts, kk * c), Shape::from((kk, c))))
}
