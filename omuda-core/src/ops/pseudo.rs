//! Pseudo-labels and their pixel weight from teacher logits.
//!
//! Semantics follow `lhoyer/MIC seg/mmseg/models/uda/dacs.py`:
//! `DACS.get_pseudo_label_and_weight` (softmax, max, one batch-wide confident
//! fraction `q` used as the weight of every pixel) and
//! `DACS.filter_valid_pseudo_region` for the DAFormer "croppl v1" row zeroing
//! ([`zero_rows`]).

use candle_core::{bail, DType, Device, Result, Tensor};
use rayon::prelude::*;

use super::augment::with_cpu_f32;

/// Pixels per parallel task of the CPU pass.
const CHUNK: usize = 4096;

/// Pseudo-labels of a target batch.
#[derive(Debug, Clone)]
pub struct PseudoLabels {
    /// Arg-max class (B, H, W) `u32`; ties go to the lowest class index.
    pub label: Tensor,
    /// Maximum softmax probability (B, H, W) `f32`.
    pub confidence: Tensor,
    /// Pixel weight (B, H, W) `f32`: the same value `q` everywhere, the fraction of
    /// the batch's pixels whose confidence is `>= threshold`.
    pub weight: Tensor,
}

impl PseudoLabels {
    /// The batch-wide confident fraction `q` (the value of every weight pixel),
    /// read back from [`PseudoLabels::weight`].
    pub fn q(&self) -> Result<f32> {
        self.weight.flatten_all()?.get(0)?.to_scalar::<f32>()
    }
}

/// Pseudo-labels and weight from `teacher_logits` (B, K, H, W)
/// (`dacs.py::DACS.get_pseudo_label_and_weight`):
///
/// - `P = softmax(logits)` over K, in `f32`;
/// - `confidence, label = max_K P`, ties going to the **first** (lowest) index,
///   like PyTorch's CPU `max`; this is computed explicitly so every device agrees;
/// - `q = count(confidence >= threshold) / (B·H·W)` as ONE scalar for the whole
///   batch (exact equality with the threshold counts as confident; the count is
///   exact, and `q` is formed in `f64` then stored as `f32`, like the reference's
///   Python float);
/// - `weight = q` at every pixel.
///
/// The logits are detached first: no gradient flows to the teacher. CPU `f32`:
/// one fused pass per pixel; elsewhere [`pseudo_label_and_weight_composed`] (same
/// steps: max-shifted `exp`, sum, divide, first maximum).
pub fn pseudo_label_and_weight(teacher_logits: &Tensor, threshold: f32) -> Result<PseudoLabels> {
    let (b, k, h, w) = check_logits(teacher_logits)?;
    match (teacher_logits.device(), teacher_logits.dtype()) {
        (Device::Cpu, DType::F32) => {
            let hw = h * w;
            let (label, conf) =
                with_cpu_f32(teacher_logits, |x| Ok(argmax_softmax_cpu(x, b, k, hw)))?;
            let count = conf.iter().filter(|&&c| c >= threshold).count() as u64;
            let dev = teacher_logits.device();
            finish(
                Tensor::from_vec(label, (b, h, w), dev)?,
                Tensor::from_vec(conf, (b, h, w), dev)?,
                count,
            )
        }
        _ => pseudo_label_and_weight_composed(teacher_logits, threshold),
    }
}

/// Device-generic path of [`pseudo_label_and_weight`], composed of Candle ops
/// (`candle_nn::ops::softmax`, max, a first-index selection with `where_cond` and
/// `min`).
pub fn pseudo_label_and_weight_composed(
    teacher_logits: &Tensor,
    threshold: f32,
) -> Result<PseudoLabels> {
    let (_, k, _, _) = check_logits(teacher_logits)?;
    let dev = teacher_logits.device();
    let logits = teacher_logits.detach().to_dtype(DType::F32)?;
    let prob = candle_nn::ops::softmax(&logits, 1)?;
    let conf_keep = prob.max_keepdim(1)?; // (B, 1, H, W)

    // First index attaining the maximum: index where P == max, K elsewhere, then min.
    let shape = prob.shape().clone();
    let is_max = prob.broadcast_eq(&conf_keep)?;
    let iota = Tensor::arange(0u32, k as u32, dev)?
        .reshape((1, k, 1, 1))?
        .broadcast_as(&shape)?;
    let none = Tensor::full(k as u32, &shape, dev)?;
    let label = is_max.where_cond(&iota, &none)?.min(1)?;
    let confidence = conf_keep.squeeze(1)?;
    let count = confident_count(&confidence, threshold)?;
    finish(label, confidence, count)
}

/// Checks the logits and returns (B, K, H, W).
fn check_logits(t: &Tensor) -> Result<(usize, usize, usize, usize)> {
    let dims = match t.dims() {
        [b, k, h, w] => (*b, *k, *h, *w),
        d => bail!("pseudo_label_and_weight: teacher_logits must be (B, K, H, W), got shape {d:?}"),
    };
    if dims.1 == 0 {
        bail!("pseudo_label_and_weight: teacher_logits has no classes (K = 0)");
    }
    if !t.dtype().is_float() {
        bail!(
            "pseudo_label_and_weight: teacher_logits must be a float tensor, got {:?}",
            t.dtype()
        );
    }
    Ok(dims)
}

/// Builds the result from label, confidence and the confident count.
fn finish(label: Tensor, confidence: Tensor, count: u64) -> Result<PseudoLabels> {
    let n = confidence.elem_count();
    let q = if n == 0 { 0.0 } else { count as f64 / n as f64 };
    let weight = Tensor::full(q as f32, confidence.shape(), confidence.device())?;
    Ok(PseudoLabels {
        label,
        confidence,
        weight,
    })
}

/// Per pixel of contiguous (B, K, H·W) logits: `e_c = exp(x_c − max)`,
/// `P_c = e_c / Σ e`, and the first `c` with the largest `P_c`.
fn argmax_softmax_cpu(x: &[f32], b: usize, k: usize, hw: usize) -> (Vec<u32>, Vec<f32>) {
    let mut label = vec![0u32; b * hw];
    let mut conf = vec![0f32; b * hw];
    label
        .par_chunks_mut(CHUNK)
        .zip(conf.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(ci, (lab, cf))| {
            let mut e = vec![0f32; k];
            for (j, (l, c)) in lab.iter_mut().zip(cf.iter_mut()).enumerate() {
                let g = ci * CHUNK + j;
                let (bi, p) = (g / hw, g % hw);
                let base = bi * k * hw + p;
                let m = (0..k).fold(f32::NEG_INFINITY, |m, c| m.max(x[base + c * hw]));
                let mut sum = 0f32;
                for (c, ec) in e.iter_mut().enumerate() {
                    *ec = (x[base + c * hw] - m).exp();
                    sum += *ec;
                }
                let (mut best, mut arg) = (e[0] / sum, 0u32);
                for (c, &ec) in e.iter().enumerate().skip(1) {
                    let pc = ec / sum;
                    // Strictly greater: ties keep the first index.
                    if pc > best {
                        best = pc;
                        arg = c as u32;
                    }
                }
                *l = arg;
                *c = best;
            }
        });
    (label, conf)
}

/// Number of pixels of `confidence` (B, H, W) `f32` with value `>= threshold`,
/// counted exactly: each row is summed on the device in `f32` (exact up to 2^24
/// pixels per row), the per-row sums are added on the host as integers.
pub fn confident_count(confidence: &Tensor, threshold: f32) -> Result<u64> {
    if confidence.rank() != 3 {
        bail!(
            "confident_count: confidence must be (B, H, W), got shape {:?}",
            confidence.dims()
        );
    }
    let confident = confidence
        .to_dtype(DType::F32)?
        .ge(threshold)?
        .to_dtype(DType::F32)?;
    let rows = confident.sum(2)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(rows.iter().map(|&r| r as u64).sum())
}

/// `weight` (B, H, W) with its first `top` and last `bottom` rows set to 0
/// (DAFormer "croppl v1", `dacs.py::DACS.filter_valid_pseudo_region`:
/// `w[:, :top, :] = 0; w[:, -bottom:, :] = 0`, used with top 15, bottom 120 on
/// 512-high crops).
///
/// Counts larger than H are clamped to H. `bottom = 0` zeroes no row (unlike
/// Python's `w[:, -0:, :]`, which would select every row).
pub fn zero_rows(weight: &Tensor, top: usize, bottom: usize) -> Result<Tensor> {
    let h = match weight.dims() {
        [_, h, _] => *h,
        d => bail!("zero_rows: weight must be (B, H, W), got shape {d:?}"),
    };
    let top = top.min(h);
    let bottom_start = h - bottom.min(h);
    let rows: Vec<f32> = (0..h)
        .map(|r| {
            if r < top || r >= bottom_start {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    let keep = Tensor::from_vec(rows, (1, h, 1), weight.device())?.to_dtype(weight.dtype())?;
    weight.broadcast_mul(&keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rejects_non_4d_logits() {
        let t = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
        let e = pseudo_label_and_weight(&t, 0.9).unwrap_err().to_string();
        assert!(e.contains("teacher_logits must be (B, K, H, W)"), "{e}");
    }

    #[test]
    fn zero_rows_clamps_large_counts() {
        let w = Tensor::ones((1, 3, 2), DType::F32, &Device::Cpu).unwrap();
        let z = zero_rows(&w, 10, 10).unwrap();
        assert_eq!(z.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        let z = zero_rows(&w, 1, 0).unwrap();
        assert_eq!(
            z.to_vec3::<f32>().unwrap(),
            vec![vec![vec![0.0, 0.0], vec![1.0, 1.0], vec![1.0, 1.0]]]
        );
    }
}
