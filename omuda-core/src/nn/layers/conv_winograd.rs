//! Winograd F(4×4, 3×3): the forward of stride-1, undilated 3x3 convolutions
//! of NCHW maps, in a quarter of the multiply-adds.
//!
//! Each 4×4 output tile is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` over its 6×6 input
//! patch `d`, summed over the input channels (Lavin & Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2016; interpolation points 0, ±1, ±2, ∞).
//! The sum over channels at each of the 36 transformed positions ξ is a GEMM,
//! `M[ξ] (O × tiles) = U[ξ] (O × C) · V[ξ] (C × tiles)`: 36 multiply-adds per
//! tile and channel pair instead of the 144 of the direct sum (`conv_shift`).
//! DAFormer's fusion bottleneck (a 3x3 convolution from 1280 to 256 channels on
//! the ¼-resolution map) is 38 % of MiT-B5 + DAFormer's forward FLOPs.
//!
//! The result equals the direct sum up to rounding: the transforms scale the
//! values by small integers and fractions, so the error is a few times the
//! direct sum's (the tests bound it against an f64 reference). The backward
//! is the shifted GEMMs' (`conv_shift::backward`).

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv_cfg::ConvCfg;
use super::conv_shift;
use super::cpu::{gemm_into_on, par_fill, Parallelism};
use crate::simd::wide;

/// Transformed positions per tile (6 × 6).
const XI: usize = 36;

/// Bytes of transformed input (V) held at once: tiles are transformed and
/// multiplied in blocks of whole tile rows of about this size.
const BLOCK_BYTES: usize = 48 << 20;

/// True when this kernel applies and pays: a 3x3 kernel at stride 1 without
/// dilation, with enough channels on both sides for the GEMMs to dominate
/// the transforms.
pub(super) fn applies(k: usize, cfg: ConvCfg, in_c: usize, out_c: usize) -> bool {
    k == 3 && cfg.stride == 1 && cfg.dilation == 1 && in_c >= 32 && out_c >= 32
}

/// Geometry of one Winograd convolution.
#[derive(Debug, Clone, Copy)]
struct Geom {
    b: usize,
    c: usize,
    o: usize,
    h: usize,
    w: usize,
    p: usize,
    ho: usize,
    wo: usize,
    /// Tile rows and tiles per row.
    th: usize,
    tw: usize,
}

impl Geom {
    fn new(x: (usize, usize, usize, usize), o: usize, cfg: ConvCfg) -> Result<Self> {
        let (b, c, h, w) = x;
        let p = cfg.padding;
        if h == 0 || w == 0 || h + 2 * p < 3 || w + 2 * p < 3 {
            bail!("conv2d: input {h}x{w} too small for a 3x3 kernel with {cfg:?}");
        }
        let (ho, wo) = (h + 2 * p - 2, w + 2 * p - 2);
        Ok(Self {
            b,
            c,
            o,
            h,
            w,
            p,
            ho,
            wo,
            th: ho.div_ceil(4),
            tw: wo.div_ceil(4),
        })
    }

    /// Tile rows per block (at least one).
    fn rows_per_block(&self) -> usize {
        let row_bytes = self.c * XI * self.tw * std::mem::size_of::<f32>();
        (BLOCK_BYTES / row_bytes).clamp(1, self.th)
    }
}

/// `Bᵀ v` for one 6-vector of an input patch.
#[inline(always)]
fn input_1d(v: [f32; 6]) -> [f32; 6] {
    [
        4.0 * v[0] - 5.0 * v[2] + v[4],
        -4.0 * v[1] - 4.0 * v[2] + v[3] + v[4],
        4.0 * v[1] - 4.0 * v[2] - v[3] + v[4],
        -2.0 * v[1] - v[2] + 2.0 * v[3] + v[4],
        2.0 * v[1] - v[2] - 2.0 * v[3] + v[4],
        4.0 * v[1] - 5.0 * v[3] + v[5],
    ]
}

/// `Aᵀ m` for one 6-vector of a transformed output tile.
#[inline(always)]
fn output_1d(m: [f32; 6]) -> [f32; 4] {
    [
        m[0] + m[1] + m[2] + m[3] + m[4],
        m[1] - m[2] + 2.0 * (m[3] - m[4]),
        m[1] + m[2] + 4.0 * (m[3] + m[4]),
        m[1] - m[2] + 8.0 * (m[3] - m[4]) + m[5],
    ]
}

/// `G g` for one 3-vector of a kernel, in f64 (the weight is transformed once
/// per call, so its rounding can be the best).
fn weight_1d(g: [f64; 3]) -> [f64; 6] {
    [
        g[0] / 4.0,
        -(g[0] + g[1] + g[2]) / 6.0,
        -(g[0] - g[1] + g[2]) / 6.0,
        g[0] / 24.0 + g[1] / 12.0 + g[2] / 6.0,
        g[0] / 24.0 - g[1] / 12.0 + g[2] / 6.0,
        g[2],
    ]
}

/// Weight (O, C, 3, 3) → U laid out (O, ξ, C): `U[ξ]` is the (O × C) matrix
/// with row stride 36·C at offset ξ·C.
fn transform_weight(g: &Geom, w: &[f32]) -> Vec<f32> {
    par_fill(g.o * XI * g.c, XI * g.c, |start, uo| {
        let oi = start / (XI * g.c);
        let wo = &w[oi * g.c * 9..(oi + 1) * g.c * 9];
        for (ci, kernel) in wo.chunks(9).enumerate() {
            let k = |i: usize, j: usize| f64::from(kernel[i * 3 + j]);
            // G g: 6 × 3, then (G g) Gᵀ: 6 × 6.
            let cols: [[f64; 6]; 3] =
                std::array::from_fn(|j| weight_1d([k(0, j), k(1, j), k(2, j)]));
            for r in 0..6 {
                let row = weight_1d([cols[0][r], cols[1][r], cols[2][r]]);
                for (s, v) in row.into_iter().enumerate() {
                    uo[(r * 6 + s) * g.c + ci] = v as f32;
                }
            }
        }
    })
}

/// Tiles transformed together, side by side in the lanes of one vector: the
/// transforms' arithmetic runs on 16 tiles at once, and each transformed value
/// is stored for 16 consecutive tiles with one contiguous write.
const LANES: usize = 16;

/// One value of `LANES` consecutive tiles.
type Lanes = [f32; LANES];

/// `f` (a 1-d transform, [`input_1d`] or [`output_1d`]) of every lane: the
/// same operations as on one tile, lane by lane.
#[inline(always)]
fn per_lane<const K: usize>(
    v: [&Lanes; 6],
    f: impl Fn([f32; 6]) -> [f32; K],
    out: &mut [Lanes; K],
) {
    for l in 0..LANES {
        let r = f(std::array::from_fn(|a| v[a][l]));
        for (o, rv) in out.iter_mut().zip(r) {
            o[l] = rv;
        }
    }
}

/// `dst[..n] = src[..n]` for `n` ≤ `N`: a copy of the constant length `N`
/// (inlined vector moves) when `n` is `N`, as it is for all but a row's last
/// group of tiles; a variable-length copy is a `memmove` call.
#[inline(always)]
fn copy_prefix<const N: usize>(dst: &mut [f32], src: &[f32], n: usize) {
    if n == N {
        dst[..N].copy_from_slice(&src[..N]);
    } else {
        dst[..n].copy_from_slice(&src[..n]);
    }
}

/// Input tiles of tile rows `rows` of image `x` (C, H, W) → V laid out
/// (C, ξ, tiles): `V[ξ]` is the (C × tiles) matrix with row stride 36·tiles.
fn transform_input(g: &Geom, x: &[f32], rows: std::ops::Range<usize>, v: &mut [f32]) {
    let nt = rows.len() * g.tw;
    // Padded to whole groups of LANES tiles, so that every group reads in range.
    let sw = 4 * g.tw.next_multiple_of(LANES) + 2;
    v.par_chunks_mut(XI * nt)
        .zip(x.par_chunks(g.h * g.w))
        .for_each(|(vc, xc)| {
            wide(|| {
                // Six padded input rows of one tile row, zero outside the image.
                let mut strip = vec![0f32; 6 * sw];
                for (bi, ti) in rows.clone().enumerate() {
                    strip.fill(0.0);
                    for a in 0..6 {
                        let Some(r) = (4 * ti + a).checked_sub(g.p).filter(|&r| r < g.h) else {
                            continue;
                        };
                        // Padded column s holds image column s − p.
                        let src = &xc[r * g.w..(r + 1) * g.w];
                        strip[a * sw + g.p..a * sw + g.p + g.w].copy_from_slice(src);
                    }
                    for tj0 in (0..g.tw).step_by(LANES) {
                        let n = LANES.min(g.tw - tj0);
                        // d[a][e][l]: row a, column e of the patch of tile tj0 + l.
                        let mut d = [[[0f32; LANES]; 6]; 6];
                        for (a, da) in d.iter_mut().enumerate() {
                            let row = &strip[a * sw + 4 * tj0..];
                            for (e, dae) in da.iter_mut().enumerate() {
                                for (l, v) in dae.iter_mut().enumerate() {
                                    *v = row[4 * l + e];
                                }
                            }
                        }
                        // Bᵀ d: transform the columns, then (Bᵀ d) B the rows.
                        // (Arrays written in place: returned by value, they are
                        // copied with `memmove` calls.)
                        let mut cols = [[[0f32; LANES]; 6]; 6];
                        for (e, col) in cols.iter_mut().enumerate() {
                            per_lane(std::array::from_fn(|a| &d[a][e]), input_1d, col);
                        }
                        let t0 = bi * g.tw + tj0;
                        let mut out = [[0f32; LANES]; 6];
                        for r in 0..6 {
                            per_lane(std::array::from_fn(|e| &cols[e][r]), input_1d, &mut out);
                            for (s, lanes) in out.iter().enumerate() {
                                copy_prefix::<LANES>(&mut vc[(r * 6 + s) * nt + t0..], lanes, n);
                            }
                        }
                    }
                }
            })
        });
}

/// Transformed products M laid out (ξ, O, tiles) → output tiles of tile rows
/// `rows` in the image's output planes `y` (O, Ho, Wo).
fn transform_output(g: &Geom, m: &[f32], rows: std::ops::Range<usize>, y: &mut [f32]) {
    let nt = rows.len() * g.tw;
    y.par_chunks_mut(g.ho * g.wo)
        .enumerate()
        .for_each(|(oi, yo)| {
            wide(|| {
                for (bi, ti) in rows.clone().enumerate() {
                    for tj0 in (0..g.tw).step_by(LANES) {
                        let n = LANES.min(g.tw - tj0);
                        let t0 = bi * g.tw + tj0;
                        let mut mv = [[0f32; LANES]; XI];
                        for (xi, lanes) in mv.iter_mut().enumerate() {
                            copy_prefix::<LANES>(lanes, &m[(xi * g.o + oi) * nt + t0..], n);
                        }
                        // Aᵀ M: 4 × 6, then (Aᵀ M) A: 4 × 4.
                        let mut cols = [[[0f32; LANES]; 4]; 6];
                        for (s, col) in cols.iter_mut().enumerate() {
                            per_lane(std::array::from_fn(|r| &mv[r * 6 + s]), output_1d, col);
                        }
                        let mut out = [[0f32; LANES]; 4];
                        let x0 = 4 * tj0;
                        let len = (g.wo - x0).min(4 * LANES);
                        for (i, yr) in (4 * ti..g.ho.min(4 * ti + 4)).enumerate() {
                            per_lane(std::array::from_fn(|s| &cols[s][i]), output_1d, &mut out);
                            // Tile l's four values are columns 4·(tj0 + l) + 0..4.
                            let mut row = [0f32; 4 * LANES];
                            for (l, quad) in row.chunks_exact_mut(4).enumerate() {
                                for (k, v) in quad.iter_mut().enumerate() {
                                    *v = out[k][l];
                                }
                            }
                            copy_prefix::<{ 4 * LANES }>(&mut yo[yr * g.wo + x0..], &row, len);
                        }
                    }
                }
            })
        });
}

/// Forward: (B, C, H, W) ⊛ (O, C, 3, 3) → (B, O, Ho, Wo), stride 1, no dilation.
pub(super) struct ConvWinograd {
    pub(super) cfg: ConvCfg,
}

impl CustomOp2 for ConvWinograd {
    fn name(&self) -> &'static str {
        "conv2d-winograd"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, x_dims, (o, _, k, k2)) = conv_shift::dense_operands(xs, xl, ws, wl)?;
        if self.cfg.stride != 1 || self.cfg.dilation != 1 || (k, k2) != (3, 3) {
            bail!(
                "conv2d-winograd: needs a 3x3 kernel at stride 1 without dilation, got weight {:?} with {:?}",
                wl.dims(),
                self.cfg
            );
        }
        let g = Geom::new(x_dims, o, self.cfg)?;
        let u = transform_weight(&g, w);
        let rows_per_block = g.rows_per_block();
        let block = rows_per_block * g.tw;
        // Zeroed in parallel, chunk by chunk (each is overwritten in full).
        let mut v = par_fill(g.c * XI * block, XI * block, |_, _| {});
        let mut m = par_fill(XI * g.o * block, g.o * block, |_, _| {});
        let mut y = par_fill(g.b * g.o * g.ho * g.wo, g.ho * g.wo, |_, _| {});
        for (xb, yb) in x
            .chunks(g.c * g.h * g.w)
            .zip(y.chunks_mut(g.o * g.ho * g.wo))
        {
            for r0 in (0..g.th).step_by(rows_per_block) {
                let rows = r0..(r0 + rows_per_block).min(g.th);
                let nt = rows.len() * g.tw;
                let v = &mut v[..g.c * XI * nt];
                let m = &mut m[..XI * g.o * nt];
                transform_input(&g, xb, rows.clone(), v);
                let v: &[f32] = v;
                // 36 independent GEMMs, one per task.
                m.par_chunks_mut(g.o * nt).enumerate().for_each(|(xi, mx)| {
                    gemm_into_on(
                        Parallelism::None,
                        g.o,
                        nt,
                        g.c,
                        mx,
                        nt,
                        false,
                        &u[xi * g.c..],
                        (XI * g.c) as isize,
                        1,
                        &v[xi * nt..],
                        (XI * nt) as isize,
                        1,
                    )
                });
                transform_output(&g, m, rows, yb);
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((g.b, g.o, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        conv_shift::backward(self.cfg, x, w, grad)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{close, f64, randn};
    use super::*;
    use candle_core::{DType, Var};

    /// Values against an f64 direct convolution (Candle's), for padding 0, 1
    /// and 2 and output sizes that are and are not multiples of the 4×4 tile,
    /// over more than one tile-row block; gradients against the shifted GEMMs.
    #[test]
    fn matches_direct_convolution() {
        for (b, c, o, h, w, p) in [
            (2, 5, 3, 9, 7, 1),
            (1, 4, 6, 8, 8, 0),
            (2, 3, 2, 6, 11, 2),
            (1, 2, 3, 3, 3, 0),
        ] {
            let cfg = ConvCfg {
                stride: 1,
                padding: p,
                dilation: 1,
            };
            let x = Var::from_tensor(&randn(&[b, c, h, w])).unwrap();
            let wt = Var::from_tensor(&randn(&[o, c, 3, 3])).unwrap();
            let y = x
                .as_tensor()
                .apply_op2(wt.as_tensor(), ConvWinograd { cfg })
                .unwrap();
            let y_ref = f64(x.as_tensor())
                .conv2d(&f64(wt.as_tensor()), p, 1, 1, 1)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let what = format!("b{b} c{c} o{o} {h}x{w} p{p}");
            assert_eq!(y.dims(), y_ref.dims(), "{what}: shape");
            close(&y, &y_ref, 1e-5, &format!("{what}: forward"));
            let gy = randn(y.dims());
            let g = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            let y_shift = x
                .as_tensor()
                .apply_op2(wt.as_tensor(), conv_shift::ConvShift { cfg })
                .unwrap();
            let g_ref = (y_shift * &gy)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (v, name) in [(&x, "input"), (&wt, "weight")] {
                close(
                    g.get(v).unwrap(),
                    g_ref.get(v).unwrap(),
                    1e-6,
                    &format!("{what}: d{name}"),
                );
            }
        }
    }

    /// An empty or too small map is an error naming the sizes, not a panic.
    #[test]
    fn too_small_input_is_an_error() {
        let cfg = ConvCfg {
            stride: 1,
            padding: 2,
            dilation: 1,
        };
        for (h, w) in [(0, 5), (5, 0)] {
            let x = Tensor::zeros((1, 32, h, w), DType::F32, &candle_core::Device::Cpu).unwrap();
            let wt = randn(&[32, 32, 3, 3]);
            let err = x
                .apply_op2(&wt, ConvWinograd { cfg })
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("{h}x{w}")), "{err}");
        }
    }

    /// A block smaller than the image: the tile rows are transformed and
    /// multiplied in several blocks, with the same result.
    #[test]
    fn several_blocks_match_one() {
        let g = Geom::new((1, 2000, 64, 64), 8, ConvCfg::default()).unwrap();
        assert!(g.rows_per_block() < g.th, "the test needs several blocks");
        let cfg = ConvCfg {
            stride: 1,
            padding: 1,
            dilation: 1,
        };
        let x = randn(&[1, 2000, 64, 64]);
        let wt = (randn(&[8, 2000, 3, 3]) * 0.05).unwrap();
        let y = x.apply_op2(&wt, ConvWinograd { cfg }).unwrap();
        let y_ref = f64(&x)
            .conv2d(&f64(&wt), 1, 1, 1, 1)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        // Over 18 000 products per output the transforms' rounding adds up to
        // about 1e-5 of the largest output (the direct sum's is 4e-7 here).
        close(&y, &y_ref, 5e-5, "several blocks");
    }
}
