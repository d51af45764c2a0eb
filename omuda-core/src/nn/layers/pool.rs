//! 2-D max-pooling with padding and any stride, with a backward pass (Candle's
//! `max_pool2d` has no padding argument and no backward unless kernel == stride;
//! the ResNet stem needs 3x3 / stride 2 / padding 1).
//!
//! Semantics of PyTorch `F.max_pool2d(x, k, s, p)` with `ceil_mode=False`:
//! padding acts as −∞, the output is `floor((H + 2p − k) / s) + 1` per side, and
//! the gradient of each output goes to the first maximum of its window in
//! row-major order.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::{dims4, f32_data, use_cpu_kernels};
use crate::simd::wide;

/// Window geometry of a square max-pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PoolGeom {
    k: usize,
    stride: usize,
    pad: usize,
}

impl PoolGeom {
    /// Output length for an input of length `n`.
    fn out_len(&self, n: usize) -> Result<usize> {
        let span = n + 2 * self.pad;
        if span < self.k {
            bail!(
                "max_pool2d: input side {n} with padding {} is smaller than the kernel {}",
                self.pad,
                self.k
            );
        }
        Ok((span - self.k) / self.stride + 1)
    }

    /// Input indices [lo, hi) read by output index `o` (clipped to the input).
    #[inline(always)]
    fn window(&self, o: usize, n: usize) -> (usize, usize) {
        let start = (o * self.stride) as isize - self.pad as isize;
        let lo = start.max(0) as usize;
        let hi = ((start + self.k as isize).max(0) as usize).min(n);
        (lo, hi)
    }

    /// Flat index (within one h×w plane) of the first maximum of the window of
    /// output (oy, ox).
    #[inline(always)]
    fn argmax(&self, plane: &[f32], h: usize, w: usize, oy: usize, ox: usize) -> usize {
        let (y0, y1) = self.window(oy, h);
        let (x0, x1) = self.window(ox, w);
        let mut best = y0 * w + x0;
        let mut best_v = f32::NEG_INFINITY;
        let mut first = true;
        for y in y0..y1 {
            for x in x0..x1 {
                let v = plane[y * w + x];
                // NaN propagates like PyTorch's kernel (`val > max || isnan(val)`).
                if first || v > best_v || v.is_nan() {
                    best = y * w + x;
                    best_v = v;
                    first = false;
                    if v.is_nan() {
                        return best;
                    }
                }
            }
        }
        best
    }
}

struct MaxPoolOp(PoolGeom);

impl CustomOp1 for MaxPoolOp {
    fn name(&self) -> &'static str {
        "max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, "max_pool2d input")?;
        let (b, c, h, w) = dims4(l, "max_pool2d input")?;
        let g = self.0;
        let (ho, wo) = (g.out_len(h)?, g.out_len(w)?);
        let mut out = vec![0f32; b * c * ho * wo];
        if ho * wo > 0 {
            out.par_chunks_mut(ho * wo)
                .zip(x.par_chunks(h * w))
                .for_each(|(o, plane)| {
                    wide(
                        #[inline(always)]
                        || {
                            for oy in 0..ho {
                                for ox in 0..wo {
                                    o[oy * wo + ox] = plane[g.argmax(plane, h, w, oy, ox)];
                                }
                            }
                        },
                    )
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((b, c, ho, wo))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(
            &grad.contiguous()?,
            &MaxPoolBwd(self.0),
        )?))
    }
}

/// (x, dL/dy) → dL/dx: each output gradient goes to its window's first maximum.
struct MaxPoolBwd(PoolGeom);

impl CustomOp2 for MaxPoolBwd {
    fn name(&self) -> &'static str {
        "max-pool2d-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, "max_pool2d input")?;
        let gy = f32_data(s2, l2, "max_pool2d output gradient")?;
        let (b, c, h, w) = dims4(l1, "max_pool2d input")?;
        let g = self.0;
        let (ho, wo) = (g.out_len(h)?, g.out_len(w)?);
        if l2.dims() != [b, c, ho, wo] {
            bail!(
                "max_pool2d backward: gradient {:?} does not match output ({b}, {c}, {ho}, {wo})",
                l2.dims()
            );
        }
        let mut out = vec![0f32; b * c * h * w];
        if h * w > 0 && ho * wo > 0 {
            out.par_chunks_mut(h * w)
                .zip(x.par_chunks(h * w))
                .zip(gy.par_chunks(ho * wo))
                .for_each(|((o, plane), gp)| {
                    wide(
                        #[inline(always)]
                        || {
                            for oy in 0..ho {
                                for ox in 0..wo {
                                    o[g.argmax(plane, h, w, oy, ox)] += gp[oy * wo + ox];
                                }
                            }
                        },
                    )
                });
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Max-pooling of (B, C, H, W) with a square `kernel`, `stride` and zero-cost
/// `padding` (padded positions never win). Fused CPU kernels in f32; composed
/// Candle ops (index selects and element-wise maxima) elsewhere.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    if kernel == 0 || stride == 0 || padding * 2 > kernel {
        bail!("max_pool2d: invalid kernel {kernel}, stride {stride}, padding {padding} (padding must be at most half the kernel)");
    }
    let geom = PoolGeom {
        k: kernel,
        stride,
        pad: padding,
    };
    x.dims4()?;
    if use_cpu_kernels(x, &[]) {
        return x.contiguous()?.apply_op1(MaxPoolOp(geom));
    }
    max_pool2d_composed(x, kernel, stride, padding)
}

/// The same function from differentiable Candle ops: pad with the lowest finite
/// value, pick each tap's strided rows and columns with `index_select`, take the
/// element-wise maximum. Ties split the gradient (Candle's `maximum` backward),
/// which PyTorch gives to the first maximum; the reference for tests.
pub fn max_pool2d_composed(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let geom = PoolGeom {
        k: kernel,
        stride,
        pad: padding,
    };
    let (ho, wo) = (geom.out_len(h)?, geom.out_len(w)?);
    let low = match x.dtype() {
        DType::F64 => f64::MIN,
        _ => f32::MIN as f64,
    };
    let xp = if padding > 0 {
        let fill_rows = Tensor::full(low, (b, c, padding, w), x.device())?.to_dtype(x.dtype())?;
        let xr = Tensor::cat(&[&fill_rows, x, &fill_rows], 2)?;
        let fill_cols =
            Tensor::full(low, (b, c, h + 2 * padding, padding), x.device())?.to_dtype(x.dtype())?;
        Tensor::cat(&[&fill_cols, &xr, &fill_cols], 3)?
    } else {
        x.clone()
    };
    let mut out: Option<Tensor> = None;
    for ki in 0..kernel {
        let rows: Vec<u32> = (0..ho).map(|o| (o * stride + ki) as u32).collect();
        let rows = Tensor::new(rows.as_slice(), x.device())?;
        let xr = xp.index_select(&rows, 2)?;
        for kj in 0..kernel {
            let cols: Vec<u32> = (0..wo).map(|o| (o * stride + kj) as u32).collect();
            let cols = Tensor::new(cols.as_slice(), x.device())?;
            let tap = xr.index_select(&cols, 3)?;
            out = Some(match out {
                Some(acc) => acc.maximum(&tap)?,
                None => tap,
            });
        }
    }
    match out {
        Some(o) => Ok(o),
        None => bail!("max_pool2d: empty kernel"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{close, f32, f64, randn};
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_matches_composed_forward_and_backward() {
        for &(h, w, k, s, p) in &[
            (9usize, 8usize, 3usize, 2usize, 1usize),
            (7, 7, 2, 2, 0),
            (6, 5, 3, 1, 1),
        ] {
            let x = Var::from_tensor(&randn(&[2, 3, h, w])).unwrap();
            let y = max_pool2d(x.as_tensor(), k, s, p).unwrap();
            let xd = Var::from_tensor(&f64(x.as_tensor())).unwrap();
            let yd = max_pool2d_composed(xd.as_tensor(), k, s, p).unwrap();
            close(&f32(&yd), &y, 1e-7, "max_pool2d forward");
            let g = randn(y.dims());
            let gx = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let gxd = (yd * f64(&g))
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            close(
                &f32(gxd.get(xd.as_tensor()).unwrap()),
                gx.get(x.as_tensor()).unwrap(),
                1e-6,
                "max_pool2d backward",
            );
        }
    }

    #[test]
    fn first_maximum_gets_the_gradient_and_padding_never_wins() {
        // All-equal negative input: padding (−∞) must not win, ties go to the first element.
        let x =
            Var::from_tensor(&Tensor::full(-1f32, (1, 1, 3, 3), &Device::Cpu).unwrap()).unwrap();
        let y = max_pool2d(x.as_tensor(), 3, 2, 1).unwrap();
        assert_eq!(y.dims(), &[1, 1, 2, 2]);
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![-1.0; 4]
        );
        let g = y.sum_all().unwrap().backward().unwrap();
        let gx = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // Windows start at (0,0), (0,1), (1,0), (1,1) of the unpadded input.
        assert_eq!(gx, vec![1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    }
}
