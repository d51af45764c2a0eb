//! CPU kernels of the depthwise convolution on NCHW maps (see `depthwise`):
//! one rayon task per (sample, channel) plane, walking each tap's valid window
//! so that no padded copy of the input is made.

use candle_core::{Layout, Result, Shape};
use rayon::prelude::*;

use super::cpu::{dims4, dot_f32, par_planes};
use super::depthwise_geom::DwGeom;
use crate::simd::wide;

/// x (B,C,H,W), w (C,1,k,k) → y (B,C,Ho,Wo).
pub(super) fn forward(g: DwGeom, x: &[f32], lx: &Layout, wt: &[f32]) -> Result<(Vec<f32>, Shape)> {
    let (b, c, h, w) = dims4(lx, "depthwise conv")?;
    let (ho, wo) = (g.out_size(h)?, g.out_size(w)?);
    let kk = g.k * g.k;
    let out = par_planes(
        b * c,
        ho * wo,
        #[inline(always)]
        |plane, y| {
            let ci = plane % c;
            let xp = &x[plane * h * w..(plane + 1) * h * w];
            let wk = &wt[ci * kk..(ci + 1) * kk];
            g.for_each_tap(h, w, ho, wo, |win| {
                let wv = wk[win.tap];
                for (src, dst) in win.rows() {
                    for (yv, xv) in y[dst].iter_mut().zip(&xp[src]) {
                        *yv += wv * xv;
                    }
                }
            });
        },
    );
    Ok((out, Shape::from((b, c, ho, wo))))
}

/// (grad_y (B,C,Ho,Wo), w (C,1,k,k)) → grad_x (B,C,H,W) with (H, W) = `size`.
pub(super) fn backward_input(
    g: DwGeom,
    gy: &[f32],
    lgy: &Layout,
    wt: &[f32],
    (h, w): (usize, usize),
) -> Result<(Vec<f32>, Shape)> {
    let (b, c, ho, wo) = dims4(lgy, "depthwise conv")?;
    let kk = g.k * g.k;
    let out = par_planes(
        b * c,
        h * w,
        #[inline(always)]
        |plane, dx| {
            let ci = plane % c;
            let gp = &gy[plane * ho * wo..(plane + 1) * ho * wo];
            let wk = &wt[ci * kk..(ci + 1) * kk];
            g.for_each_tap(h, w, ho, wo, |win| {
                let wv = wk[win.tap];
                for (src, dst) in win.rows() {
                    for (dv, gv) in dx[src].iter_mut().zip(&gp[dst]) {
                        *dv += wv * gv;
                    }
                }
            });
        },
    );
    Ok((out, Shape::from((b, c, h, w))))
}

/// (x (B,C,H,W), grad_y (B,C,Ho,Wo)) → grad_w (C,1,k,k).
pub(super) fn backward_weight(
    g: DwGeom,
    x: &[f32],
    lx: &Layout,
    gy: &[f32],
    lgy: &Layout,
) -> Result<(Vec<f32>, Shape)> {
    let (b, c, h, w) = dims4(lx, "depthwise conv")?;
    let (_, _, ho, wo) = dims4(lgy, "depthwise conv")?;
    let kk = g.k * g.k;
    let mut out = vec![0f32; c * kk];
    // One task per channel: it owns its k·k outputs, so no reduction across tasks.
    out.par_chunks_mut(kk).enumerate().for_each(|(ci, dw)| {
        wide(
            #[inline(always)]
            || {
                for bi in 0..b {
                    let plane = bi * c + ci;
                    let xp = &x[plane * h * w..(plane + 1) * h * w];
                    let gp = &gy[plane * ho * wo..(plane + 1) * ho * wo];
                    g.for_each_tap(h, w, ho, wo, |win| {
                        let mut acc = 0f32;
                        for (src, dst) in win.rows() {
                            acc += dot_f32(&xp[src], &gp[dst]);
                        }
                        dw[win.tap] += acc;
                    });
                }
            },
        )
    });
    Ok((out, Shape::from((c, 1, g.k, g.k))))
}
