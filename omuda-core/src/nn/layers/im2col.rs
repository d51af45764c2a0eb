//! The im2col kernels of the dense convolution (see `conv`), for NCHW and
//! channels-last maps: the unfolding op, and its adjoint (col2im) as the
//! backward. The adjoint is skipped for inputs that need no gradient (the
//! image), so the first convolution of a network costs no scatter.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv_cfg::ConvCfg;
use super::cpu::{dims4, f32_data, MapOrder};
use crate::simd::wide;

/// Geometry of a dense convolution for the im2col kernels.
#[derive(Debug, Clone, Copy)]
pub(super) struct ColGeom {
    k: usize,
    cfg: ConvCfg,
    h: usize,
    w: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
}

impl ColGeom {
    pub(super) fn new(k: usize, cfg: ConvCfg, h: usize, w: usize) -> Result<Self> {
        let span = cfg.dilation * (k - 1) + 1;
        let out = |n: usize| match (n + 2 * cfg.padding).checked_sub(span) {
            Some(v) => Ok(v / cfg.stride + 1),
            None => bail!("conv2d: input size {n} too small for kernel {k} with {cfg:?}"),
        };
        Ok(Self {
            k,
            cfg,
            h,
            w,
            ho: out(h)?,
            wo: out(w)?,
        })
    }
}

/// Unfolds a map into convolution columns, zero where the window leaves the input:
/// NCHW (B, C, H, W) → (B, C·k·k, Ho·Wo); channels-last (B, H, W, C) →
/// (B·Ho·Wo, k·k·C), one row per output pixel with taps in (ki, kj, c) order.
pub(super) struct Im2Col {
    pub(super) geom: ColGeom,
    pub(super) order: MapOrder,
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        match self.order {
            MapOrder::Nchw => "im2col",
            MapOrder::Nhwc => "im2col-nhwc",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (out, shape) = match self.order {
            MapOrder::Nchw => {
                let x = f32_data(s, l, "conv2d input")?;
                im2col_nchw(self.geom, x, dims4(l, "conv2d")?)
            }
            MapOrder::Nhwc => {
                let x = f32_data(s, l, "conv2d (channels-last) input")?;
                im2col_nhwc(self.geom, x, dims4(l, "conv2d (channels-last)")?)
            }
        };
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // The network input (an image) does not track gradients: skip the scatter.
        if !x.track_op() {
            return Ok(None);
        }
        let (b, c, _, _) = self.order.bchw(x.dims4()?);
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Col2Im {
            geom: self.geom,
            order: self.order,
            b,
            c,
        })?))
    }
}

/// Adjoint of [`Im2Col`]: columns → the map, summing overlapping windows.
struct Col2Im {
    geom: ColGeom,
    order: MapOrder,
    /// Batch size (the NCHW kernel reads it off the column count instead).
    b: usize,
    c: usize,
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        match self.order {
            MapOrder::Nchw => "col2im",
            MapOrder::Nhwc => "col2im-nhwc",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (out, shape) = match self.order {
            MapOrder::Nchw => {
                let cols = f32_data(s, l, "im2col gradient")?;
                col2im_nchw(self.geom, cols, self.c)
            }
            MapOrder::Nhwc => {
                let cols = f32_data(s, l, "im2col (channels-last) gradient")?;
                col2im_nhwc(self.geom, cols, self.b, self.c)
            }
        };
        Ok((CpuStorage::F32(out), shape))
    }
}

/// (B, C, H, W) → columns (B, C·k·k, Ho·Wo).
fn im2col_nchw(
    g: ColGeom,
    x: &[f32],
    (b, c, h, w): (usize, usize, usize, usize),
) -> (Vec<f32>, Shape) {
    let (kk, len) = (g.k * g.k, g.ho * g.wo);
    let mut out = vec![0f32; b * c * kk * len];
    // One task per (sample, input channel): it owns k·k consecutive rows.
    out.par_chunks_mut(kk * len)
        .enumerate()
        .for_each(|(plane, rows)| {
            wide(
                #[inline(always)]
                || {
                    let xp = &x[plane * h * w..(plane + 1) * h * w];
                    for ki in 0..g.k {
                        for kj in 0..g.k {
                            let row = &mut rows[(ki * g.k + kj) * len..(ki * g.k + kj + 1) * len];
                            for oi in 0..g.ho {
                                let Some(ii) = g.cfg.src(oi, ki, h) else {
                                    continue;
                                };
                                let xr = &xp[ii * w..(ii + 1) * w];
                                let dst = &mut row[oi * g.wo..(oi + 1) * g.wo];
                                for (oj, d) in dst.iter_mut().enumerate() {
                                    if let Some(jj) = g.cfg.src(oj, kj, w) {
                                        *d = xr[jj];
                                    }
                                }
                            }
                        }
                    }
                },
            )
        });
    (out, Shape::from((b, c * kk, len)))
}

/// Columns (B, C·k·k, Ho·Wo) → (B, C, H, W): a scatter, one task per plane.
fn col2im_nchw(g: ColGeom, cols: &[f32], c: usize) -> (Vec<f32>, Shape) {
    let (kk, len) = (g.k * g.k, g.ho * g.wo);
    let b = cols.len() / (c * kk * len).max(1);
    let (h, w) = (g.h, g.w);
    let mut out = vec![0f32; b * c * h * w];
    out.par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(plane, dx)| {
            wide(
                #[inline(always)]
                || {
                    let rows = &cols[plane * kk * len..(plane + 1) * kk * len];
                    for ki in 0..g.k {
                        for kj in 0..g.k {
                            let row = &rows[(ki * g.k + kj) * len..(ki * g.k + kj + 1) * len];
                            for oi in 0..g.ho {
                                let Some(ii) = g.cfg.src(oi, ki, h) else {
                                    continue;
                                };
                                let dr = &mut dx[ii * w..(ii + 1) * w];
                                for (oj, v) in row[oi * g.wo..(oi + 1) * g.wo].iter().enumerate() {
                                    if let Some(jj) = g.cfg.src(oj, kj, w) {
                                        dr[jj] += *v;
                                    }
                                }
                            }
                        }
                    }
                },
            )
        });
    (out, Shape::from((b, c, h, w)))
}

/// Channels-last (B, H, W, C) → columns (B·Ho·Wo, k·k·C).
fn im2col_nhwc(
    g: ColGeom,
    x: &[f32],
    (b, h, w, c): (usize, usize, usize, usize),
) -> (Vec<f32>, Shape) {
    let row = g.k * g.k * c;
    let mut out = vec![0f32; b * g.ho * g.wo * row];
    // One task per output row (sample, oi): it owns Wo consecutive column rows.
    out.par_chunks_mut((g.wo * row).max(1))
        .enumerate()
        .for_each(|(r, o)| {
            wide(
                #[inline(always)]
                || {
                    let (bi, oi) = (r / g.ho, r % g.ho);
                    for ki in 0..g.k {
                        let Some(ii) = g.cfg.src(oi, ki, h) else {
                            continue;
                        };
                        let xrow = &x[(bi * h + ii) * w * c..(bi * h + ii + 1) * w * c];
                        for oj in 0..g.wo {
                            for kj in 0..g.k {
                                if let Some(jj) = g.cfg.src(oj, kj, w) {
                                    let dst = oj * row + (ki * g.k + kj) * c;
                                    o[dst..dst + c].copy_from_slice(&xrow[jj * c..(jj + 1) * c]);
                                }
                            }
                        }
                    }
                },
            )
        });
    (out, Shape::from((b * g.ho * g.wo, row)))
}

/// Columns (B·Ho·Wo, k·k·C) → (B, H, W, C). Written as a gather (each task owns
/// one input row), so overlapping windows need no synchronisation.
fn col2im_nhwc(g: ColGeom, cols: &[f32], b: usize, c: usize) -> (Vec<f32>, Shape) {
    let row = g.k * g.k * c;
    let mut out = vec![0f32; b * g.h * g.w * c];
    out.par_chunks_mut((g.w * c).max(1))
        .enumerate()
        .for_each(|(r, dx)| {
            wide(
                #[inline(always)]
                || {
                    let (bi, ii) = (r / g.h, r % g.h);
                    for ki in 0..g.k {
                        let Some(oi) = g.cfg.dst(ii, ki, g.ho) else {
                            continue;
                        };
                        for jj in 0..g.w {
                            let d = &mut dx[jj * c..(jj + 1) * c];
                            for kj in 0..g.k {
                                if let Some(oj) = g.cfg.dst(jj, kj, g.wo) {
                                    let src =
                                        ((bi * g.ho + oi) * g.wo + oj) * row + (ki * g.k + kj) * c;
                                    for (dv, sv) in d.iter_mut().zip(&cols[src..src + c]) {
                                        *dv += *sv;
                                    }
                                }
                            }
                        }
                    }
                },
            )
        });
    (out, Shape::from((b, g.h, g.w, c)))
}
