//! Differentiable bilinear resize with PyTorch `align_corners=False` semantics.
//!
//! Candle's own `upsample_bilinear2d` has no backward, so it is never used here.
//! On the CPU the resize is a custom op (separable: along W, then along H; rayon
//! over the B·C planes) whose backward is a second custom op scattering the
//! output gradient back onto the four taps of every output pixel. Other devices use
//! [`resize_bilinear_composed`]: two matmuls with interpolation matrices, which
//! Candle differentiates itself.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, DType, Device, InplaceOp2, Layout, Result, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

use crate::simd::wide;

/// Source index and weights for one output coordinate, PyTorch
/// `upsample_bilinear2d(align_corners=False)` (`area_pixel_compute_source_index`):
/// `src = (dst + 0.5) · map − 0.5`, clamped at 0, where `map` is `in/out`
/// (`None`: a resize to a size) or `1/scale_factor` (a resize by a scale
/// factor, ATen `area_pixel_compute_scale`). Returns `(i0, i1, l1)`: the
/// output is `(1-l1)·x[i0] + l1·x[i1]`.
pub(crate) fn source_taps(
    out_len: usize,
    in_len: usize,
    map: Option<f64>,
) -> Vec<(usize, usize, f64)> {
    let scale = map.unwrap_or(in_len as f64 / out_len as f64);
    (0..out_len)
        .map(|d| {
            let src = ((d as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(in_len - 1);
            // PyTorch: `h1p = (h1 < in - 1) ? 1 : 0`, so the last row taps itself.
            let i1 = (i0 + 1).min(in_len - 1);
            (i0, i1, src - i0 as f64)
        })
        .collect()
}

/// `F.interpolate(x, scale_factor=s, mode='bilinear', align_corners=False)`
/// as PyTorch computes it: output `floor(H·s) × floor(W·s)`, and source
/// coordinates mapped with `1/s` (not with `in/out`, which differs when
/// `H·s` is not whole, e.g. 17 × 0.5). Differentiable with respect to `x`.
pub fn resize_bilinear_scale_factor(x: &Tensor, s: f64) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (out_h, out_w) = (
        (h as f64 * s).floor() as usize,
        (w as f64 * s).floor() as usize,
    );
    check_args(x, out_h, out_w)?;
    if !(s.is_finite() && s > 0.0) {
        candle_core::bail!("resize_bilinear_scale_factor: scale factor {s} must be finite and > 0");
    }
    let map = Some((1.0 / s, 1.0 / s));
    match (x.device(), x.dtype()) {
        (Device::Cpu, DType::F32 | DType::F64) => {
            x.contiguous()?
                .apply_op1(ResizeBilinear { out_h, out_w, map })
        }
        _ => resize_mapped_composed(x, out_h, out_w, map),
    }
}

/// Resize `x` (B, C, H, W) to (B, C, out_h, out_w), bilinear, `align_corners=False`
/// (PyTorch `F.interpolate(x, size=(out_h, out_w), mode='bilinear')`), for any
/// input and output sizes, up or down. Differentiable with respect to `x`.
///
/// f32 / f64 on the CPU run the custom kernel; everything else runs
/// [`resize_bilinear_composed`].
pub fn resize_bilinear(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (_, _, h, w) = check_args(x, out_h, out_w)?;
    if h == out_h && w == out_w {
        // Same size: PyTorch's taps are then exactly the identity.
        return Ok(x.clone());
    }
    match (x.device(), x.dtype()) {
        (Device::Cpu, DType::F32 | DType::F64) => x.contiguous()?.apply_op1(ResizeBilinear {
            out_h,
            out_w,
            map: None,
        }),
        _ => resize_bilinear_composed(x, out_h, out_w),
    }
}

/// Device-generic path of [`resize_bilinear`]: two matmuls with (out, in)
/// interpolation matrices, differentiated by Candle. Same semantics, slower on
/// the CPU than the custom kernel. Public so tests can compare both paths.
pub fn resize_bilinear_composed(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    resize_mapped_composed(x, out_h, out_w, None)
}

fn resize_mapped_composed(
    x: &Tensor,
    out_h: usize,
    out_w: usize,
    map: Option<(f64, f64)>,
) -> Result<Tensor> {
    let (b, c, h, w) = check_args(x, out_h, out_w)?;
    let n = b * c;
    let dtype = x.dtype();
    // wh: (out_h, h), ww: (out_w, w).
    let wh = interp_matrix(out_h, h, map.map(|m| m.0), dtype, x.device())?;
    let ww = interp_matrix(out_w, w, map.map(|m| m.1), dtype, x.device())?;
    // Width first, as one (N·h, w) x (w, out_w) product.
    let ww_t = ww.t()?.contiguous()?;
    let y = x.contiguous()?.reshape((n * h, w))?.matmul(&ww_t)?;
    // Height: (out_h, h) x (h, out_w) per plane, the matrix broadcast over N.
    let y = wh.broadcast_left(n)?.matmul(&y.reshape((n, h, out_w))?)?;
    y.reshape((b, c, out_h, out_w))
}

fn check_args(x: &Tensor, out_h: usize, out_w: usize) -> Result<(usize, usize, usize, usize)> {
    let dims = x.dims4().map_err(|_| {
        candle_core::Error::Msg(format!(
            "resize_bilinear: x must be (B, C, H, W), got shape {:?}",
            x.dims()
        ))
    })?;
    let (_, _, h, w) = dims;
    if h == 0 || w == 0 || out_h == 0 || out_w == 0 {
        candle_core::bail!(
            "resize_bilinear: sizes must be non-zero, got x {:?} -> ({out_h}, {out_w})",
            x.dims()
        );
    }
    Ok(dims)
}

/// Interpolation matrix (out_len, in_len): row d holds the two tap weights.
/// Built in f64 on the host so that the f64 path is exact, then cast to `dtype`
/// before moving to `device` (some devices have no f64).
fn interp_matrix(
    out_len: usize,
    in_len: usize,
    map: Option<f64>,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let mut m = vec![0f64; out_len * in_len];
    for (d, (i0, i1, l1)) in source_taps(out_len, in_len, map).into_iter().enumerate() {
        m[d * in_len + i0] += 1.0 - l1;
        m[d * in_len + i1] += l1;
    }
    Tensor::from_vec(m, (out_len, in_len), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)
}

/// Taps of one axis in the kernel's element type.
struct Taps<T> {
    i0: Vec<usize>,
    i1: Vec<usize>,
    l0: Vec<T>,
    l1: Vec<T>,
}

impl<T: WithDType> Taps<T> {
    fn new(out_len: usize, in_len: usize, map: Option<f64>) -> Self {
        let taps = source_taps(out_len, in_len, map);
        Self {
            i0: taps.iter().map(|t| t.0).collect(),
            i1: taps.iter().map(|t| t.1).collect(),
            l0: taps.iter().map(|t| T::from_f64(1.0 - t.2)).collect(),
            l1: taps.iter().map(|t| T::from_f64(t.2)).collect(),
        }
    }
}

/// Forward: (B, C, H, W) -> (B, C, out_h, out_w).
struct ResizeBilinear {
    out_h: usize,
    out_w: usize,
    /// Per-axis coordinate maps (h, w); `None`: in/out.
    map: Option<(f64, f64)>,
}

impl ResizeBilinear {
    /// Separable: each input row that some output row reads is first
    /// interpolated along W into `rows` (in_h, out_w), then every output row is a
    /// contiguous blend of two such rows.
    fn run<T: WithDType>(&self, x: &[T], dims: &[usize]) -> Vec<T> {
        let mut out = vec![T::zero(); dims[0] * dims[1] * self.out_h * self.out_w];
        self.blend_into(x, dims, &mut out, false);
        out
    }

    /// The resize of `x` (dimensions `dims`) written into `out` (B·C planes
    /// of out_h × out_w), or added to it when `accumulate`.
    fn blend_into<T: WithDType>(&self, x: &[T], dims: &[usize], out: &mut [T], accumulate: bool) {
        let (h, w) = (dims[2], dims[3]);
        let (oh, ow) = (self.out_h, self.out_w);
        let ty = Taps::<T>::new(oh, h, self.map.map(|m| m.0));
        let tx = Taps::<T>::new(ow, w, self.map.map(|m| m.1));
        let mut used = vec![false; h];
        for oy in 0..oh {
            used[ty.i0[oy]] = true;
            used[ty.i1[oy]] = true;
        }
        out.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each_init(
                || vec![T::zero(); h * ow],
                |rows, (dst, src)| {
                    wide(
                        #[inline(always)]
                        || {
                            for y in (0..h).filter(|&y| used[y]) {
                                let s = &src[y * w..][..w];
                                let r = &mut rows[y * ow..][..ow];
                                for (ox, v) in r.iter_mut().enumerate() {
                                    *v = tx.l0[ox] * s[tx.i0[ox]] + tx.l1[ox] * s[tx.i1[ox]];
                                }
                            }
                            for (oy, d) in dst.chunks_exact_mut(ow).enumerate() {
                                let r0 = &rows[ty.i0[oy] * ow..][..ow];
                                let r1 = &rows[ty.i1[oy] * ow..][..ow];
                                let (l0, l1) = (ty.l0[oy], ty.l1[oy]);
                                if accumulate {
                                    for ((d, &a), &b) in d.iter_mut().zip(r0).zip(r1) {
                                        *d += l0 * a + l1 * b;
                                    }
                                } else {
                                    for ((d, &a), &b) in d.iter_mut().zip(r0).zip(r1) {
                                        *d = l0 * a + l1 * b;
                                    }
                                }
                            }
                        },
                    )
                },
            );
    }
}

/// `acc += resize(x)` in `acc`'s storage (see [`resize_bilinear_accumulate`]).
struct ResizeBilinearAccumulate;

impl InplaceOp2 for ResizeBilinearAccumulate {
    fn name(&self) -> &'static str {
        "resize-bilinear-accumulate"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (da, dx) = (l1.dims(), l2.dims());
        if da.len() != 4 || dx.len() != 4 || da[..2] != dx[..2] {
            candle_core::bail!(
                "resize_bilinear_accumulate: acc {da:?} and x {dx:?} must be (B, C, …) alike"
            );
        }
        let op = ResizeBilinear {
            out_h: da[2],
            out_w: da[3],
            map: None,
        };
        let acc_dtype = s1.dtype();
        let (CpuStorage::F32(acc), CpuStorage::F32(x)) = (s1, s2) else {
            candle_core::bail!(
                "resize_bilinear_accumulate: expected f32 tensors, got {acc_dtype:?}"
            );
        };
        let (Some((a0, a1)), Some((x0, x1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("resize_bilinear_accumulate: expected contiguous tensors");
        };
        op.blend_into(&x[x0..x1], dx, &mut acc[a0..a1], true);
        Ok(())
    }
}

/// `acc += resize_bilinear(x, out_h, out_w)` with (out_h, out_w) the size of
/// `acc`, written into `acc`'s storage: one pass over `acc`, and no resized
/// copy of `x`. For f32 tensors on the CPU outside any autograd graph (an
/// evaluation forward), where `acc` is a tensor the caller owns and shares
/// with no other tensor; an error otherwise. Same values as `acc + resize(x)`.
pub(crate) fn resize_bilinear_accumulate(acc: &Tensor, x: &Tensor) -> Result<()> {
    let (_, _, oh, ow) = acc.dims4()?;
    check_args(x, oh, ow)?;
    if acc.track_op() || x.track_op() || !acc.is_contiguous() {
        candle_core::bail!(
            "resize_bilinear_accumulate: acc must be contiguous and outside any graph"
        );
    }
    acc.inplace_op2(&x.contiguous()?, &ResizeBilinearAccumulate)
}

impl CustomOp1 for ResizeBilinear {
    fn name(&self) -> &'static str {
        "resize-bilinear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.dims();
        let shape = Shape::from((dims[0], dims[1], self.out_h, self.out_w));
        let out = match storage.dtype() {
            DType::F32 => CpuStorage::F32(
                self.run(super::contiguous_slice(storage, layout, self.name())?, dims),
            ),
            DType::F64 => CpuStorage::F64(
                self.run(super::contiguous_slice(storage, layout, self.name())?, dims),
            ),
            dt => {
                candle_core::bail!("resize-bilinear: x must be f32 or f64 on the cpu, got {dt:?}")
            }
        };
        Ok((out, shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = arg.dims4()?;
        let grad = grad_res.contiguous()?.apply_op1(ResizeBilinearBwd {
            in_h: h,
            in_w: w,
            map: self.map,
        })?;
        Ok(Some(grad))
    }
}

/// Backward (the adjoint of the forward): output gradient (B, C, out_h, out_w)
/// -> input gradient (B, C, in_h, in_w). Each plane is owned by one task, so the
/// scatter-add needs no atomics.
struct ResizeBilinearBwd {
    in_h: usize,
    in_w: usize,
    map: Option<(f64, f64)>,
}

impl ResizeBilinearBwd {
    /// The forward's two passes transposed, in reverse order: output rows are
    /// accumulated into `rows` (in_h, out_w) with contiguous axpys, then each
    /// row is scattered along W onto the input taps.
    fn run<T: WithDType>(&self, g: &[T], dims: &[usize]) -> Vec<T> {
        let (oh, ow) = (dims[2], dims[3]);
        let (h, w) = (self.in_h, self.in_w);
        let ty = Taps::<T>::new(oh, h, self.map.map(|m| m.0));
        let tx = Taps::<T>::new(ow, w, self.map.map(|m| m.1));
        let mut used = vec![false; h];
        for oy in 0..oh {
            used[ty.i0[oy]] = true;
            used[ty.i1[oy]] = true;
        }
        let mut out = vec![T::zero(); dims[0] * dims[1] * h * w];
        out.par_chunks_mut(h * w)
            .zip(g.par_chunks(oh * ow))
            .for_each_init(
                || vec![T::zero(); h * ow],
                |rows, (dst, src)| {
                    wide(
                        #[inline(always)]
                        || {
                            rows.iter_mut().for_each(|v| *v = T::zero());
                            for (oy, gr) in src.chunks_exact(ow).enumerate() {
                                let (l0, l1) = (ty.l0[oy], ty.l1[oy]);
                                let r0 = &mut rows[ty.i0[oy] * ow..][..ow];
                                for (r, &v) in r0.iter_mut().zip(gr) {
                                    *r += l0 * v;
                                }
                                let r1 = &mut rows[ty.i1[oy] * ow..][..ow];
                                for (r, &v) in r1.iter_mut().zip(gr) {
                                    *r += l1 * v;
                                }
                            }
                            for y in (0..h).filter(|&y| used[y]) {
                                let r = &rows[y * ow..][..ow];
                                let d = &mut dst[y * w..][..w];
                                for (ox, &v) in r.iter().enumerate() {
                                    d[tx.i0[ox]] += tx.l0[ox] * v;
                                    d[tx.i1[ox]] += tx.l1[ox] * v;
                                }
                            }
                        },
                    )
                },
            );
        out
    }
}

impl CustomOp1 for ResizeBilinearBwd {
    fn name(&self) -> &'static str {
        "resize-bilinear-bwd"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.dims();
        let shape = Shape::from((dims[0], dims[1], self.in_h, self.in_w));
        let out = match storage.dtype() {
            DType::F32 => CpuStorage::F32(
                self.run(super::contiguous_slice(storage, layout, self.name())?, dims),
            ),
            DType::F64 => CpuStorage::F64(
                self.run(super::contiguous_slice(storage, layout, self.name())?, dims),
            ),
            dt => {
                candle_core::bail!("resize-bilinear-bwd: gradient must be f32 or f64, got {dt:?}")
            }
        };
        Ok((out, shape))
    }

    /// The op is linear, so its own backward is the forward resize.
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, oh, ow) = arg.dims4()?;
        let grad = grad_res.contiguous()?.apply_op1(ResizeBilinear {
            out_h: oh,
            out_w: ow,
            map: self.map,
        })?;
        Ok(Some(grad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `acc += resize(x)` in place gives the bits of `acc + resize(x)`, and
    /// refuses a tensor that is part of a graph.
    #[test]
    fn accumulate_in_place_equals_add_of_the_resize() {
        let dev = Device::Cpu;
        let acc = Tensor::randn(0f32, 1.0, (2, 3, 16, 20), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 7), &dev).unwrap();
        let want = (&acc + resize_bilinear(&x, 16, 20).unwrap()).unwrap();
        let owned = acc.copy().unwrap();
        resize_bilinear_accumulate(&owned, &x).unwrap();
        let bits = |t: &Tensor| {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(f32::to_bits)
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&owned), bits(&want));
        let v = candle_core::Var::from_tensor(&acc).unwrap();
        assert!(resize_bilinear_accumulate(v.as_tensor(), &x).is_err());
    }

    /// PyTorch maps a `scale_factor` resize with `1/s`: on a linear ramp
    /// `x[i][j] = 100 i + j` (which bilinear interpolation reproduces
    /// exactly) output (d, e) of a 17×17 → 8×8 resize at s = 0.5 reads
    /// `src = (d + 0.5) · 2 − 0.5 = 2d + 0.5`, so it is
    /// `100 (2d + 0.5) + 2e + 0.5`; the in/out map (17/8) would give other
    /// values. The gradient is checked against the composed form.
    #[test]
    fn scale_factor_resize_maps_coordinates_with_one_over_s() {
        let ramp: Vec<f64> = (0..17 * 17)
            .map(|k| (100 * (k / 17) + k % 17) as f64)
            .collect();
        let x = Tensor::from_vec(ramp, (1, 1, 17, 17), &Device::Cpu).unwrap();
        let y = resize_bilinear_scale_factor(&x, 0.5).unwrap();
        assert_eq!(y.dims(), [1, 1, 8, 8]);
        let y = y.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for d in 0..8 {
            for e in 0..8 {
                let want = 100.0 * (2.0 * d as f64 + 0.5) + 2.0 * e as f64 + 0.5;
                assert!(
                    (y[d * 8 + e] - want).abs() < 1e-9,
                    "({d}, {e}): {}",
                    y[d * 8 + e]
                );
            }
        }
        let composed = resize_mapped_composed(&x, 8, 8, Some((2.0, 2.0)))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert_eq!(y, composed);
        // Where H·s is whole the two maps agree.
        let x16 = x.narrow(2, 0, 16).unwrap().narrow(3, 0, 16).unwrap();
        let a = resize_bilinear_scale_factor(&x16, 0.5).unwrap();
        let b = resize_bilinear(&x16, 8, 8).unwrap();
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f64>().unwrap()
        );
        // The backward is the adjoint of the same map.
        let v = candle_core::Var::from_tensor(&x).unwrap();
        let g = resize_bilinear_scale_factor(v.as_tensor(), 0.5)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = g
            .get(v.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let total: f64 = g.iter().sum();
        assert!((total - 64.0).abs() < 1e-9, "{total}");
        // Rows 16 and columns 16 are never read at s = 0.5 on 17 rows.
        assert!((0..17).all(|j| g[16 * 17 + j] == 0.0 && g[j * 17 + 16] == 0.0));
    }

    #[test]
    fn taps_match_pytorch_formula() {
        // 2 -> 4 upscale: src = (d + 0.5) / 2 - 0.5 = -0.25 (clamped 0), 0.25, 0.75, 1.25.
        let t = source_taps(4, 2, None);
        assert_eq!(t[0], (0, 1, 0.0));
        assert_eq!(t[1], (0, 1, 0.25));
        assert_eq!(t[2], (0, 1, 0.75));
        // Last source row taps itself (i1 clamped).
        assert_eq!((t[3].0, t[3].1), (1, 1));
    }

    #[test]
    fn non_contiguous_input_matches_contiguous() -> Result<()> {
        let x = Tensor::arange(0f32, 2. * 3. * 5. * 4., &Device::Cpu)?.reshape((2, 3, 5, 4))?;
        // (B, C, W, H) viewed as (B, C, H, W): a transposed, non-contiguous tensor.
        let xt = x.transpose(2, 3)?;
        assert!(!xt.is_contiguous());
        let a = resize_bilinear(&xt, 7, 9)?;
        let b = resize_bilinear(&xt.contiguous()?, 7, 9)?;
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        Ok(())
    }

    #[test]
    fn custom_and_composed_agree_f64() -> Result<()> {
        let x = Tensor::randn(0f64, 1., (2, 2, 6, 5), &Device::Cpu)?;
        let a = resize_bilinear(&x, 11, 3)?;
        let b = resize_bilinear_composed(&x, 11, 3)?;
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-12, "f64 custom vs composed: {diff}");
        Ok(())
    }

    #[test]
    fn rejects_bad_shapes() {
        let x = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
        let err = resize_bilinear(&x, 2, 2).unwrap_err().to_string();
        assert!(err.contains("(B, C, H, W)"), "{err}");
        let x = Tensor::zeros((1, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(resize_bilinear(&x, 0, 2).is_err());
    }
}
