//! ClassMix domain mixing: class sets, binary class masks and the mixing of
//! images, labels and pixel weights.
//!
//! Semantics follow mmseg's DACS re-implementation
//! (`lhoyer/MIC seg/mmseg/models/utils/dacs_transforms.py`: `get_class_masks`,
//! `generate_class_mask`, `one_mix`) and its use in
//! `seg/mmseg/models/uda/dacs.py::DACS.forward_train`: source pixels of the chosen
//! classes are pasted onto the target image; the mixed weight is 1 on pasted
//! pixels and the pseudo-label weight elsewhere.
//!
//! Randomness is injected: [`choose_classes`] is the only function that draws,
//! from a caller-provided [`rand::Rng`]; [`class_mask`], [`one_mix`] and
//! [`class_mix`] are pure, so tests and exact resume can pass hand-chosen classes
//! or masks.
//!
//! Shapes: labels (B, H, W) `u32` with 255 = ignore, images (B, C, H, W) float,
//! weights (B, H, W) float, masks (H, W) `f32` in {0, 1}. All ops run on the
//! device of their inputs; nothing here needs gradients.

use std::collections::BTreeSet;

use candle_core::{bail, DType, Result, Tensor};
use rand::Rng;

/// Sorted unique label values of the whole batch `labels` (B, H, W) `u32`.
///
/// Mirrors `torch.unique(labels)` in `dacs_transforms.py::get_class_masks`: the
/// class set is the union over the **whole batch**, not per image (original DACS
/// uses per-image sets; the mmseg code keeps the batch union on purpose, see
/// DAFormer issue #19), and the ignore value 255 is **kept** when present, so it
/// can be chosen and pasted (the pasted pixels then carry label 255 and give no
/// loss). Use [`image_classes`] for the per-image variant.
///
/// The labels are copied to the host to collect the values.
pub fn batch_union_classes(labels: &Tensor) -> Result<Vec<u32>> {
    check_labels("labels", labels, 3)?;
    unique_sorted(labels)
}

/// Sorted unique label values of one image `label_i` (H, W) `u32`, 255 included
/// when present (original DACS `trainUDA.py`: `torch.unique(labels[i])`, whose
/// ignore filter is commented out).
pub fn image_classes(label_i: &Tensor) -> Result<Vec<u32>> {
    check_labels("label_i", label_i, 2)?;
    unique_sorted(label_i)
}

/// Picks `ceil(n/2)` distinct entries of `classes` (n = `classes.len()`), like
/// `np.random.choice(n, (n + n % 2) // 2, replace=False)` in
/// `dacs_transforms.py::get_class_masks`.
///
/// Draw order (stable; part of exact resume): a partial Fisher-Yates shuffle of
/// the indices `0..n`: for `i` in `0..ceil(n/2)`, one draw
/// `j = rng.gen_range(i..n)`, then swap positions `i` and `j`. The chosen classes
/// are returned in draw order (the order does not change the mask). `n = 0` draws
/// nothing and returns an empty set.
pub fn choose_classes<R: Rng + ?Sized>(classes: &[u32], rng: &mut R) -> Vec<u32> {
    let n = classes.len();
    let k = n.div_ceil(2);
    let mut idx: Vec<usize> = (0..n).collect();
    for i in 0..k {
        let j = rng.gen_range(i..n);
        idx.swap(i, j);
    }
    idx[..k].iter().map(|&i| classes[i]).collect()
}

/// Binary mask (H, W) `f32` of `label_i` (H, W) `u32`: 1 where the label is one of
/// `classes`, 0 elsewhere (`dacs_transforms.py::generate_class_mask`).
///
/// 255 may be in `classes` (it is then matched like any other value); an empty
/// `classes` gives an all-zero mask. Duplicates in `classes` do not change the
/// result (the mask stays binary).
pub fn class_mask(label_i: &Tensor, classes: &[u32]) -> Result<Tensor> {
    check_labels("label_i", label_i, 2)?;
    // u8 equality masks OR-ed with `maximum`, converted to f32 once at the end.
    let mut acc = Tensor::zeros(label_i.shape(), DType::U8, label_i.device())?;
    for &c in classes {
        acc = acc.maximum(&label_i.eq(c)?)?;
    }
    acc.to_dtype(DType::F32)
}

/// One ClassMix mask (H, W) `f32` per image of `labels` (B, H, W) `u32`
/// (`dacs_transforms.py::get_class_masks`).
///
/// `per_image = false` (mmseg default): the class set is [`batch_union_classes`]
/// of the whole batch, computed once. `per_image = true` (original DACS): the set
/// of image `i` is [`image_classes`] of that image.
///
/// Draw order: images in batch order, one [`choose_classes`] per image.
pub fn class_masks<R: Rng + ?Sized>(
    labels: &Tensor,
    rng: &mut R,
    per_image: bool,
) -> Result<Vec<Tensor>> {
    check_labels("labels", labels, 3)?;
    let b = labels.dim(0)?;
    let union = if per_image {
        None
    } else {
        Some(batch_union_classes(labels)?)
    };
    let mut masks = Vec::with_capacity(b);
    for i in 0..b {
        let label_i = labels.get(i)?;
        let classes = match &union {
            Some(u) => u.clone(),
            None => image_classes(&label_i)?,
        };
        let chosen = choose_classes(&classes, rng);
        masks.push(class_mask(&label_i, &chosen)?);
    }
    Ok(masks)
}

/// `mask·a + (1 − mask)·b` (`dacs_transforms.py::one_mix`; `a` = source,
/// `b` = target).
///
/// `mask` is (H, W); `a` and `b` have the same shape whose last two dims are
/// (H, W), e.g. an image (C, H, W) (the mask is broadcast over channels), a label
/// (H, W) or a weight (H, W).
///
/// Float `a`/`b`: computed arithmetically in their dtype, so a binary mask
/// reproduces `a` or `b` exactly (for finite values) and a soft mask blends.
/// Integer `a`/`b` (labels): computed exactly with `where_cond`, taking `a` where
/// the mask is non-zero; the mask is expected to be binary.
pub fn one_mix(mask: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (mh, mw) = match mask.dims() {
        [h, w] => (*h, *w),
        d => bail!("one_mix: mask must be (H, W), got shape {d:?}"),
    };
    if a.dims() != b.dims() {
        bail!(
            "one_mix: source `a` and target `b` must have the same shape, got {:?} and {:?}",
            a.dims(),
            b.dims()
        );
    }
    if a.dtype() != b.dtype() {
        bail!(
            "one_mix: source `a` and target `b` must have the same dtype, got {:?} and {:?}",
            a.dtype(),
            b.dtype()
        );
    }
    let rank = a.rank();
    if rank < 2 || a.dims()[rank - 2..] != [mh, mw] {
        bail!(
            "one_mix: mask (H, W) = ({mh}, {mw}) does not match the last two dims of data shape {:?}",
            a.dims()
        );
    }
    if !mask.device().same_device(a.device()) {
        bail!("one_mix: mask and data are on different devices");
    }
    if a.dtype().is_float() {
        let m = mask.to_dtype(a.dtype())?.broadcast_as(a.shape())?;
        let one_minus = m.affine(-1.0, 1.0)?;
        m.mul(a)?.add(&one_minus.mul(b)?)
    } else {
        let m = mask.ne(0f32)?.broadcast_as(a.shape())?;
        m.where_cond(a, b)
    }
}

/// Result of [`class_mix`]: the mixed batch and the masks that produced it.
#[derive(Debug, Clone)]
pub struct MixedBatch {
    /// Mixed images (B, C, H, W), dtype of the inputs.
    pub image: Tensor,
    /// Mixed labels (B, H, W) `u32`: source labels on pasted pixels, pseudo-labels
    /// elsewhere.
    pub label: Tensor,
    /// Mixed pixel weights (B, H, W), dtype of `tgt_w`: 1 on pasted pixels, the
    /// target weight elsewhere.
    pub weight: Tensor,
    /// The masks used, one (H, W) `f32` per image.
    pub masks: Vec<Tensor>,
}

/// ClassMix of a source batch onto a target batch with the given `masks`
/// (`dacs.py::DACS.forward_train`, per image i):
/// `image_i = one_mix(M_i, src_img_i, tgt_img_i)`,
/// `label_i = one_mix(M_i, src_lbl_i, tgt_pl_i)`,
/// `weight_i = one_mix(M_i, 1, tgt_w_i)`.
///
/// Shapes: `src_img`, `tgt_img` (B, C, H, W); `src_lbl`, `tgt_pl` (B, H, W)
/// `u32`; `tgt_w` (B, H, W) float; `masks`: B tensors (H, W).
pub fn class_mix(
    src_img: &Tensor,
    src_lbl: &Tensor,
    tgt_img: &Tensor,
    tgt_pl: &Tensor,
    tgt_w: &Tensor,
    masks: &[Tensor],
) -> Result<MixedBatch> {
    let (b, _c, h, w) = match src_img.dims() {
        [b, c, h, w] => (*b, *c, *h, *w),
        d => bail!("class_mix: src_img must be (B, C, H, W), got shape {d:?}"),
    };
    if tgt_img.dims() != src_img.dims() {
        bail!(
            "class_mix: tgt_img shape {:?} differs from src_img shape {:?}",
            tgt_img.dims(),
            src_img.dims()
        );
    }
    for (name, t) in [("src_lbl", src_lbl), ("tgt_pl", tgt_pl), ("tgt_w", tgt_w)] {
        if t.dims() != [b, h, w] {
            bail!(
                "class_mix: {name} must be (B, H, W) = ({b}, {h}, {w}) like the images, got shape {:?}",
                t.dims()
            );
        }
    }
    if src_lbl.dtype() != DType::U32 || tgt_pl.dtype() != DType::U32 {
        bail!(
            "class_mix: src_lbl and tgt_pl must be u32, got {:?} and {:?}",
            src_lbl.dtype(),
            tgt_pl.dtype()
        );
    }
    if !tgt_w.dtype().is_float() {
        bail!(
            "class_mix: tgt_w must be a float tensor, got {:?}",
            tgt_w.dtype()
        );
    }
    if masks.len() != b {
        bail!(
            "class_mix: expected one mask per image ({b}), got {} masks",
            masks.len()
        );
    }
    let mut images = Vec::with_capacity(b);
    let mut labels = Vec::with_capacity(b);
    let mut weights = Vec::with_capacity(b);
    for (i, m) in masks.iter().enumerate() {
        if m.dims() != [h, w] {
            bail!(
                "class_mix: mask {i} must be (H, W) = ({h}, {w}), got shape {:?}",
                m.dims()
            );
        }
        images.push(one_mix(m, &src_img.get(i)?, &tgt_img.get(i)?)?);
        labels.push(one_mix(m, &src_lbl.get(i)?, &tgt_pl.get(i)?)?);
        let wt_i = tgt_w.get(i)?;
        weights.push(one_mix(m, &wt_i.ones_like()?, &wt_i)?);
    }
    Ok(MixedBatch {
        image: Tensor::stack(&images, 0)?,
        label: Tensor::stack(&labels, 0)?,
        weight: Tensor::stack(&weights, 0)?,
        masks: masks.to_vec(),
    })
}

/// Checks that `t` is a `u32` label tensor of the given rank.
fn check_labels(name: &str, t: &Tensor, rank: usize) -> Result<()> {
    let layout = if rank == 3 { "(B, H, W)" } else { "(H, W)" };
    if t.rank() != rank {
        bail!("{name} must be {layout}, got shape {:?}", t.dims());
    }
    if t.dtype() != DType::U32 {
        bail!("{name} must be u32 labels, got {:?}", t.dtype());
    }
    Ok(())
}

/// Sorted unique values of a `u32` tensor, collected on the host.
fn unique_sorted(t: &Tensor) -> Result<Vec<u32>> {
    let values = t.flatten_all()?.to_vec1::<u32>()?;
    // Label values are nearly always < 256: a presence table avoids sorting
    // millions of pixels; larger values go through a set.
    let mut small = [false; 256];
    let mut large = BTreeSet::new();
    for v in values {
        match small.get_mut(v as usize) {
            Some(seen) => *seen = true,
            None => {
                large.insert(v);
            }
        }
    }
    let mut out: Vec<u32> = (0u32..256).filter(|&v| small[v as usize]).collect();
    out.extend(large);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn unique_keeps_order_and_large_values() {
        let t = Tensor::new(&[[300u32, 5, 255], [0, 5, 300]], &Device::Cpu).unwrap();
        assert_eq!(image_classes(&t).unwrap(), vec![0, 5, 255, 300]);
    }

    #[test]
    fn choose_classes_empty_draws_nothing() {
        let mut a = ChaCha8Rng::seed_from_u64(3);
        let mut b = ChaCha8Rng::seed_from_u64(3);
        assert!(choose_classes(&[], &mut a).is_empty());
        assert_eq!(a.gen::<u64>(), b.gen::<u64>());
    }

    #[test]
    fn class_mask_rejects_wrong_rank_and_dtype() {
        let t = Tensor::zeros((1, 2, 2), DType::U32, &Device::Cpu).unwrap();
        let e = class_mask(&t, &[0]).unwrap_err().to_string();
        assert!(e.contains("label_i must be (H, W)"), "{e}");
        let t = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
        let e = class_mask(&t, &[0]).unwrap_err().to_string();
        assert!(e.contains("u32"), "{e}");
    }

    #[test]
    fn one_mix_shape_mismatch_names_mask() {
        let m = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let a = Tensor::zeros((3, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let e = one_mix(&m, &a, &a).unwrap_err().to_string();
        assert!(e.contains("mask (H, W) = (2, 3)"), "{e}");
    }
}
