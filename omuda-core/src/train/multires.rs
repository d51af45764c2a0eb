//! HRDA multi-resolution training and inference as a [`SegObjective`]
//! (`lhoyer/HRDA` / `lhoyer/MIC seg/mmseg/models/segmentors/hrda_encoder_decoder.py`
//! and `seg/mmseg/models/decode_heads/hrda_head.py`).
//!
//! The shared step calls [`SegObjective::loss`] for the source, mixed (and
//! MIC-masked) passes and [`SegObjective::logits`] for the teacher's
//! pseudo-labels and for evaluation, so HRDA replaces only how the network
//! is run, never the step:
//!
//! - **loss** (`HRDAEncoderDecoder._forward_train_features`, `HRDAHead.forward`,
//!   `HRDAHead.losses`): the context path sees the whole crop downscaled by
//!   `context_scale`, the detail path one `hr_crop` window of the full-res crop
//!   (one box per pass, on a grid of `crop_divisible`); the same encoder and
//!   head run on both; a class-wise sigmoid scale attention from the context
//!   features, masked to the detail box, fuses them;
//!   `L = (1 − λ_lr − λ_hr)·CE(fused) + λ_hr·CE(detail, cropped label/weight) + λ_lr·CE(lr_w)`.
//!   The returned features are the context features (`feature_scale = 0.5`).
//! - **logits** (`HRDAEncoderDecoder.encode_decode`, `HRDAHead.decode_hr`):
//!   context path + the detail path over overlapping windows (stride = half
//!   the crop) batched through the network and merged by count; unmasked
//!   attention. Inputs larger than `test_crop` go through the outer sliding
//!   window of `seg/mmseg/models/segmentors/encoder_decoder.py::EncoderDecoder.slide_inference`
//!   first.

use candle_core::{bail, Result, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::eval::inference::{slide_inference, window_starts};
use crate::nn::{ForwardCtx, SegModel};
use crate::ops::{cross_entropy, resize_bilinear, resize_bilinear_scale_factor, CeReduction};
use crate::train::objective::SegObjective;

/// The `[hrda]` table: settings of multi-resolution training and inference.
/// Defaults are the published HRDA (`configs/hrda/gtaHR2csHR_hrda.py`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HrdaConfig {
    /// Scale of the context (LR) path relative to the training crop (0.5).
    pub context_scale: f64,
    /// Detail (HR) crop (h, w) in pixels of the full-resolution training crop
    /// (512×512 of a 1024² crop); must fit the training crop.
    #[serde(deserialize_with = "crate::exact_len::array")]
    pub hr_crop: [usize; 2],
    /// Detail-crop offsets are multiples of this (8).
    pub crop_divisible: usize,
    /// Weight λ_hr of the detail-crop loss (0.1).
    pub hr_loss_weight: f64,
    /// Weight λ_lr of the attention-scaled context loss (0.0).
    pub lr_loss_weight: f64,
    /// One attention channel per class (true) or one shared channel.
    pub attention_classwise: bool,
    /// Inference runs the detail path on overlapping `hr_crop` windows (true)
    /// or on the whole image at once.
    pub hr_slide_inference: bool,
    /// Stride (h, w) of those windows; absent: half of `hr_crop`.
    #[serde(
        default,
        deserialize_with = "crate::exact_len::option_array",
        skip_serializing_if = "Option::is_none"
    )]
    pub hr_slide_stride: Option<[usize; 2]>,
    /// Outer sliding window (h, w) of test-time inference
    /// (`EncoderDecoder.slide_inference`): images larger than it are predicted
    /// window by window (1024×1024).
    #[serde(deserialize_with = "crate::exact_len::array")]
    pub test_crop: [usize; 2],
    /// Stride (h, w) of the outer sliding window (512×512).
    #[serde(deserialize_with = "crate::exact_len::array")]
    pub test_stride: [usize; 2],
}

impl Default for HrdaConfig {
    fn default() -> Self {
        Self {
            context_scale: 0.5,
            hr_crop: [512, 512],
            crop_divisible: 8,
            hr_loss_weight: 0.1,
            lr_loss_weight: 0.0,
            attention_classwise: true,
            hr_slide_inference: true,
            hr_slide_stride: None,
            test_crop: [1024, 1024],
            test_stride: [512, 512],
        }
    }
}

impl HrdaConfig {
    /// Checks serde cannot express; messages name the `hrda.*` key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.context_scale > 0.0 && self.context_scale < 1.0) {
            return Err(format!(
                "hrda.context_scale = {}: expected a value in (0, 1)",
                self.context_scale
            ));
        }
        if self.hr_crop.contains(&0) {
            return Err(format!(
                "hrda.hr_crop = {:?}: must be positive",
                self.hr_crop
            ));
        }
        if self.crop_divisible == 0 {
            return Err("hrda.crop_divisible must be at least 1".into());
        }
        let (a, b) = (self.hr_loss_weight, self.lr_loss_weight);
        if !(a >= 0.0 && b >= 0.0 && a + b <= 1.0) {
            return Err(format!(
                "hrda.hr_loss_weight = {a}, hrda.lr_loss_weight = {b}: expected non-negative weights with a sum ≤ 1"
            ));
        }
        if let Some(s) = self.hr_slide_stride {
            if s.contains(&0) {
                return Err(format!("hrda.hr_slide_stride = {s:?}: must be positive"));
            }
        }
        if self.test_crop.contains(&0) || self.test_stride.contains(&0) {
            return Err(format!(
                "hrda.test_crop = {:?}, hrda.test_stride = {:?}: must be positive",
                self.test_crop, self.test_stride
            ));
        }
        Ok(())
    }

    /// Stride of the detail windows at inference: `hr_slide_stride` or half the crop.
    pub fn hr_stride(&self) -> [usize; 2] {
        self.hr_slide_stride
            .unwrap_or([(self.hr_crop[0] / 2).max(1), (self.hr_crop[1] / 2).max(1)])
    }
}

/// Logistic sigmoid composed of Candle ops (so it has a backward on every
/// device): `1 / (1 + exp(−x))`; saturates to 0 / 1 without NaN.
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    (x.neg()?.exp()? + 1.0)?.recip()
}

/// A crop box `[y1, y2, x1, x2)` in pixels (the reference's `crop_bbox` order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    pub y1: usize,
    pub y2: usize,
    pub x1: usize,
    pub x2: usize,
}

impl CropBox {
    /// `hrda_head.py::scale_box`: every coordinate divided by `factor`; an
    /// error (not a silent truncation) when a coordinate is not a multiple.
    pub fn scaled_down(&self, factor: usize) -> Result<CropBox> {
        let c = [self.y1, self.y2, self.x1, self.x2];
        if factor == 0 || c.iter().any(|v| v % factor != 0) {
            bail!("HRDA: crop box {self:?} is not divisible by {factor} (hrda.crop_divisible must be a multiple of the head's output stride / context scale)");
        }
        Ok(CropBox {
            y1: self.y1 / factor,
            y2: self.y2 / factor,
            x1: self.x1 / factor,
            x2: self.x2 / factor,
        })
    }

    pub fn height(&self) -> usize {
        self.y2 - self.y1
    }

    pub fn width(&self) -> usize {
        self.x2 - self.x1
    }
}

/// Number of possible draws along one axis of `get_crop_bbox`:
/// `(margin + 1) // divisible` with `margin = max(len − crop, 0)`. The
/// reference's `np.random.randint(0, n)` excludes `n`, so the offset never
/// reaches the last grid position at `margin` (a 512 crop of 1024 with grid 8
/// starts at most at 504). With `n = 0` numpy raises; here the offset is 0.
pub fn crop_draw_count(len: usize, crop: usize, divisible: usize) -> usize {
    (len.saturating_sub(crop) + 1) / divisible.max(1)
}

/// `hrda_encoder_decoder.py::get_crop_bbox` with the two `randint` draws given:
/// offset = draw·divisible along each axis. Draws outside
/// `0..crop_draw_count` are an error.
pub fn crop_box_from_draws(
    (h, w): (usize, usize),
    crop: [usize; 2],
    divisible: usize,
    (draw_y, draw_x): (usize, usize),
) -> Result<CropBox> {
    if crop[0] > h || crop[1] > w {
        bail!("HRDA: hrda.hr_crop {crop:?} does not fit the {h}×{w} training crop");
    }
    let (ny, nx) = (
        crop_draw_count(h, crop[0], divisible),
        crop_draw_count(w, crop[1], divisible),
    );
    if draw_y >= ny.max(1) || draw_x >= nx.max(1) {
        bail!("HRDA: crop draws ({draw_y}, {draw_x}) outside 0..{ny} × 0..{nx}");
    }
    let (y1, x1) = (draw_y * divisible, draw_x * divisible);
    Ok(CropBox {
        y1,
        y2: y1 + crop[0],
        x1,
        x2: x1 + crop[1],
    })
}

/// `get_crop_bbox` drawing the offsets from `rng`.
pub fn random_crop_box<R: Rng + ?Sized>(
    (h, w): (usize, usize),
    crop: [usize; 2],
    divisible: usize,
    rng: &mut R,
) -> Result<CropBox> {
    let ny = crop_draw_count(h, crop[0], divisible).max(1);
    let nx = crop_draw_count(w, crop[1], divisible).max(1);
    let dy = rng.gen_range(0..ny);
    let dx = rng.gen_range(0..nx);
    crop_box_from_draws((h, w), crop, divisible, (dy, dx))
}

/// `crop(img, crop_bbox)` on the last two axes of a (…, H, W) tensor.
pub fn crop_hw(x: &Tensor, b: &CropBox) -> Result<Tensor> {
    let r = x.rank();
    if r < 2 {
        bail!(
            "HRDA crop: expected a tensor with at least 2 axes, got {:?}",
            x.dims()
        );
    }
    x.narrow(r - 2, b.y1, b.height())?
        .narrow(r - 1, b.x1, b.width())
}

/// The fusion of `HRDAHead.forward` on the head outputs.
#[derive(Debug, Clone)]
pub struct Fused {
    /// `up(att)·insert(hr_seg) + up((1 − att)·lr_seg)` at the HR head resolution.
    pub fused: Tensor,
    /// `(1 − att)·lr_seg` at the LR head resolution.
    pub lr_weighted: Tensor,
}

/// `HRDAHead.forward` given the head outputs.
///
/// - `lr_seg` (B, K, h, w): head on the context features;
/// - `hr` (B, K, h', w'): head on the detail crop (training: `box` is the
///   crop in fused-output pixels, already scaled by the head's output
///   stride) or the merged detail logits over the whole image (inference:
///   `box = None`, `hr` is at the fused size);
/// - `att_logits` (B, A, h, w), A = K or 1: the scale-attention head before
///   its sigmoid;
/// - `att_box`: the crop box in context-logit pixels; the attention is zero
///   outside it (training only).
///
/// The fused size is `ratio`·(h, w); the LR maps are resized bilinearly
/// (`align_corners = False`) to it, the attention and `(1 − att)·lr_seg`
/// separately, as in the reference.
pub fn fuse(
    lr_seg: &Tensor,
    hr: &Tensor,
    att_logits: &Tensor,
    boxes: Option<(CropBox, CropBox)>,
    fused_hw: (usize, usize),
) -> Result<Fused> {
    let (b, k, h, w) = lr_seg.dims4()?;
    let (ab, ak, ah, aw) = att_logits.dims4()?;
    if ab != b || (ak != k && ak != 1) || (ah, aw) != (h, w) {
        bail!(
            "HRDA fusion: attention {:?} does not match the context logits {:?}",
            att_logits.dims(),
            lr_seg.dims()
        );
    }
    let mut att = sigmoid(att_logits)?;
    let (fh, fw) = fused_hw;
    let hr_full = match boxes {
        Some((att_box, hr_box)) => {
            if att_box.y2 > h || att_box.x2 > w {
                bail!("HRDA fusion: attention box {att_box:?} outside the {h}×{w} context logits");
            }
            let mask = Tensor::ones(
                (1, 1, att_box.height(), att_box.width()),
                att.dtype(),
                att.device(),
            )?
            .pad_with_zeros(2, att_box.y1, h - att_box.y2)?
            .pad_with_zeros(3, att_box.x1, w - att_box.x2)?;
            att = att.broadcast_mul(&mask)?;
            let (_, _, hh, hw) = hr.dims4()?;
            if (hh, hw) != (hr_box.height(), hr_box.width()) || hr_box.y2 > fh || hr_box.x2 > fw {
                bail!("HRDA fusion: detail logits {:?} do not fill box {hr_box:?} of the {fh}×{fw} output", hr.dims());
            }
            hr.pad_with_zeros(2, hr_box.y1, fh - hr_box.y2)?
                .pad_with_zeros(3, hr_box.x1, fw - hr_box.x2)?
        }
        None => {
            let (_, _, hh, hw) = hr.dims4()?;
            if (hh, hw) != (fh, fw) {
                bail!(
                    "HRDA fusion: detail logits {:?} are not at the fused size {fh}×{fw}",
                    hr.dims()
                );
            }
            hr.clone()
        }
    };
    let one_minus = att.affine(-1.0, 1.0)?;
    let lr_weighted = one_minus.broadcast_mul(lr_seg)?;
    let up_lr = resize_bilinear(&lr_weighted, fh, fw)?;
    let up_att = resize_bilinear(&att, fh, fw)?;
    let fused = (up_att.broadcast_mul(&hr_full)? + up_lr)?;
    Ok(Fused { fused, lr_weighted })
}

/// `HRDAHead.decode_hr` merge: window logits (n·B, K, h, w), in the order of
/// `boxes` (output pixels), pasted into a zero canvas of size `out_hw`,
/// summed and divided by the per-pixel count. Every output pixel must be
/// covered.
pub fn merge_windows(
    logits: &Tensor,
    bs: usize,
    boxes: &[CropBox],
    out_hw: (usize, usize),
) -> Result<Tensor> {
    let (n, _, wh, ww) = logits.dims4()?;
    if n != bs * boxes.len() {
        bail!(
            "HRDA window merge: {n} window logits for {} boxes × batch {bs}",
            boxes.len()
        );
    }
    let (h, w) = out_hw;
    let mut sum: Option<Tensor> = None;
    let mut count = vec![0f32; h * w];
    for (i, b) in boxes.iter().enumerate() {
        if (b.height(), b.width()) != (wh, ww) || b.y2 > h || b.x2 > w {
            bail!("HRDA window merge: box {b:?} does not hold {wh}×{ww} logits inside {h}×{w}");
        }
        let placed = logits
            .narrow(0, i * bs, bs)?
            .pad_with_zeros(2, b.y1, h - b.y2)?
            .pad_with_zeros(3, b.x1, w - b.x2)?;
        sum = Some(match sum {
            None => placed,
            Some(s) => (s + placed)?,
        });
        for y in b.y1..b.y2 {
            for c in &mut count[y * w + b.x1..y * w + b.x2] {
                *c += 1.0;
            }
        }
    }
    if count.contains(&0.0) {
        bail!("HRDA window merge: the windows leave pixels of the {h}×{w} output uncovered");
    }
    let sum = sum.ok_or_else(|| candle_core::Error::Msg("HRDA window merge: no window".into()))?;
    let count = Tensor::from_vec(count, (1, 1, h, w), logits.device())?.to_dtype(sum.dtype())?;
    sum.broadcast_div(&count)
}

/// `HRDAHead.losses`:
/// `m·(1 − λ_lr − λ_hr)·CE(up(fused), y, w) + λ_hr·CE(up(hr_seg), crop(y), crop(w)) +
/// λ_lr·CE(up(lr_w), y, w)`, each logit map bilinearly resized to its label.
/// `hr_box` is the detail crop in label pixels. `main_weight` (m) scales the
/// fused term only, mmseg's `decode.loss_seg`: 1 in HRDA, MIC's
/// `mask_lambda` for the masked loss.
#[allow(clippy::too_many_arguments)]
pub fn hrda_loss(
    fused: &Tensor,
    hr_seg: &Tensor,
    lr_weighted: &Tensor,
    hr_box: &CropBox,
    label: &Tensor,
    weight: Option<&Tensor>,
    (hr_w, lr_w): (f64, f64),
    main_weight: f64,
    reduction: CeReduction,
) -> Result<Tensor> {
    let ce = |logits: &Tensor, y: &Tensor, wt: Option<&Tensor>| -> Result<Tensor> {
        let (_, hh, ww) = y.dims3()?;
        cross_entropy(&resize_bilinear(logits, hh, ww)?, y, wt, reduction)
    };
    let mut loss = (ce(fused, label, weight)? * ((1.0 - hr_w - lr_w) * main_weight))?;
    if hr_w > 0.0 {
        let y = crop_hw(label, hr_box)?;
        let wt = weight.map(|t| crop_hw(t, hr_box)).transpose()?;
        loss = (loss + (ce(hr_seg, &y, wt.as_ref())? * hr_w)?)?;
    }
    if lr_w > 0.0 {
        loss = (loss + (ce(lr_weighted, label, weight)? * lr_w)?)?;
    }
    Ok(loss)
}

/// HRDA as a [`SegObjective`]; the model must have a scale-attention head
/// (`model.scale_attention = true`).
#[derive(Debug, Clone)]
pub struct MultiResolution {
    pub cfg: HrdaConfig,
    pub reduction: CeReduction,
}

impl MultiResolution {
    pub fn new(cfg: HrdaConfig) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        Ok(Self {
            cfg,
            reduction: CeReduction::MeanAll,
        })
    }

    /// The context image: the input downscaled by `context_scale` as the
    /// reference's `resize(img, scale_factor=s, mode='bilinear',
    /// align_corners=False)` does (`lhoyer/HRDA
    /// mmseg/models/segmentors/hrda_encoder_decoder.py::HRDAEncoderDecoder.resize`,
    /// which calls `mmseg/ops/wrappers.py::resize`): size `floor(H·s)`, coordinates
    /// mapped with `1/s` ([`resize_bilinear_scale_factor`]).
    pub fn context_image(&self, image: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = image.dims4()?;
        let s = self.cfg.context_scale;
        let (lh, lw) = (
            ((h as f64) * s).floor() as usize,
            ((w as f64) * s).floor() as usize,
        );
        if lh == 0 || lw == 0 {
            bail!("HRDA: a {h}×{w} image is too small for context scale {s}");
        }
        resize_bilinear_scale_factor(image, s)
    }

    fn attention(
        &self,
        model: &dyn SegModel,
        features: &[Tensor],
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        match model.scale_attention(features, ctx)? {
            Some(a) => Ok(a),
            None => bail!(
                "HRDA needs a model with a scale-attention head (set model.scale_attention = true)"
            ),
        }
    }

    /// Integer ratio of `full` to `part`, or an error naming what is compared.
    fn ratio(full: usize, part: usize, what: &str) -> Result<usize> {
        if part == 0 || !full.is_multiple_of(part) {
            bail!("HRDA: {what}: {full} is not a multiple of {part}");
        }
        Ok(full / part)
    }

    /// `HRDAEncoderDecoder.encode_decode` of one image batch (no outer
    /// window), logits at the head's HR resolution.
    fn encode_decode(
        &self,
        model: &dyn SegModel,
        image: &Tensor,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let (bs, _, h, w) = image.dims4()?;
        let f_lr = model.features(&self.context_image(image)?, ctx)?;
        let lr_seg = model.decode(&f_lr, ctx)?;
        let att = self.attention(model, &f_lr, ctx)?;
        let [ch, cw] = self.cfg.hr_crop;
        let hr = if self.cfg.hr_slide_inference && (ch < h || cw < w) {
            let (ch, cw) = (ch.min(h), cw.min(w));
            let [sh, sw] = self.cfg.hr_stride();
            let mut boxes = Vec::new();
            let mut crops = Vec::new();
            for &y in &window_starts(h, ch, sh) {
                for &x in &window_starts(w, cw, sw) {
                    let b = CropBox {
                        y1: y,
                        y2: y + ch,
                        x1: x,
                        x2: x + cw,
                    };
                    crops.push(crop_hw(image, &b)?);
                    boxes.push(b);
                }
            }
            // All windows in one batch through encoder and head, like
            // `extract_slide_feat` (BatchNorm in train mode sees them together).
            let logits = model.forward(&Tensor::cat(&crops, 0)?, ctx)?;
            let (_, _, lh, _) = logits.dims4()?;
            let os = Self::ratio(ch, lh, "detail window / head output")?;
            let boxes = boxes
                .iter()
                .map(|b| b.scaled_down(os))
                .collect::<Result<Vec<_>>>()?;
            merge_windows(&logits, bs, &boxes, (h / os, w / os))?
        } else {
            model.forward(image, ctx)?
        };
        let (_, _, fh, fw) = hr.dims4()?;
        Ok(fuse(&lr_seg, &hr, &att, None, (fh, fw))?.fused)
    }
}

impl SegObjective for MultiResolution {
    /// The detail term keeps its weight when the main term is scaled.
    fn main_weight_scales_everything(&self) -> bool {
        false
    }

    fn loss(
        &self,
        model: &dyn SegModel,
        image: &Tensor,
        label: &Tensor,
        weight: Option<&Tensor>,
        ctx: &mut ForwardCtx,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        self.loss_with_main_weight(model, image, label, weight, ctx, 1.0)
    }

    /// Scales the fused term only; the detail (and context) terms keep their
    /// weights, as MIC's `mask_lambda` leaves `decode.hr.loss_seg` alone.
    fn loss_with_main_weight(
        &self,
        model: &dyn SegModel,
        image: &Tensor,
        label: &Tensor,
        weight: Option<&Tensor>,
        ctx: &mut ForwardCtx,
        main_weight: f64,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let (_, _, h, w) = image.dims4()?;
        let (_, lh, lw) = label.dims3()?;
        if (lh, lw) != (h, w) {
            bail!("HRDA loss: label {lh}×{lw} differs from the image {h}×{w}");
        }
        let crop_box = random_crop_box(
            (h, w),
            self.cfg.hr_crop,
            self.cfg.crop_divisible,
            &mut *ctx.rng,
        )?;
        let f_lr = model.features(&self.context_image(image)?, ctx)?;
        let f_hr = model.features(&crop_hw(image, &crop_box)?, ctx)?;
        let lr_seg = model.decode(&f_lr, ctx)?;
        let hr_seg = model.decode(&f_hr, ctx)?;
        let att = self.attention(model, &f_lr, ctx)?;
        // Head output stride and the scale of the context logits, from shapes.
        let (_, _, hh, _) = hr_seg.dims4()?;
        let os = Self::ratio(crop_box.height(), hh, "detail crop / head output")?;
        let (_, _, ah, _) = att.dims4()?;
        let lr_os = Self::ratio(h, ah, "training crop / context logits")?;
        let fused = fuse(
            &lr_seg,
            &hr_seg,
            &att,
            Some((crop_box.scaled_down(lr_os)?, crop_box.scaled_down(os)?)),
            (h / os, w / os),
        )?;
        let loss = hrda_loss(
            &fused.fused,
            &hr_seg,
            &fused.lr_weighted,
            &crop_box,
            label,
            weight,
            (self.cfg.hr_loss_weight, self.cfg.lr_loss_weight),
            main_weight,
            self.reduction,
        )?;
        Ok((loss, f_lr))
    }

    fn logits(&self, model: &dyn SegModel, image: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let (_, _, h, w) = image.dims4()?;
        let [th, tw] = self.cfg.test_crop;
        if h > th || w > tw {
            // As in `EncoderDecoder.slide_inference`, every window runs the full HRDA
            // inference; one context generator state serves all windows (evaluation
            // draws nothing).
            let cell = std::cell::RefCell::new(ctx);
            let f = |win: &Tensor| -> Result<Tensor> {
                let mut guard = cell.borrow_mut();
                let (_, _, wh, ww) = win.dims4()?;
                resize_bilinear(&self.encode_decode(model, win, &mut guard)?, wh, ww)
            };
            return slide_inference(
                image,
                (th, tw),
                (self.cfg.test_stride[0], self.cfg.test_stride[1]),
                &f,
            );
        }
        resize_bilinear(&self.encode_decode(model, image, ctx)?, h, w)
    }

    fn feature_input(&self, image: &Tensor) -> Result<Tensor> {
        self.context_image(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::result::Result<HrdaConfig, String> {
        let cfg: HrdaConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    #[test]
    fn hrda_table_parses_and_bad_values_name_the_key() {
        let cfg = parse("hr_crop = [64, 64]\nhr_slide_stride = [16, 16]\n").unwrap();
        assert_eq!(cfg.hr_crop, [64, 64]);
        assert_eq!(cfg.hr_stride(), [16, 16]);
        assert_eq!(cfg.context_scale, 0.5);
        let err = parse("hr_crops = [64, 64]\n").unwrap_err();
        assert!(err.contains("hr_crops"), "{err}");
        for (text, key) in [
            ("context_scale = 1.0", "hrda.context_scale"),
            ("crop_divisible = 0", "hrda.crop_divisible"),
            (
                "hr_loss_weight = 0.7\nlr_loss_weight = 0.5",
                "hrda.hr_loss_weight",
            ),
            ("test_stride = [0, 8]", "hrda.test_stride"),
        ] {
            let err = parse(&format!("{text}\n")).unwrap_err();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn scale_box_needs_divisible_coordinates() {
        let b = CropBox {
            y1: 8,
            y2: 40,
            x1: 16,
            x2: 48,
        };
        assert_eq!(
            b.scaled_down(8).unwrap(),
            CropBox {
                y1: 1,
                y2: 5,
                x1: 2,
                x2: 6
            }
        );
        let err = b.scaled_down(16).unwrap_err().to_string();
        assert!(err.contains("crop_divisible"), "{err}");
    }
}
