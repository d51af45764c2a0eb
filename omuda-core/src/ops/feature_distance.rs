//! DAFormer's thing-class feature distance maths:
//! label downscaling by majority ratio and the masked channel-L2 distance.
//!
//! Semantics follow `lhoyer/MIC seg/mmseg/utils/utils.py::downscale_label_ratio`
//! and `seg/mmseg/models/uda/dacs.py::DACS.calc_feat_dist` /
//! `DACS.masked_feat_dist`.

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// Index of encoder level `layer` (negative: from the end) among `n`
/// levels; an out-of-range layer is a configuration error naming `key`
/// (e.g. `"fd.layer"`).
pub fn level_index(layer: i64, n: usize, key: &str) -> Result<usize> {
    let idx = if layer < 0 { n as i64 + layer } else { layer };
    if idx < 0 || idx >= n as i64 {
        return Err(Error::Config {
            origin: key.into(),
            message: format!("layer {layer} does not exist: the encoder has {n} levels"),
        });
    }
    Ok(idx as usize)
}

use super::IGNORE_INDEX;

/// Added under the square root of the feature distance so its gradient is
/// finite where the two features coincide (PyTorch's `norm` backward returns
/// 0 there; the value changes by at most 1e-6).
pub const DISTANCE_EPS: f64 = 1e-12;

/// One image's label (h·w, row-major) downscaled over cells of `sh × sw`
/// pixels, giving `(h / sh) × (w / sw)` cells (`avg_pool2d` drops the
/// remainder rows and columns). Ignored pixels (and any id ≥ `num_classes`)
/// count as an extra class; a cell gets its majority class if that is a real
/// class covering at least `min_ratio` of the cell, else [`IGNORE_INDEX`]. Ties go
/// to the lowest class id (`torch.max` returns the first maximum).
pub fn downscale_label_cells(
    label: &[u32],
    (h, w): (usize, usize),
    (sh, sw): (usize, usize),
    min_ratio: f32,
    num_classes: usize,
) -> Result<Vec<u32>> {
    if label.len() != h * w {
        return Err(Error::msg(format!(
            "downscale_label_ratio: label has {} values, expected {h}×{w}",
            label.len()
        )));
    }
    if sh == 0 || sw == 0 || sh > h || sw > w {
        return Err(Error::msg(format!(
            "downscale_label_ratio: cell {sh}×{sw} does not fit a label of {h}×{w}"
        )));
    }
    let (hf, wf) = (h / sh, w / sw);
    let mut out = vec![IGNORE_INDEX; hf * wf];
    let mut hist = vec![0usize; num_classes + 1];
    // The reference compares the float32 average-pool value with min_ratio.
    let area = (sh * sw) as f32;
    for cy in 0..hf {
        for cx in 0..wf {
            hist.iter_mut().for_each(|v| *v = 0);
            for y in cy * sh..(cy + 1) * sh {
                for &c in &label[y * w + cx * sw..y * w + (cx + 1) * sw] {
                    hist[(c as usize).min(num_classes)] += 1;
                }
            }
            let (mut best, mut count) = (0usize, 0usize);
            for (k, &n) in hist.iter().enumerate() {
                if n > count {
                    (best, count) = (k, n);
                }
            }
            if best < num_classes && count as f32 / area >= min_ratio {
                out[cy * wf + cx] = best as u32;
            }
        }
    }
    Ok(out)
}

/// `downscale_label_ratio(gt, scale_factor, min_ratio, n_classes, 255)` of a
/// batch of labels `(B, H, W)` (any integer dtype): square cells of
/// `scale_factor` pixels, output `(B, H / s, W / s)` u32 on the label's
/// device. The reference asserts `scale_factor > 1`; so does this (an error).
pub fn downscale_label_ratio(
    label: &Tensor,
    scale_factor: usize,
    min_ratio: f32,
    num_classes: usize,
) -> Result<Tensor> {
    let (_, h, w) = label_dims(label)?;
    if scale_factor <= 1 {
        return Err(Error::msg(format!(
            "downscale_label_ratio: scale factor {scale_factor} must be > 1 (label {h}×{w})"
        )));
    }
    downscale_batch(
        label,
        (scale_factor, scale_factor),
        (h / scale_factor, w / scale_factor),
        min_ratio,
        num_classes,
    )
}

/// The labels `(B, H, W)` downscaled onto a feature grid `(hf, wf)`: cells
/// of `(H / hf) × (W / wf)` pixels as in [`downscale_label_cells`]; when the
/// cells do not tile the image exactly, the top-left `hf × wf` cells. Output
/// `(B, hf, wf)` u32 on the label's device.
pub fn downscale_label_grid(
    label: &Tensor,
    (hf, wf): (usize, usize),
    min_ratio: f32,
    num_classes: usize,
) -> Result<Tensor> {
    let (_, h, w) = label_dims(label)?;
    if hf == 0 || wf == 0 || hf > h || wf > w {
        return Err(Error::msg(format!(
            "downscale_label_ratio: feature grid {hf}×{wf} does not fit a label of {h}×{w}"
        )));
    }
    downscale_batch(label, (h / hf, w / wf), (hf, wf), min_ratio, num_classes)
}

fn label_dims(label: &Tensor) -> Result<(usize, usize, usize)> {
    label.dims3().map_err(|_| {
        Error::msg(format!(
            "downscale_label_ratio: label must be (B, H, W), got shape {:?}",
            label.dims()
        ))
    })
}

/// Every image of `label` over cells `cell`, keeping the top-left `grid`.
fn downscale_batch(
    label: &Tensor,
    cell: (usize, usize),
    (hf, wf): (usize, usize),
    min_ratio: f32,
    num_classes: usize,
) -> Result<Tensor> {
    let (b, h, w) = label_dims(label)?;
    let lab = label
        .flatten_all()?
        .to_dtype(DType::U32)?
        .to_vec1::<u32>()?;
    let full_w = w / cell.1;
    let mut out = Vec::with_capacity(b * hf * wf);
    for i in 0..b {
        let cells = downscale_label_cells(
            &lab[i * h * w..(i + 1) * h * w],
            (h, w),
            cell,
            min_ratio,
            num_classes,
        )?;
        for y in 0..hf {
            out.extend_from_slice(&cells[y * full_w..y * full_w + wf]);
        }
    }
    Ok(Tensor::from_vec(out, (b, hf, wf), label.device())?)
}

/// `1.0` where `label` (any shape, u32) is one of `classes`, else `0.0`
/// (`torch.any(gt_down[..., None] == fdclasses, -1)`), as f32 on the label's device.
pub fn class_mask(label: &Tensor, classes: &[u32]) -> Result<Tensor> {
    let lab = label
        .flatten_all()?
        .to_dtype(DType::U32)?
        .to_vec1::<u32>()?;
    let m: Vec<f32> = lab
        .iter()
        .map(|c| if classes.contains(c) { 1.0 } else { 0.0 })
        .collect();
    Ok(Tensor::from_vec(m, label.shape(), label.device())?)
}

/// Mean over the cells where `mask` (B, h, w) is non-zero of the channel L2
/// distance `‖f − f0‖₂` (not squared) between features (B, C, h, w); `f0`
/// gets no gradient. None when the mask is empty: the reference's mean over
/// no element is NaN with no gradient; the caller logs it and adds no loss.
pub fn masked_feature_distance(f: &Tensor, f0: &Tensor, mask: &Tensor) -> Result<Option<Tensor>> {
    let (b, _, h, w) = f.dims4()?;
    if f0.dims() != f.dims() || mask.dims() != [b, h, w] {
        return Err(Error::msg(format!(
            "masked_feature_distance: features {:?} and {:?} must match, mask {:?} must be (B, h, w) = ({b}, {h}, {w})",
            f.dims(),
            f0.dims(),
            mask.dims()
        )));
    }
    let mask = mask.to_dtype(f.dtype())?;
    let count = mask.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    if count <= 0.0 {
        return Ok(None);
    }
    let d = (f - f0.detach())?
        .sqr()?
        .sum(1)?
        .affine(1.0, DISTANCE_EPS)?
        .sqrt()?;
    Ok(Some(((d * mask)?.sum_all()? / count)?))
}
