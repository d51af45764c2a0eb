//! The reference training pipelines (`lhoyer/MIC
//! seg/configs/_base_/datasets/uda_gta_to_cityscapes_512x512.py` and
//! `uda_gtaHR_to_cityscapesHR_1024x1024.py`): keep-ratio resize with mmcv's
//! rounding, `RandomCrop` with `cat_max_ratio`, random horizontal flip, then
//! ImageNet normalisation and padding to the crop.
//!
//! For speed the image is only resized inside the chosen crop box: the label
//! is resized whole (nearest, cheap) to choose the box, then the bilinear
//! resize is evaluated for the box's pixels only. The result is the same as
//! resizing the whole image and cropping.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::classes::IGNORE_INDEX;
use super::synth::Sample;

/// mmcv `rescale_size(old_size, scale)` with a `(long, short)` scale tuple
/// (mmcv 1.3 `image/geometric.py::rescale_size` / `_scale_size`): the largest
/// factor that keeps the long edge ≤ `max(scale)` and the short edge ≤
/// `min(scale)`, then `int(x·s + 0.5)` per side. `(w, h)` in and out.
pub fn rescale_size(w: usize, h: usize, scale: [usize; 2]) -> (usize, usize) {
    let long = scale[0].max(scale[1]) as f64;
    let short = scale[0].min(scale[1]) as f64;
    let s = (long / w.max(h) as f64).min(short / w.min(h) as f64);
    ((w as f64 * s + 0.5) as usize, (h as f64 * s + 0.5) as usize)
}

/// A crop box: top-left `(y, x)` and size `(h, w)`, within the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CropBox {
    pub y: usize,
    pub x: usize,
    pub h: usize,
    pub w: usize,
}

/// mmseg `RandomCrop.get_crop_bbox` (`mmseg/datasets/pipelines/transforms.py`):
/// offsets uniform in `0..=max(H − ch, 0)` and `0..=max(W − cw, 0)`; the box is
/// clipped to the image when the image is smaller than the crop.
pub fn random_crop_box(rng: &mut impl Rng, h: usize, w: usize, crop: [usize; 2]) -> CropBox {
    let oy = rng.gen_range(0..=h.saturating_sub(crop[0]));
    let ox = rng.gen_range(0..=w.saturating_sub(crop[1]));
    CropBox {
        y: oy,
        x: ox,
        h: crop[0].min(h),
        w: crop[1].min(w),
    }
}

/// Whether `label` cropped to `b` passes the `cat_max_ratio` rule of mmseg
/// `RandomCrop.__call__`: more than one non-ignore class, and the largest
/// class below `cat_max_ratio` of the non-ignore pixels.
pub fn crop_accepted(
    label: &[u8],
    width: usize,
    b: CropBox,
    cat_max_ratio: f64,
    ignore: u8,
) -> bool {
    let mut hist = [0u64; 256];
    for y in b.y..b.y + b.h {
        for &l in &label[y * width + b.x..y * width + b.x + b.w] {
            hist[usize::from(l)] += 1;
        }
    }
    hist[usize::from(ignore)] = 0;
    let present = hist.iter().filter(|&&n| n > 0).count();
    let total: u64 = hist.iter().sum();
    let max = hist.iter().copied().max().unwrap_or(0);
    present > 1 && (max as f64) / (total as f64) < cat_max_ratio
}

/// Choose a crop box with mmseg's `cat_max_ratio` rule: the first box, then up
/// to 10 re-draws while the rule fails; the last (11th) box is used unchecked.
/// `next_box` draws a box (injected in tests). With `cat_max_ratio >= 1` the
/// first box is used.
pub fn choose_crop(
    label: &[u8],
    width: usize,
    cat_max_ratio: f64,
    ignore: u8,
    mut next_box: impl FnMut() -> CropBox,
) -> CropBox {
    let mut b = next_box();
    if cat_max_ratio < 1.0 {
        for _ in 0..10 {
            if crop_accepted(label, width, b, cat_max_ratio, ignore) {
                break;
            }
            b = next_box();
        }
    }
    b
}

/// Nearest-neighbour resize of a label (OpenCV `INTER_NEAREST`, mmcv's
/// `nearest`): source index `floor(dst · src / dst_size)`.
pub fn resize_nearest(src: &[u8], sw: usize, sh: usize, dw: usize, dh: usize) -> Vec<u8> {
    if (sw, sh) == (dw, dh) {
        return src.to_vec();
    }
    let xs: Vec<usize> = (0..dw)
        .map(|x| ((x as f64 * sw as f64 / dw as f64) as usize).min(sw - 1))
        .collect();
    let mut out = Vec::with_capacity(dw * dh);
    for y in 0..dh {
        let sy = ((y as f64 * sh as f64 / dh as f64) as usize).min(sh - 1);
        let row = &src[sy * sw..(sy + 1) * sw];
        out.extend(xs.iter().map(|&sx| row[sx]));
    }
    out
}

/// Source index and weight of the second tap for bilinear resizing with
/// half-pixel centres (OpenCV `INTER_LINEAR`, mmcv's `bilinear`):
/// `f = (d + 0.5)·src/dst − 0.5`, clamped to the image.
fn linear_taps(src: usize, dst: usize, range: std::ops::Range<usize>) -> Vec<(usize, usize, f32)> {
    let scale = src as f64 / dst as f64;
    range
        .map(|d| {
            let f = (d as f64 + 0.5) * scale - 0.5;
            let i0 = f.floor();
            let t = (f - i0) as f32;
            if i0 < 0.0 {
                (0, 0, 0.0)
            } else if i0 as usize >= src - 1 {
                (src - 1, src - 1, 0.0)
            } else {
                (i0 as usize, i0 as usize + 1, t)
            }
        })
        .collect()
}

/// Bilinear resize of an RGB image (HWC bytes) from `sw×sh` to `dw×dh`,
/// evaluated only for the destination box `b` (the output is `b.w×b.h`).
/// Values are rounded to the nearest byte; OpenCV's fixed-point weights can
/// differ by one level.
pub fn resize_bilinear_rgb_box(
    src: &[u8],
    sw: usize,
    sh: usize,
    dw: usize,
    dh: usize,
    b: CropBox,
) -> Vec<u8> {
    if (sw, sh) == (dw, dh) {
        let mut out = Vec::with_capacity(b.w * b.h * 3);
        for y in b.y..b.y + b.h {
            out.extend_from_slice(&src[(y * sw + b.x) * 3..(y * sw + b.x + b.w) * 3]);
        }
        return out;
    }
    let xt = linear_taps(sw, dw, b.x..b.x + b.w);
    let yt = linear_taps(sh, dh, b.y..b.y + b.h);
    let mut out = vec![0u8; b.w * b.h * 3];
    // Horizontal pass over the source rows the box needs, then vertical blend.
    let (ylo, yhi) = match (yt.first(), yt.last()) {
        (Some(f), Some(l)) => (f.0, l.1),
        _ => return out,
    };
    let rw = b.w * 3;
    let mut rows = vec![0f32; (yhi - ylo + 1) * rw];
    for sy in ylo..=yhi {
        let row = &src[sy * sw * 3..(sy + 1) * sw * 3];
        let r = &mut rows[(sy - ylo) * rw..(sy - ylo + 1) * rw];
        for (i, &(x0, x1, t)) in xt.iter().enumerate() {
            for c in 0..3 {
                let a = f32::from(row[x0 * 3 + c]);
                let bb = f32::from(row[x1 * 3 + c]);
                r[i * 3 + c] = a + (bb - a) * t;
            }
        }
    }
    for (oy, &(y0, y1, t)) in yt.iter().enumerate() {
        let r0 = &rows[(y0 - ylo) * rw..(y0 - ylo + 1) * rw];
        let r1 = &rows[(y1 - ylo) * rw..(y1 - ylo + 1) * rw];
        let dst = &mut out[oy * rw..(oy + 1) * rw];
        for i in 0..rw {
            let v = r0[i] + (r1[i] - r0[i]) * t;
            dst[i] = (v + 0.5).clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// Bilinear resize of a whole RGB image.
pub fn resize_bilinear_rgb(src: &[u8], sw: usize, sh: usize, dw: usize, dh: usize) -> Vec<u8> {
    resize_bilinear_rgb_box(
        src,
        sw,
        sh,
        dw,
        dh,
        CropBox {
            y: 0,
            x: 0,
            h: dh,
            w: dw,
        },
    )
}

/// One training pipeline: resize, random crop, flip (normalisation and
/// padding happen when the batch is assembled).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Keep-ratio resize target `[w, h]` (mmseg `Resize(img_scale=(w, h))`);
    /// `None` keeps the file's size.
    pub scale: Option<[usize; 2]>,
    /// Random crop `[h, w]`; `None` keeps the whole (resized) image.
    pub crop: Option<[usize; 2]>,
    /// `RandomCrop(cat_max_ratio)`; 1 disables the rule.
    pub cat_max_ratio: f64,
    /// Probability of a horizontal flip.
    pub flip_prob: f64,
    /// Pad a resized frame smaller than `crop` up to it (mmseg's `Pad`:
    /// image 0, label ignore). Off: such a frame is an error, since it
    /// usually means a wrong `scale` or `crop`.
    pub pad_to_crop: bool,
}

impl Default for PipelineConfig {
    /// The DAFormer GTA pipeline.
    fn default() -> Self {
        Self::daformer_gta()
    }
}

impl PipelineConfig {
    /// DAFormer/DACS(mmseg) source: GTA → keep ratio (1280, 720) → crop 512²
    /// with cat_max_ratio 0.75 → flip 0.5 (`uda_gta_to_cityscapes_512x512.py`).
    pub fn daformer_gta() -> Self {
        Self {
            scale: Some([1280, 720]),
            crop: Some([512, 512]),
            cat_max_ratio: 0.75,
            flip_prob: 0.5,
            pad_to_crop: false,
        }
    }
    /// DAFormer SYNTHIA source: (1280, 760) (identity for SYNTHIA frames).
    pub fn daformer_synthia() -> Self {
        Self {
            scale: Some([1280, 760]),
            ..Self::daformer_gta()
        }
    }
    /// DAFormer target: Cityscapes → (1024, 512) → crop 512² (no cat rule) → flip.
    pub fn daformer_cityscapes() -> Self {
        Self {
            scale: Some([1024, 512]),
            crop: Some([512, 512]),
            cat_max_ratio: 1.0,
            flip_prob: 0.5,
            pad_to_crop: false,
        }
    }
    /// HRDA/MIC source: GTA → (2560, 1440) → crop 1024² with cat_max_ratio 0.75.
    pub fn hrda_gta() -> Self {
        Self {
            scale: Some([2560, 1440]),
            crop: Some([1024, 1024]),
            cat_max_ratio: 0.75,
            flip_prob: 0.5,
            pad_to_crop: false,
        }
    }
    /// HRDA/MIC target: Cityscapes at (2048, 1024) → crop 1024².
    pub fn hrda_cityscapes() -> Self {
        Self {
            scale: Some([2048, 1024]),
            crop: Some([1024, 1024]),
            cat_max_ratio: 1.0,
            flip_prob: 0.5,
            pad_to_crop: false,
        }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if let Some(s) = self.scale {
            if s.contains(&0) {
                return Err(format!("scale {s:?} must be positive"));
            }
        }
        if let Some(c) = self.crop {
            if c.contains(&0) {
                return Err(format!("crop {c:?} must be positive"));
            }
        }
        if !(self.cat_max_ratio > 0.0 && self.cat_max_ratio <= 1.0) {
            return Err(format!(
                "cat_max_ratio = {}: expected a value in (0, 1]",
                self.cat_max_ratio
            ));
        }
        if !(0.0..=1.0).contains(&self.flip_prob) {
            return Err(format!(
                "flip_prob = {}: expected a value in [0, 1]",
                self.flip_prob
            ));
        }
        Ok(())
    }

    /// Output size `(h, w)` of every sample: the crop, or the resized size of
    /// a `(w, h)` frame when there is no crop.
    pub fn output_size(&self, frame_w: usize, frame_h: usize) -> (usize, usize) {
        match self.crop {
            Some(c) => (c[0], c[1]),
            None => {
                let (w, h) = self.resized_size(frame_w, frame_h);
                (h, w)
            }
        }
    }

    pub fn resized_size(&self, w: usize, h: usize) -> (usize, usize) {
        match self.scale {
            Some(s) => rescale_size(w, h, s),
            None => (w, h),
        }
    }
}

/// A decoded frame prepared for repeated crops: the label resized to the
/// pipeline's scale (for crop selection and RCS checks), the image kept at
/// file resolution until the crop box is known.
pub struct Prepared {
    pub src: Sample,
    pub rw: usize,
    pub rh: usize,
    pub label: Vec<u8>,
}

impl Prepared {
    pub fn new(src: Sample, cfg: &PipelineConfig) -> Self {
        let (rw, rh) = cfg.resized_size(src.width, src.height);
        let label = resize_nearest(&src.label, src.width, src.height, rw, rh);
        Self { src, rw, rh, label }
    }

    /// An unlabelled frame (a target image): the label is all ignore at the
    /// resized size, without resizing a full-size ignore map.
    pub fn image_only(image: Vec<u8>, width: usize, height: usize, cfg: &PipelineConfig) -> Self {
        let (rw, rh) = cfg.resized_size(width, height);
        let src = Sample {
            image,
            label: Vec::new(),
            height,
            width,
        };
        Self {
            src,
            rw,
            rh,
            label: vec![IGNORE_INDEX; rw * rh],
        }
    }

    /// An error when the resized frame is smaller than the crop and padding
    /// was not asked for; `key` names the dataset table (`data.source`),
    /// `frame` the file.
    pub fn check_fits(&self, cfg: &PipelineConfig, key: &str, frame: &str) -> crate::Result<()> {
        match cfg.crop {
            Some(c) if !cfg.pad_to_crop && (c[0] > self.rh || c[1] > self.rw) => {
                Err(crate::Error::Config {
                    origin: key.into(),
                    message: format!(
                        "{key}.crop = {c:?} (h, w) is larger than the resized frame {}×{} of {frame} \
                         (file {}×{}, scale {:?}); lower the crop or the scale, or set \
                         {key}.pad_to_crop = true to pad it (image 0, label ignore)",
                        self.rh, self.rw, self.src.height, self.src.width, cfg.scale
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    /// Draw a crop box with the `cat_max_ratio` rule.
    pub fn draw_box(&self, cfg: &PipelineConfig, rng: &mut impl Rng) -> CropBox {
        match cfg.crop {
            None => CropBox {
                y: 0,
                x: 0,
                h: self.rh,
                w: self.rw,
            },
            Some(c) => {
                let (rh, rw) = (self.rh, self.rw);
                choose_crop(&self.label, rw, cfg.cat_max_ratio, IGNORE_INDEX, || {
                    random_crop_box(rng, rh, rw, c)
                })
            }
        }
    }

    /// Pixels of class `c` inside box `b` (of the resized label).
    pub fn count_in_box(&self, b: CropBox, c: u8) -> usize {
        (b.y..b.y + b.h)
            .map(|y| {
                self.label[y * self.rw + b.x..y * self.rw + b.x + b.w]
                    .iter()
                    .filter(|&&l| l == c)
                    .count()
            })
            .sum()
    }

    /// The crop `b`, flipped if asked, padded to `crop` (image 0, label
    /// ignore) like mmseg's `Pad(pad_val=0, seg_pad_val=255)`.
    pub fn finish(&self, cfg: &PipelineConfig, b: CropBox, flip: bool) -> Sample {
        let img = resize_bilinear_rgb_box(
            &self.src.image,
            self.src.width,
            self.src.height,
            self.rw,
            self.rh,
            b,
        );
        let mut lbl = Vec::with_capacity(b.w * b.h);
        for y in b.y..b.y + b.h {
            lbl.extend_from_slice(&self.label[y * self.rw + b.x..y * self.rw + b.x + b.w]);
        }
        let (oh, ow) = match cfg.crop {
            Some(c) => (c[0].max(b.h), c[1].max(b.w)),
            None => (b.h, b.w),
        };
        let mut image = vec![0u8; oh * ow * 3];
        let mut label = vec![IGNORE_INDEX; oh * ow];
        for y in 0..b.h {
            for x in 0..b.w {
                let sx = if flip { b.w - 1 - x } else { x };
                let s = y * b.w + sx;
                let d = y * ow + x;
                image[d * 3..d * 3 + 3].copy_from_slice(&img[s * 3..s * 3 + 3]);
                label[d] = lbl[s];
            }
        }
        Sample {
            image,
            label,
            height: oh,
            width: ow,
        }
    }

    /// The whole pipeline once: box with the cat rule, flip, finish.
    pub fn sample(&self, cfg: &PipelineConfig, rng: &mut impl Rng) -> Sample {
        let b = self.draw_box(cfg, rng);
        let flip = rng.gen_bool(cfg.flip_prob);
        self.finish(cfg, b, flip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_box_equals_whole_then_crop() {
        let (sw, sh) = (37, 23);
        let src: Vec<u8> = (0..sw * sh * 3).map(|i| ((i * 7919) % 256) as u8).collect();
        let (dw, dh) = (25, 16);
        let whole = resize_bilinear_rgb(&src, sw, sh, dw, dh);
        let b = CropBox {
            y: 3,
            x: 5,
            h: 9,
            w: 11,
        };
        let part = resize_bilinear_rgb_box(&src, sw, sh, dw, dh, b);
        for y in 0..b.h {
            for x in 0..b.w * 3 {
                assert_eq!(
                    part[y * b.w * 3 + x],
                    whole[(y + b.y) * dw * 3 + b.x * 3 + x]
                );
            }
        }
    }

    #[test]
    fn bilinear_halving_averages_pairs() {
        // 4×1 → 2×1 with half-pixel centres samples at 0.5 and 2.5.
        let src = [0u8, 0, 0, 100, 100, 100, 200, 200, 200, 250, 250, 250];
        let out = resize_bilinear_rgb(&src, 4, 1, 2, 1);
        assert_eq!(out, vec![50, 50, 50, 225, 225, 225]);
    }

    #[test]
    fn nearest_uses_floor() {
        let src: Vec<u8> = (0..6).collect();
        assert_eq!(resize_nearest(&src, 6, 1, 4, 1), vec![0, 1, 3, 4]);
    }
}
