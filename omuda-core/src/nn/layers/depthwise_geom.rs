//! Window geometry of the stride-1 depthwise convolution, shared by its NCHW
//! and channels-last kernels: output sizes, each tap's valid output window
//! (so that the kernels need no padded copy of the input), and the two walks
//! over taps the kernels are built on.

use std::ops::Range;

use candle_core::{bail, Result};

use super::conv_cfg::ConvCfg;

/// Geometry of a stride-1 depthwise convolution: kernel size and the tap
/// geometry as a stride-1 [`ConvCfg`], whose index maps it shares.
#[derive(Debug, Clone, Copy)]
pub(super) struct DwGeom {
    pub(super) k: usize,
    pub(super) cfg: ConvCfg,
}

/// The valid output window of one tap over a (H, W) → (Ho, Wo) plane: output
/// (i, j) with i in [i0, i1), j in [j0, j1) reads input (i + di, j + dj).
#[derive(Debug, Clone, Copy)]
pub(super) struct TapWindow {
    /// Row-major index of the tap in the k×k kernel.
    pub(super) tap: usize,
    di: isize,
    dj: isize,
    i0: usize,
    i1: usize,
    j0: usize,
    j1: usize,
    /// Widths of the input and output planes.
    w: usize,
    wo: usize,
}

impl TapWindow {
    /// For each output row of the window, in order: the input-plane range it
    /// reads and the output-plane range it writes.
    #[inline(always)]
    pub(super) fn rows(self) -> impl Iterator<Item = (Range<usize>, Range<usize>)> {
        (self.i0..self.i1).map(move |i| {
            let src = ((i as isize + self.di) as usize) * self.w;
            (
                (src as isize + self.j0 as isize + self.dj) as usize
                    ..(src as isize + self.j1 as isize + self.dj) as usize,
                i * self.wo + self.j0..i * self.wo + self.j1,
            )
        })
    }
}

impl DwGeom {
    pub(super) fn new(k: usize, padding: usize, dilation: usize) -> Self {
        let cfg = ConvCfg {
            stride: 1,
            padding,
            dilation,
        };
        Self { k, cfg }
    }

    pub(super) fn out_size(&self, n: usize) -> Result<usize> {
        let (padding, dilation) = (self.cfg.padding, self.cfg.dilation);
        let span = dilation * (self.k - 1);
        match (n + 2 * padding).checked_sub(span) {
            Some(o) if o > 0 => Ok(o),
            _ => bail!(
                "depthwise conv: input size {n} too small for kernel {} dilation {} padding {}",
                self.k,
                dilation,
                padding
            ),
        }
    }

    /// For tap `t` with input offset `off = t·d − p`: output index range whose
    /// input index `o + off` lies in [0, n_in).
    #[inline(always)]
    fn valid(&self, t: usize, n_in: usize, n_out: usize) -> (isize, usize, usize) {
        let off = (t * self.cfg.dilation) as isize - self.cfg.padding as isize;
        let lo = (-off).max(0) as usize;
        let hi = ((n_in as isize - off).max(0) as usize).min(n_out);
        (off, lo, hi.max(lo))
    }

    /// NCHW walk of one plane: calls `f` with the window of every tap (in
    /// row-major order) whose valid output window is not empty.
    #[inline(always)]
    pub(super) fn for_each_tap(
        &self,
        h: usize,
        w: usize,
        ho: usize,
        wo: usize,
        mut f: impl FnMut(TapWindow),
    ) {
        for ki in 0..self.k {
            let (di, i0, i1) = self.valid(ki, h, ho);
            if i0 >= i1 {
                continue;
            }
            for kj in 0..self.k {
                let (dj, j0, j1) = self.valid(kj, w, wo);
                if j0 < j1 {
                    f(TapWindow {
                        tap: ki * self.k + kj,
                        di,
                        dj,
                        i0,
                        i1,
                        j0,
                        j1,
                        w,
                        wo,
                    });
                }
            }
        }
    }

    /// Channels-last walk of one row of the map: for every kernel row `ki` for
    /// which `row(ki)` gives the row of the other map (input row for an output
    /// row, or the reverse), every kernel column, and every output column `oj`
    /// whose input column `jj` lies in [0, w): `f(tap, row, oj, jj)`, in that
    /// nesting order (taps row-major, columns ascending).
    #[inline(always)]
    pub(super) fn for_each_nhwc_tap(
        &self,
        w: usize,
        wo: usize,
        row: impl Fn(usize) -> Option<usize>,
        mut f: impl FnMut(usize, usize, usize, usize),
    ) {
        for ki in 0..self.k {
            let Some(r) = row(ki) else { continue };
            for kj in 0..self.k {
                let (dj, j0, j1) = self.valid(kj, w, wo);
                for oj in j0..j1 {
                    f(ki * self.k + kj, r, oj, (oj as isize + dj) as usize);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depthwise_geometry_windows() {
        let g = DwGeom::new(3, 2, 2);
        assert_eq!(g.out_size(6).unwrap(), 6);
        // Tap 0 reads input o − 2: valid for outputs 2..6.
        assert_eq!(g.valid(0, 6, 6), (-2, 2, 6));
        assert_eq!(g.valid(2, 6, 6), (2, 0, 4));
        assert!(DwGeom::new(5, 0, 1).out_size(3).is_err());
    }
}
