//! Strong augmentation of mixed images: colour jitter and Gaussian blur.
//!
//! Semantics follow `lhoyer/MIC seg/mmseg/models/utils/dacs_transforms.py`
//! (`strong_transform` = `one_mix` → `color_jitter` → `gaussian_blur`, `denorm`,
//! `renorm_`) with the colour operations of kornia 0.5.8 (the pinned reference
//! version; read from its wheel): `kornia/augmentation/augmentation.py::ColorJitter`,
//! `kornia/enhance/adjust.py` (`adjust_brightness`, `adjust_contrast`,
//! `adjust_saturation`, `adjust_hue`), `kornia/color/hsv.py` (`rgb_to_hsv`,
//! `hsv_to_rgb`) and `kornia/filters/gaussian.py::gaussian_blur2d` /
//! `kornia/filters/kernels.py::gaussian`.
//!
//! Every random function is split in two: a *decide* part that draws plain
//! parameters from a caller-provided [`rand::Rng`] ([`ColorJitterParams::sample`],
//! [`sample_blur_sigma`], [`StrongAugConfig::decide`], [`StrongAugConfig::sample`])
//! and a pure *apply* part that takes them ([`color_jitter`], [`gaussian_blur`],
//! [`StrongAugParams::apply`]).
//!
//! Images are (C, H, W) or (B, C, H, W) float tensors normalised with
//! [`IMAGENET_MEAN`] / [`IMAGENET_STD`] (RGB, 0-255 scale); the colour functions
//! need C = 3. Every op runs on the device of its input: on the CPU with `f32`,
//! colour jitter and blur are fused loops (parallel over pixels / planes); other
//! devices and dtypes use the `*_composed` paths built from Candle ops, which tests
//! check against the CPU loops and against kornia. Labels are never touched.

use std::f64::consts::PI;

use candle_core::{bail, DType, Device, Result, Storage, Tensor};
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Per-channel mean (RGB, 0-255 scale) of the mmseg `Normalize` step.
pub const IMAGENET_MEAN: [f32; 3] = [123.675, 116.28, 103.53];
/// Per-channel standard deviation (RGB, 0-255 scale) of the mmseg `Normalize` step.
pub const IMAGENET_STD: [f32; 3] = [58.395, 57.12, 57.375];

/// Numerical guard of kornia 0.5.8 `rgb_to_hsv` (`s = Δ / (v + eps)`).
const HSV_EPS: f64 = 1e-6;

// ---------------------------------------------------------------------------
// Normalisation
// ---------------------------------------------------------------------------

/// Normalised image (…, 3, H, W) → RGB in [0, 1]: `(x·std + mean) / 255`
/// (`dacs_transforms.py::denorm`, same operation order).
pub fn denorm(img: &Tensor) -> Result<Tensor> {
    let cd = colour_dim("denorm", img)?;
    let (mean, std) = mean_std(img, cd)?;
    let d255 = scalar_like(255.0, img)?;
    img.broadcast_mul(&std)?
        .broadcast_add(&mean)?
        .broadcast_div(&d255)
}

/// RGB in [0, 1] (…, 3, H, W) → normalised: `(x·255 − mean) / std`
/// (`dacs_transforms.py::renorm_`, same operation order).
pub fn renorm(img: &Tensor) -> Result<Tensor> {
    let cd = colour_dim("renorm", img)?;
    let (mean, std) = mean_std(img, cd)?;
    img.affine(255.0, 0.0)?
        .broadcast_sub(&mean)?
        .broadcast_div(&std)
}

/// Mean and std as tensors shaped to broadcast against `img` on its channel dim.
fn mean_std(img: &Tensor, cd: usize) -> Result<(Tensor, Tensor)> {
    let mut shape = vec![1usize; img.rank() - cd];
    shape[0] = 3;
    let mk = |v: [f32; 3]| -> Result<Tensor> {
        Tensor::from_slice(&v, shape.as_slice(), img.device())?.to_dtype(img.dtype())
    };
    Ok((mk(IMAGENET_MEAN)?, mk(IMAGENET_STD)?))
}

/// A rank-0 tensor of `img`'s dtype and device.
fn scalar_like(v: f64, img: &Tensor) -> Result<Tensor> {
    Tensor::new(v, img.device())?.to_dtype(img.dtype())
}

/// Channel dim of an RGB image (C, H, W) or (B, C, H, W) with C = 3.
fn colour_dim(op: &str, img: &Tensor) -> Result<usize> {
    let cd = match img.rank() {
        3 => 0,
        4 => 1,
        _ => bail!(
            "{op}: image must be (3, H, W) or (B, 3, H, W), got shape {:?}",
            img.dims()
        ),
    };
    if img.dims()[cd] != 3 {
        bail!(
            "{op}: image must have 3 (RGB) channels, got shape {:?}",
            img.dims()
        );
    }
    if !img.dtype().is_float() {
        bail!("{op}: image must be a float tensor, got {:?}", img.dtype());
    }
    Ok(cd)
}

// ---------------------------------------------------------------------------
// Colour jitter (kornia 0.5.8)
// ---------------------------------------------------------------------------

/// Parameters of one colour jitter (kornia 0.5.8 `ColorJitter`, one sample).
///
/// `order[k]` is the operation applied k-th, numbered like kornia's transform
/// list: 0 brightness, 1 contrast, 2 saturation, 3 hue.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ColorJitterParams {
    /// Additive brightness shift `f − 1` (kornia draws the factor f and applies
    /// `adjust_brightness(x, f − 1)`).
    pub brightness: f32,
    /// Multiplicative contrast factor (≥ 0).
    pub contrast: f32,
    /// Saturation factor applied to the HSV saturation.
    pub saturation: f32,
    /// Hue shift in radians (kornia draws `h ~ U[−s, s]` and applies `h·2π`).
    pub hue: f32,
    /// Order of the four operations.
    pub order: [usize; 4],
}

impl ColorJitterParams {
    /// Parameters that leave an image unchanged (up to rounding of the HSV round
    /// trips).
    pub const IDENTITY: ColorJitterParams = ColorJitterParams {
        brightness: 0.0,
        contrast: 1.0,
        saturation: 1.0,
        hue: 0.0,
        order: [0, 1, 2, 3],
    };

    /// Draws the parameters of `ColorJitter(brightness=s, contrast=s,
    /// saturation=s, hue=s)` with `s = strength` (negative taken as 0), with the
    /// ranges of kornia 0.5.8 `_range_bound`:
    /// brightness factor `f ~ U[max(0, 1−s), min(2, 1+s)]`, stored as `f − 1`;
    /// contrast and saturation `~ U[max(0, 1−s), 1+s]`;
    /// hue `~ U[−min(s, 0.5), min(s, 0.5)]`, stored ×2π (radians).
    ///
    /// Draw order (stable; part of exact resume), kornia's
    /// `random_color_jitter_generator` order: brightness, contrast, hue,
    /// saturation, each `lo + (hi − lo)·u` with one `u = rng.gen::<f32>()`; then
    /// the order, a Fisher-Yates shuffle of `[0, 1, 2, 3]`: for `i` = 3, 2, 1 one
    /// draw `j = rng.gen_range(0..=i)` and a swap of positions `i` and `j`.
    pub fn sample<R: Rng + ?Sized>(rng: &mut R, strength: f32) -> Self {
        let s = if strength > 0.0 { strength } else { 0.0 };
        let brightness = uniform(rng, (1.0 - s).max(0.0), (1.0 + s).min(2.0)) - 1.0;
        let contrast = uniform(rng, (1.0 - s).max(0.0), 1.0 + s);
        let hs = s.min(0.5);
        let hue = uniform(rng, -hs, hs) * (2.0 * PI) as f32;
        let saturation = uniform(rng, (1.0 - s).max(0.0), 1.0 + s);
        let mut order = [0usize, 1, 2, 3];
        for i in (1..4).rev() {
            let j = rng.gen_range(0..=i);
            order.swap(i, j);
        }
        ColorJitterParams {
            brightness,
            contrast,
            saturation,
            hue,
            order,
        }
    }

    fn check_order(&self) -> Result<()> {
        let mut seen = [false; 4];
        for &o in &self.order {
            match seen.get_mut(o) {
                Some(s) if !*s => *s = true,
                _ => bail!(
                    "color_jitter: order must be a permutation of [0, 1, 2, 3], got {:?}",
                    self.order
                ),
            }
        }
        Ok(())
    }
}

/// `lo + (hi − lo)·u`, `u = rng.gen::<f32>()` in [0, 1): one draw, never panics on
/// an empty range.
fn uniform<R: Rng + ?Sized>(rng: &mut R, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.gen::<f32>()
}

/// Colour jitter of a normalised image (3, H, W) or (B, 3, H, W) (every image of a
/// batch gets the same `params`), as in `dacs_transforms.py::color_jitter`:
/// [`denorm`] to [0, 1], [`color_jitter_unit`], [`renorm`].
///
/// On the CPU with `f32` this runs as one fused per-pixel loop
/// ([`color_jitter_composed`] is the device-generic path; both follow the same
/// formulas step by step).
pub fn color_jitter(img: &Tensor, params: &ColorJitterParams) -> Result<Tensor> {
    colour_dim("color_jitter", img)?;
    params.check_order()?;
    match (img.device(), img.dtype()) {
        (Device::Cpu, DType::F32) => jitter_cpu(img, params, true),
        _ => color_jitter_composed(img, params),
    }
}

/// Device-generic path of [`color_jitter`], composed of Candle ops.
pub fn color_jitter_composed(img: &Tensor, params: &ColorJitterParams) -> Result<Tensor> {
    renorm(&color_jitter_unit_composed(&denorm(img)?, params)?)
}

/// Colour jitter of an RGB image in [0, 1] (kornia 0.5.8
/// `ColorJitter.apply_transform`): the four adjustments applied in
/// `params.order`.
///
/// Clamping follows kornia 0.5.8 exactly: brightness and contrast clamp to [0, 1]
/// after the operation; saturation and hue go through HSV and back, which stays in
/// [0, 1] by construction, and kornia does not clamp them.
///
/// Contrast is kornia 0.5.8's `adjust_contrast`: a plain multiplication by the
/// factor, then the clamp; it is **not** a blend with the mean grey level
/// (torchvision's definition). The reference environment pins kornia 0.5.8, so
/// this is what the reference trains with.
///
/// CPU `f32`: fused per-pixel loop; elsewhere [`color_jitter_unit_composed`].
pub fn color_jitter_unit(img: &Tensor, params: &ColorJitterParams) -> Result<Tensor> {
    colour_dim("color_jitter", img)?;
    params.check_order()?;
    match (img.device(), img.dtype()) {
        (Device::Cpu, DType::F32) => jitter_cpu(img, params, false),
        _ => color_jitter_unit_composed(img, params),
    }
}

/// Device-generic path of [`color_jitter_unit`]: [`adjust_brightness`],
/// [`adjust_contrast`], [`adjust_saturation`], [`adjust_hue`] in `params.order`.
pub fn color_jitter_unit_composed(img: &Tensor, params: &ColorJitterParams) -> Result<Tensor> {
    colour_dim("color_jitter", img)?;
    params.check_order()?;
    let mut x = img.clone();
    for &op in &params.order {
        x = match op {
            0 => adjust_brightness(&x, params.brightness)?,
            1 => adjust_contrast(&x, params.contrast)?,
            2 => adjust_saturation(&x, params.saturation)?,
            _ => adjust_hue(&x, params.hue)?,
        };
    }
    Ok(x)
}

/// Pixels per parallel task of the CPU loops.
const CHUNK: usize = 4096;

/// Runs `f` on the contiguous `f32` data of a CPU tensor.
pub(crate) fn with_cpu_f32<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<T>) -> Result<T> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let data = match &*storage {
        Storage::Cpu(cpu) => cpu.as_slice::<f32>()?,
        _ => bail!("with_cpu_f32: tensor is not on the CPU"),
    };
    let start = layout.start_offset();
    f(&data[start..start + layout.shape().elem_count()])
}

/// Fused CPU colour jitter of (…, 3, H, W) `f32`; `normalised` adds the
/// denorm/renorm steps around it.
fn jitter_cpu(img: &Tensor, params: &ColorJitterParams, normalised: bool) -> Result<Tensor> {
    if params.contrast < 0.0 {
        bail!(
            "adjust_contrast: factor must be non-negative, got {}",
            params.contrast
        );
    }
    let dims = img.dims();
    let r = dims.len();
    let hw = dims[r - 2] * dims[r - 1];
    let out = with_cpu_f32(img, |x| {
        let mut out = vec![0f32; x.len()];
        // One task per chunk of pixels of one image; the three planes of image
        // `b` start at `3·b·hw`.
        let images = x.len() / (3 * hw).max(1);
        let tasks: Vec<(usize, usize)> = (0..images)
            .flat_map(|b| (0..hw).step_by(CHUNK).map(move |p| (b, p)))
            .collect();
        let results: Vec<Vec<[f32; 3]>> = tasks
            .par_iter()
            .map(|&(b, p0)| {
                let base = 3 * b * hw;
                (p0..(p0 + CHUNK).min(hw))
                    .map(|p| {
                        let mut px = [x[base + p], x[base + hw + p], x[base + 2 * hw + p]];
                        if normalised {
                            for (c, v) in px.iter_mut().enumerate() {
                                *v = (*v * IMAGENET_STD[c] + IMAGENET_MEAN[c]) / 255.0;
                            }
                        }
                        let mut px = jitter_pixel(px, params);
                        if normalised {
                            for (c, v) in px.iter_mut().enumerate() {
                                *v = (*v * 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
                            }
                        }
                        px
                    })
                    .collect()
            })
            .collect();
        for (&(b, p0), vals) in tasks.iter().zip(results) {
            let base = 3 * b * hw;
            for (j, px) in vals.into_iter().enumerate() {
                for (c, v) in px.into_iter().enumerate() {
                    out[base + c * hw + p0 + j] = v;
                }
            }
        }
        Ok(out)
    })?;
    Tensor::from_vec(out, img.shape(), img.device())
}

/// One pixel of [`color_jitter_unit`]: the same `f32` operations as the composed
/// ops, in the same order (Candle's `affine(m, a)` is `v·m + a`; `v·1 + a`,
/// `v·m + 0` and `v·(−1) + 1` are written `v + a`, `v·m`, `1 − v`, which round
/// identically).
fn jitter_pixel(mut px: [f32; 3], p: &ColorJitterParams) -> [f32; 3] {
    for &op in &p.order {
        match op {
            0 => {
                for v in px.iter_mut() {
                    *v = (*v + p.brightness).clamp(0.0, 1.0);
                }
            }
            1 => {
                for v in px.iter_mut() {
                    *v = (*v * p.contrast).clamp(0.0, 1.0);
                }
            }
            2 => {
                let [h, s, v] = rgb_to_hsv_pixel(px);
                let s = (s * p.saturation).clamp(0.0, 1.0);
                px = hsv_to_rgb_pixel([h, s, v]);
            }
            _ => {
                let [h, s, v] = rgb_to_hsv_pixel(px);
                let h = fmod_f32(h + p.hue, 2.0 * PI);
                px = hsv_to_rgb_pixel([h, s, v]);
            }
        }
    }
    px
}

/// Per-pixel [`rgb_to_hsv`].
fn rgb_to_hsv_pixel([r, g, b]: [f32; 3]) -> [f32; 3] {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let delta = maxc - minc;
    let s = delta / (maxc + HSV_EPS as f32);
    let delta = if delta == 0.0 { 1.0 } else { delta };
    let (rc, gc, bc) = (maxc - r, maxc - g, maxc - b);
    let h = if r == maxc {
        bc - gc
    } else if g == maxc {
        (delta * 2.0 + rc) - bc
    } else {
        (delta * 4.0 + gc) - rc
    };
    let h = h / delta;
    let h = remainder_f32(h * (1.0 / 6.0f64) as f32, 1.0);
    [h * (2.0 * PI) as f32, s, maxc]
}

/// Per-pixel [`hsv_to_rgb`].
fn hsv_to_rgb_pixel([h, s, v]: [f32; 3]) -> [f32; 3] {
    let h6 = h * (6.0 / (2.0 * PI)) as f32;
    let hi = remainder_f32(h6.floor(), 6.0);
    let f = remainder_f32(h6, 6.0) - hi;
    let p = v * (1.0 - s);
    let q = v * (1.0 - f * s);
    let t = v * (1.0 - (1.0 - f) * s);
    // hi is an exact integer in 0..=5; anything else (NaN) falls to sector 5
    // like the composed selection.
    if hi == 0.0 {
        [v, t, p]
    } else if hi == 1.0 {
        [q, v, p]
    } else if hi == 2.0 {
        [p, v, t]
    } else if hi == 3.0 {
        [p, q, v]
    } else if hi == 4.0 {
        [t, p, v]
    } else {
        [v, p, q]
    }
}

/// Scalar [`remainder`] with the same `f32` steps.
fn remainder_f32(x: f32, m: f64) -> f32 {
    x - (x * (1.0 / m) as f32).floor() * m as f32
}

/// Scalar [`fmod`] with the same `f32` steps.
fn fmod_f32(x: f32, m: f64) -> f32 {
    let y = x * (1.0 / m) as f32;
    let t = if y >= 0.0 { y.floor() } else { y.ceil() };
    x - t * m as f32
}

/// `clamp(x + shift, 0, 1)` (kornia 0.5.8 `adjust_brightness`; additive).
pub fn adjust_brightness(img: &Tensor, shift: f32) -> Result<Tensor> {
    img.affine(1.0, shift as f64)?.clamp(0f32, 1f32)
}

/// `clamp(x·factor, 0, 1)` (kornia 0.5.8 `adjust_contrast`; see
/// [`color_jitter_unit`] for why this is not a blend with the mean).
/// Errors on a negative factor, like kornia.
pub fn adjust_contrast(img: &Tensor, factor: f32) -> Result<Tensor> {
    if factor < 0.0 {
        bail!("adjust_contrast: factor must be non-negative, got {factor}");
    }
    img.affine(factor as f64, 0.0)?.clamp(0f32, 1f32)
}

/// HSV saturation times `factor`, clamped to [0, 1] (kornia 0.5.8
/// `adjust_saturation`: `rgb_to_hsv`, `adjust_saturation_raw`, `hsv_to_rgb`).
/// Factor 0 gives the grey image R = G = B = max(R, G, B).
pub fn adjust_saturation(img: &Tensor, factor: f32) -> Result<Tensor> {
    let cd = colour_dim("adjust_saturation", img)?;
    let hsv = rgb_to_hsv(img)?;
    let (h, s, v) = split3(&hsv, cd)?;
    let s = s.affine(factor as f64, 0.0)?.clamp(0f32, 1f32)?;
    hsv_to_rgb(&Tensor::cat(&[h, s, v], cd)?)
}

/// Hue rotated by `radians` (kornia 0.5.8 `adjust_hue`: `rgb_to_hsv`,
/// `h = fmod(h + radians, 2π)`, `hsv_to_rgb`). A shift of 2π is the identity up to
/// rounding.
pub fn adjust_hue(img: &Tensor, radians: f32) -> Result<Tensor> {
    let cd = colour_dim("adjust_hue", img)?;
    let hsv = rgb_to_hsv(img)?;
    let (h, s, v) = split3(&hsv, cd)?;
    let h = fmod(&h.affine(1.0, radians as f64)?, 2.0 * PI)?;
    hsv_to_rgb(&Tensor::cat(&[h, s, v], cd)?)
}

/// RGB in [0, 1] → HSV with H in [0, 2π), S and V in [0, 1] (kornia 0.5.8
/// `rgb_to_hsv`, eps 1e-6): `v = max`, `s = Δ / (v + eps)`, hue from the first
/// channel (R, then G, then B) that attains the maximum; Δ = 0 gives hue 0.
pub fn rgb_to_hsv(img: &Tensor) -> Result<Tensor> {
    let cd = colour_dim("rgb_to_hsv", img)?;
    let (r, g, b) = split3(img, cd)?;
    let maxc = r.maximum(&g)?.maximum(&b)?;
    let minc = r.minimum(&g)?.minimum(&b)?;
    let delta = maxc.sub(&minc)?;
    let s = delta.div(&maxc.affine(1.0, HSV_EPS)?)?;
    // Avoid 0/0 for grey pixels: their hue numerators are 0, so hue becomes 0.
    let delta = delta.eq(0f32)?.where_cond(&delta.ones_like()?, &delta)?;
    let rc = maxc.sub(&r)?;
    let gc = maxc.sub(&g)?;
    let bc = maxc.sub(&b)?;
    let h_r = bc.sub(&gc)?;
    let h_g = delta.affine(2.0, 0.0)?.add(&rc)?.sub(&bc)?;
    let h_b = delta.affine(4.0, 0.0)?.add(&gc)?.sub(&rc)?;
    let h = r
        .eq(&maxc)?
        .where_cond(&h_r, &g.eq(&maxc)?.where_cond(&h_g, &h_b)?)?;
    let h = h.div(&delta)?;
    let h = remainder(&h.affine(1.0 / 6.0, 0.0)?, 1.0)?.affine(2.0 * PI, 0.0)?;
    Tensor::cat(&[h, s, maxc], cd)
}

/// HSV (H in radians, any real value; S, V in [0, 1]) → RGB (kornia 0.5.8
/// `hsv_to_rgb`): sector `hi = floor(6h/2π) mod 6`, fraction `f`, and the usual
/// `p, q, t` table.
pub fn hsv_to_rgb(img: &Tensor) -> Result<Tensor> {
    let cd = colour_dim("hsv_to_rgb", img)?;
    let (h, s, v) = split3(img, cd)?;
    let h6 = h.affine(6.0 / (2.0 * PI), 0.0)?;
    let hi = remainder(&h6.floor()?, 6.0)?;
    let f = remainder(&h6, 6.0)?.sub(&hi)?;
    let p = v.mul(&s.affine(-1.0, 1.0)?)?;
    let q = v.mul(&f.mul(&s)?.affine(-1.0, 1.0)?)?;
    let t = v.mul(&f.affine(-1.0, 1.0)?.mul(&s)?.affine(-1.0, 1.0)?)?;
    // Values per sector 0..=5 (kornia's 18-entry gather table).
    let sectors: Vec<Tensor> = (0..6).map(|k| hi.eq(k as f32)).collect::<Result<_>>()?;
    let pick = |vals: [&Tensor; 6]| -> Result<Tensor> {
        let mut out = vals[5].clone();
        for k in (0..5).rev() {
            out = sectors[k].where_cond(vals[k], &out)?;
        }
        Ok(out)
    };
    let red = pick([&v, &q, &p, &p, &t, &v])?;
    let green = pick([&t, &v, &v, &q, &p, &p])?;
    let blue = pick([&p, &p, &t, &v, &v, &q])?;
    Tensor::cat(&[red, green, blue], cd)
}

/// The three channels of `x` along `cd`, each keeping the dim (size 1).
fn split3(x: &Tensor, cd: usize) -> Result<(Tensor, Tensor, Tensor)> {
    Ok((
        x.narrow(cd, 0, 1)?,
        x.narrow(cd, 1, 1)?,
        x.narrow(cd, 2, 1)?,
    ))
}

/// Python / `torch.remainder` semantics: `x − m·floor(x/m)`, sign of `m`.
fn remainder(x: &Tensor, m: f64) -> Result<Tensor> {
    x.sub(&x.affine(1.0 / m, 0.0)?.floor()?.affine(m, 0.0)?)
}

/// C / `torch.fmod` semantics: `x − m·trunc(x/m)`, sign of `x`.
fn fmod(x: &Tensor, m: f64) -> Result<Tensor> {
    let y = x.affine(1.0 / m, 0.0)?;
    let trunc = y.ge(0f32)?.where_cond(&y.floor()?, &y.ceil()?)?;
    x.sub(&trunc.affine(m, 0.0)?)
}

// ---------------------------------------------------------------------------
// Gaussian blur
// ---------------------------------------------------------------------------

/// Kernel size for an image side of `size` pixels
/// (`dacs_transforms.py::gaussian_blur`): `c = ceil(0.1·size)` (computed in `f64`
/// like NumPy), `c` if odd else `c − 1`. 256 → 25, 512 → 51, 768 → 77,
/// 1024 → 103. A size below 1 gives 1 (no blur along that axis).
pub fn blur_kernel_size(size: usize) -> usize {
    let c = (0.1 * size as f64).ceil() as usize;
    if c % 2 == 1 {
        c
    } else {
        c.saturating_sub(1).max(1)
    }
}

/// Lower and upper bound of the blur sigma draw (`np.random.uniform(0.15, 1.15)`).
pub const BLUR_SIGMA_RANGE: (f32, f32) = (0.15, 1.15);

/// Draws one blur sigma `~ U[0.15, 1.15)`: one `rng.gen::<f32>()`.
pub fn sample_blur_sigma<R: Rng + ?Sized>(rng: &mut R) -> f32 {
    uniform(rng, BLUR_SIGMA_RANGE.0, BLUR_SIGMA_RANGE.1)
}

/// Normalised 1-D Gaussian of odd size `k` (kornia 0.5.8 `kernels.py::gaussian`):
/// `exp(−x²/(2σ²))` at `x = i − k/2`, divided by its sum (computed in `f32` like
/// kornia).
pub fn gaussian_kernel1d(k: usize, sigma: f32) -> Result<Vec<f32>> {
    if k.is_multiple_of(2) {
        bail!("gaussian_kernel1d: kernel size must be odd, got {k}");
    }
    if !(sigma.is_finite() && sigma > 0.0) {
        bail!("gaussian_kernel1d: sigma must be finite and > 0, got {sigma}");
    }
    let half = (k / 2) as f32;
    let denom = (2.0 * (sigma as f64).powi(2)) as f32;
    let g: Vec<f32> = (0..k)
        .map(|i| {
            let x = i as f32 - half;
            (-(x * x) / denom).exp()
        })
        .collect();
    let sum: f32 = g.iter().sum();
    Ok(g.into_iter().map(|v| v / sum).collect())
}

/// PyTorch `F.pad(mode='reflect')` index: mirror about the edge pixels without
/// repeating them (`… 2 1 | 0 1 2 … n−1 | n−2 …`). Offsets beyond one image
/// length keep mirroring (PyTorch would refuse them).
fn reflect_index(i: isize, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    if m >= n as isize {
        (period - m) as usize
    } else {
        m as usize
    }
}

/// The (n, n) matrix of a 1-D correlation with `kernel` (odd length) and reflect
/// border, row-major. `transposed = false`: `M[out][in]` (left-multiply a column
/// signal); `true`: `M[in][out]` (right-multiply a row signal).
fn reflect_conv_matrix(n: usize, kernel: &[f32], transposed: bool) -> Vec<f32> {
    let pad = (kernel.len() / 2) as isize;
    let mut m = vec![0f32; n * n];
    for out in 0..n {
        for (t, &wt) in kernel.iter().enumerate() {
            let src = reflect_index(out as isize + t as isize - pad, n);
            let idx = if transposed {
                src * n + out
            } else {
                out * n + src
            };
            m[idx] += wt;
        }
    }
    m
}

/// Gaussian blur of `img` (C, H, W) or (B, C, H, W), any C, with one `sigma` for
/// both axes and odd kernel sizes `kh` (rows) × `kw` (columns), reflect border
/// (kornia 0.5.8 `GaussianBlur2d(kernel_size=(kh, kw), sigma=(σ, σ))` with its
/// default `border_type='reflect'`, as called in
/// `dacs_transforms.py::gaussian_blur` on the normalised image).
///
/// The 2-D kernel is the outer product of two normalised 1-D kernels, so the blur
/// is done separably (rows, then columns); a kernel size of 1 skips that axis.
/// CPU `f32`: direct separable loops; elsewhere [`gaussian_blur_composed`].
pub fn gaussian_blur(img: &Tensor, sigma: f32, kh: usize, kw: usize) -> Result<Tensor> {
    let (n, h, w) = blur_dims(img)?;
    let ker_h = gaussian_kernel1d(kh, sigma)?;
    let ker_w = gaussian_kernel1d(kw, sigma)?;
    // The planes are independent: (C, H, W) and (B, C, H, W) are both n planes.
    match (img.device(), img.dtype()) {
        (Device::Cpu, DType::F32) => {
            let out = with_cpu_f32(img, |x| Ok(blur_cpu(x, h, w, &ker_h, &ker_w)))?;
            Tensor::from_vec(out, img.shape(), img.device())
        }
        _ => blur_matmul(img, n, h, w, &ker_h, &ker_w),
    }
}

/// Device-generic path of [`gaussian_blur`]: each pass is one matmul with an
/// (n, n) matrix holding the kernel taps and the reflect padding
/// (`rows = M_h · x`, `out = rows · M_wᵀ`).
pub fn gaussian_blur_composed(img: &Tensor, sigma: f32, kh: usize, kw: usize) -> Result<Tensor> {
    let (n, h, w) = blur_dims(img)?;
    let ker_h = gaussian_kernel1d(kh, sigma)?;
    let ker_w = gaussian_kernel1d(kw, sigma)?;
    blur_matmul(img, n, h, w, &ker_h, &ker_w)
}

/// (planes, H, W) of a blur input, checked.
fn blur_dims(img: &Tensor) -> Result<(usize, usize, usize)> {
    let dims = match img.dims() {
        [c, h, w] => (*c, *h, *w),
        [b, c, h, w] => (b * c, *h, *w),
        d => bail!("gaussian_blur: image must be (C, H, W) or (B, C, H, W), got shape {d:?}"),
    };
    if !img.dtype().is_float() {
        bail!(
            "gaussian_blur: image must be a float tensor, got {:?}",
            img.dtype()
        );
    }
    Ok(dims)
}

fn blur_matmul(
    img: &Tensor,
    n: usize,
    h: usize,
    w: usize,
    ker_h: &[f32],
    ker_w: &[f32],
) -> Result<Tensor> {
    let dev: &Device = img.device();
    let mut x = img.reshape((n, h, w))?.contiguous()?;
    if ker_h.len() > 1 {
        let mh = Tensor::from_vec(reflect_conv_matrix(h, ker_h, false), (h, h), dev)?
            .to_dtype(img.dtype())?;
        x = mh.broadcast_left(n)?.matmul(&x)?;
    }
    if ker_w.len() > 1 {
        let mwt = Tensor::from_vec(reflect_conv_matrix(w, ker_w, true), (w, w), dev)?
            .to_dtype(img.dtype())?;
        x = x.reshape((n * h, w))?.matmul(&mwt)?;
    }
    x.reshape(img.shape())
}

/// Direct separable blur of `n` planes (H, W), reflect border; one parallel task
/// per plane and pass.
fn blur_cpu(x: &[f32], h: usize, w: usize, ker_h: &[f32], ker_w: &[f32]) -> Vec<f32> {
    let plane = h * w;
    let mut tmp = x.to_vec();
    if plane == 0 {
        return tmp;
    }
    if ker_h.len() > 1 {
        let ph = (ker_h.len() / 2) as isize;
        tmp.par_chunks_mut(plane)
            .zip(x.par_chunks(plane))
            .for_each(|(dst, src)| {
                // Vertical: output row i = Σ_t k[t] · source row reflect(i + t − p);
                // rows are contiguous, so the inner loop runs along W.
                for i in 0..h {
                    let row = &mut dst[i * w..(i + 1) * w];
                    row.fill(0.0);
                    for (t, &kt) in ker_h.iter().enumerate() {
                        let r = reflect_index(i as isize + t as isize - ph, h);
                        let s = &src[r * w..(r + 1) * w];
                        for (d, &v) in row.iter_mut().zip(s) {
                            *d += kt * v;
                        }
                    }
                }
            });
    }
    if ker_w.len() > 1 {
        let pw = ker_w.len() / 2;
        tmp.par_chunks_mut(plane).for_each(|pl| {
            // Horizontal: each row is copied into a reflect-padded buffer, then
            // out[j] = Σ_t k[t] · buf[j + t].
            let mut buf = vec![0f32; w + 2 * pw];
            for row in pl.chunks_mut(w) {
                for (j, b) in buf.iter_mut().enumerate() {
                    *b = row[reflect_index(j as isize - pw as isize, w)];
                }
                row.fill(0.0);
                for (t, &kt) in ker_w.iter().enumerate() {
                    for (d, &v) in row.iter_mut().zip(&buf[t..t + w]) {
                        *d += kt * v;
                    }
                }
            }
        });
    }
    tmp
}

// ---------------------------------------------------------------------------
// Strong augmentation (one iteration)
// ---------------------------------------------------------------------------

/// Strong augmentation settings (`configs/_base_/uda/dacs.py`: `color_jitter_strength`,
/// `color_jitter_probability`, `blur`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StrongAugConfig {
    /// Strength s of `ColorJitter(brightness=s, contrast=s, saturation=s, hue=s)`.
    pub color_jitter_strength: f32,
    /// Jitter is applied when the iteration's uniform draw is `> p`
    /// (probability 1 − p).
    pub color_jitter_p: f32,
    /// Enables Gaussian blur (then applied with probability 0.5).
    pub blur: bool,
}

impl Default for StrongAugConfig {
    fn default() -> Self {
        StrongAugConfig {
            color_jitter_strength: 0.2,
            color_jitter_p: 0.2,
            blur: true,
        }
    }
}

/// The per-iteration decision, shared by all images of the iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrongAugDecision {
    pub jitter: bool,
    pub blur: bool,
}

/// The augmentation of one image: jitter parameters and blur sigma, each `None`
/// when not applied.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StrongAugParams {
    pub jitter: Option<ColorJitterParams>,
    pub blur: Option<f32>,
}

impl StrongAugConfig {
    /// Checks the ranges: strength ≥ 0 and finite, p in [0, 1].
    pub fn validate(&self) -> Result<()> {
        if !(self.color_jitter_strength.is_finite() && self.color_jitter_strength >= 0.0) {
            bail!(
                "strong augmentation: color_jitter_strength must be finite and >= 0, got {}",
                self.color_jitter_strength
            );
        }
        if !(0.0..=1.0).contains(&self.color_jitter_p) {
            bail!(
                "strong augmentation: color_jitter_p must be in [0, 1], got {}",
                self.color_jitter_p
            );
        }
        Ok(())
    }

    /// Draws the per-iteration decision (`dacs.py::DACS.forward_train`, the two
    /// `random.uniform(0, 1)` of `strong_parameters`).
    ///
    /// Draw order (stable): `u_cj = rng.gen::<f32>()`, then
    /// `u_blur = rng.gen::<f32>()`; both are always drawn, also when blur is
    /// disabled. Jitter iff `u_cj > color_jitter_p`; blur iff `blur && u_blur > 0.5`.
    pub fn decide<R: Rng + ?Sized>(&self, rng: &mut R) -> StrongAugDecision {
        let u_cj: f32 = rng.gen();
        let u_blur: f32 = rng.gen();
        StrongAugDecision {
            jitter: u_cj > self.color_jitter_p,
            blur: self.blur && u_blur > 0.5,
        }
    }

    /// MIC's draws for a batch of `n` images (`lhoyer/MIC
    /// seg/mmseg/models/uda/masking_consistency_module.py::MaskingConsistencyModule.__call__`):
    /// one jitter/blur decision, colour-jitter parameters per image (kornia
    /// samples per batch element) and one blur σ for the whole batch (MIC
    /// calls `gaussian_blur` once on the batch). Draw order: decision, jitter
    /// of images 0..n, σ.
    pub fn sample_shared_blur<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        n: usize,
    ) -> Vec<StrongAugParams> {
        let decision = self.decide(rng);
        let jitter: Vec<Option<ColorJitterParams>> = (0..n)
            .map(|_| {
                decision
                    .jitter
                    .then(|| ColorJitterParams::sample(rng, self.color_jitter_strength))
            })
            .collect();
        let sigma = decision.blur.then(|| sample_blur_sigma(rng));
        jitter
            .into_iter()
            .map(|jitter| StrongAugParams {
                jitter,
                blur: sigma,
            })
            .collect()
    }

    /// Draws the parameters of one image under `decision`.
    ///
    /// Draw order (stable): if jitter, [`ColorJitterParams::sample`] (4 uniforms,
    /// 3 shuffle draws); then, if blur, [`sample_blur_sigma`] (1 uniform).
    /// Nothing is drawn for a disabled part.
    pub fn sample_image<R: Rng + ?Sized>(
        &self,
        decision: StrongAugDecision,
        rng: &mut R,
    ) -> StrongAugParams {
        let jitter = decision
            .jitter
            .then(|| ColorJitterParams::sample(rng, self.color_jitter_strength));
        let blur = decision.blur.then(|| sample_blur_sigma(rng));
        StrongAugParams { jitter, blur }
    }

    /// One iteration's draws for `n_images` images: [`StrongAugConfig::decide`]
    /// once, then [`StrongAugConfig::sample_image`] for images 0, 1, … in order.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R, n_images: usize) -> Vec<StrongAugParams> {
        let decision = self.decide(rng);
        (0..n_images)
            .map(|_| self.sample_image(decision, rng))
            .collect()
    }
}

impl StrongAugParams {
    /// No augmentation.
    pub const NONE: StrongAugParams = StrongAugParams {
        jitter: None,
        blur: None,
    };

    /// Applies the augmentation to a normalised image (1, 3, H, W) or (3, H, W)
    /// (`dacs_transforms.py::strong_transform` after the mix): [`color_jitter`],
    /// then [`gaussian_blur`] with kernel sizes [`blur_kernel_size`] of H and W.
    pub fn apply(&self, img: &Tensor) -> Result<Tensor> {
        colour_dim("strong augmentation", img)?;
        let mut x = img.clone();
        if let Some(p) = &self.jitter {
            x = color_jitter(&x, p)?;
        }
        if let Some(sigma) = self.blur {
            let r = x.rank();
            let (h, w) = (x.dims()[r - 2], x.dims()[r - 1]);
            x = gaussian_blur(&x, sigma, blur_kernel_size(h), blur_kernel_size(w))?;
        }
        Ok(x)
    }
}

/// Applies `params[i]` to image i of a normalised batch (B, 3, H, W).
pub fn strong_augment(images: &Tensor, params: &[StrongAugParams]) -> Result<Tensor> {
    let b = match images.dims() {
        [b, 3, _, _] => *b,
        d => bail!("strong_augment: images must be (B, 3, H, W), got shape {d:?}"),
    };
    if params.len() != b {
        bail!(
            "strong_augment: expected one parameter set per image ({b}), got {}",
            params.len()
        );
    }
    let out: Vec<Tensor> = params
        .iter()
        .enumerate()
        .map(|(i, p)| p.apply(&images.narrow(0, i, 1)?))
        .collect::<Result<_>>()?;
    Tensor::cat(&out, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_index_matches_torch_reflect() {
        // torch.nn.functional.pad(arange(4), (3, 3), mode='reflect')
        // = [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
        let got: Vec<usize> = (-3..7).map(|i| reflect_index(i, 4)).collect();
        assert_eq!(got, vec![3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
        assert_eq!(reflect_index(-5, 1), 0);
    }

    #[test]
    fn conv_matrix_rows_sum_to_one() {
        let k = gaussian_kernel1d(5, 0.8).unwrap();
        let m = reflect_conv_matrix(6, &k, false);
        for r in 0..6 {
            let s: f32 = m[r * 6..(r + 1) * 6].iter().sum();
            assert!((s - 1.0).abs() < 1e-6, "row {r} sums to {s}");
        }
    }

    #[test]
    fn kernel_rejects_even_size_and_bad_sigma() {
        assert!(gaussian_kernel1d(4, 1.0).is_err());
        assert!(gaussian_kernel1d(3, 0.0).is_err());
    }

    #[test]
    fn order_must_be_permutation() {
        let p = ColorJitterParams {
            order: [0, 0, 2, 3],
            ..ColorJitterParams::IDENTITY
        };
        let x = Tensor::zeros((3, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let e = color_jitter_unit(&x, &p).unwrap_err().to_string();
        assert!(e.contains("permutation"), "{e}");
    }
}
