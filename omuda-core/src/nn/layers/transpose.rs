//! The transposed copy of the last two dimensions, (…, A, B) → (…, B, A)
//! contiguous: tokens (B, N, C) to channels-first maps (B, C, N), a
//! convolution weight (O, C, k²) to the (O, k², C) order of channels-last
//! columns, and back in the backward pass.
//!
//! Candle's `contiguous()` of a transposed view copies element by element
//! through a strided index (its inner stride is not 1, so there is no block to
//! copy); in a MiT-B0 evaluation forward those copies were about 4 % of the
//! time. This op copies in square tiles, so that each tile's reads and writes
//! stay in the cache lines they touch. The values are the same bits.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, D};

use super::cpu::{f32_data, par_fill, rows_per_task, use_cpu_kernels};
use crate::simd::wide;

/// Side of the square tiles: 16 × 4 bytes, one cache line per tile row.
const TILE: usize = 16;

/// `x` (…, A, B) → contiguous (…, B, A), with a backward pass (the same op on
/// the gradient). The tiled CPU copy for f32 on the CPU; Candle's transposed
/// `contiguous()` elsewhere.
pub fn transpose_last2(x: &Tensor) -> Result<Tensor> {
    if x.rank() < 2 {
        candle_core::bail!(
            "transpose_last2: expected at least 2 dimensions, got {:?}",
            x.dims()
        );
    }
    if use_cpu_kernels(x, &[]) {
        return x.contiguous()?.apply_op1(TransposeLast2);
    }
    x.transpose(D::Minus2, D::Minus1)?.contiguous()
}

struct TransposeLast2;

impl CustomOp1 for TransposeLast2 {
    fn name(&self) -> &'static str {
        "transpose-last2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, "transpose_last2 input")?;
        let dims = l.dims();
        let (a, b) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let mut out_dims = dims.to_vec();
        out_dims.swap(dims.len() - 2, dims.len() - 1);
        Ok((
            CpuStorage::F32(transpose_slices(x, a, b)),
            Shape::from(out_dims),
        ))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        transpose_last2(grad).map(Some)
    }
}

/// `x`, a stack of row-major (a × b) matrices, as the stack of their
/// transposes (b × a). Tasks take whole output rows.
fn transpose_slices(x: &[f32], a: usize, b: usize) -> Vec<f32> {
    if a == 0 || b == 0 {
        return Vec::new();
    }
    let rows_per = rows_per_task(a).max(TILE);
    par_fill(x.len(), rows_per * a, |start, out| {
        wide(
            #[inline(always)]
            || {
                // Output rows [r0, r0 + rows): row r is column (r mod b) of
                // matrix r / b. Walk them matrix by matrix, tile by tile.
                let (r0, rows) = (start / a, out.len() / a);
                let mut r = r0;
                while r < r0 + rows {
                    let (m, j0) = (r / b, r % b);
                    let j1 = b.min(j0 + (r0 + rows - r));
                    let src = &x[m * a * b..(m + 1) * a * b];
                    let dst = &mut out[(r - r0) * a..(r - r0 + j1 - j0) * a];
                    transpose_block(src, dst, a, b, j0, j1);
                    r += j1 - j0;
                }
            },
        )
    })
}

/// Columns j0..j1 of the row-major (a × b) matrix `src` into `dst`, rows
/// (j1 − j0) × a, in TILE × TILE tiles.
#[inline(always)]
fn transpose_block(src: &[f32], dst: &mut [f32], a: usize, b: usize, j0: usize, j1: usize) {
    for jt in (j0..j1).step_by(TILE) {
        let jt_end = j1.min(jt + TILE);
        for it in (0..a).step_by(TILE) {
            let it_end = a.min(it + TILE);
            for i in it..it_end {
                let row = &src[i * b + jt..i * b + jt_end];
                for (dj, &v) in row.iter().enumerate() {
                    dst[(jt - j0 + dj) * a + i] = v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn ramp(dims: &[usize]) -> Tensor {
        let n: usize = dims.iter().product();
        Tensor::arange(0f32, n as f32, &Device::Cpu)
            .unwrap()
            .reshape(dims)
            .unwrap()
    }

    /// Candle's strided copy is the reference: the same values, bit for bit,
    /// for sizes around the tile and the task split (several matrices per
    /// task, a task ending inside a matrix), and the same shape.
    #[test]
    fn matches_candle_transpose() {
        for dims in [
            vec![1, 1],
            vec![3, 5],
            vec![17, 33],
            vec![2, 4096, 32],
            vec![2, 3, 31, 16],
            vec![5, 700, 9],
            vec![4, 1, 7],
        ] {
            let x = ramp(&dims).affine(0.37, -11.0).unwrap();
            let got = transpose_last2(&x).unwrap();
            let want = x
                .transpose(D::Minus2, D::Minus1)
                .unwrap()
                .contiguous()
                .unwrap();
            assert_eq!(got.dims(), want.dims(), "{dims:?}");
            let (g, w) = (
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert!(
                g.iter().zip(&w).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{dims:?}"
            );
        }
    }

    /// A non-contiguous input is copied first; its transpose is still right.
    #[test]
    fn strided_input() {
        let x = ramp(&[6, 10]).narrow(1, 2, 5).unwrap();
        let got = transpose_last2(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(got[0], vec![2.0, 12.0, 22.0, 32.0, 42.0, 52.0]);
        assert_eq!(got[4], vec![6.0, 16.0, 26.0, 36.0, 46.0, 56.0]);
    }

    /// The gradient of Σ w ⊙ transpose(x) is transpose(w).
    #[test]
    fn gradient_is_the_transposed_gradient() {
        let x = Var::from_tensor(&ramp(&[2, 3, 4])).unwrap();
        let w = ramp(&[2, 4, 3]).affine(0.5, 1.0).unwrap();
        let y = transpose_last2(x.as_tensor()).unwrap();
        let loss = (y * &w).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        let gx = g.get(x.as_tensor()).unwrap();
        let want = w.transpose(1, 2).unwrap().contiguous().unwrap();
        assert_eq!(
            gx.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn a_vector_is_an_error() {
        let err = transpose_last2(&ramp(&[4])).unwrap_err().to_string();
        assert!(err.contains("at least 2 dimensions"), "{err}");
    }
}
