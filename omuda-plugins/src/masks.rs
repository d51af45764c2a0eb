//! The plugins' mask and label maths on plain per-image buffers, so each rule
//! can be tested on hand-made inputs with an injected generator.

use omuda_core::{Error, Result};
use rand::Rng;

/// Parameters of [`cam_mask`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CamMaskParams {
    /// Block size `b` in pixels.
    pub block: usize,
    /// Sub-block size of foreground blocks: `b / divisor` (at least 1).
    pub divisor: usize,
    pub fg_min_fraction: f32,
    pub bg_mask_ratio: f32,
    pub fg_mask_ratio: f32,
}

/// What a CAM mask realised.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CamMaskStats {
    /// Blocks classified foreground / all blocks.
    pub fg_blocks: usize,
    pub blocks: usize,
    /// Masked pixels inside foreground / background blocks.
    pub fg_masked: usize,
    pub fg_pixels: usize,
    pub bg_masked: usize,
    pub bg_pixels: usize,
}

impl CamMaskStats {
    pub fn add(&mut self, o: &CamMaskStats) {
        self.fg_blocks += o.fg_blocks;
        self.blocks += o.blocks;
        self.fg_masked += o.fg_masked;
        self.fg_pixels += o.fg_pixels;
        self.bg_masked += o.bg_masked;
        self.bg_pixels += o.bg_pixels;
    }
    /// Share of all pixels that are masked.
    pub fn masked_share(&self) -> f64 {
        let n = self.fg_pixels + self.bg_pixels;
        if n == 0 {
            0.0
        } else {
            (self.fg_masked + self.bg_masked) as f64 / n as f64
        }
    }
}

/// Share of the pixels of rows `y0..y1`, columns `x0..x1` of `label` (row
/// width `w`) whose class is a thing class (`is_thing[c]`); ignored pixels
/// count as not thing.
pub fn fg_fraction(
    label: &[u32],
    w: usize,
    (y0, y1): (usize, usize),
    (x0, x1): (usize, usize),
    is_thing: &[bool],
) -> f32 {
    let n = (y1 - y0) * (x1 - x0);
    if n == 0 {
        return 0.0;
    }
    let mut fg = 0usize;
    for y in y0..y1 {
        for &c in &label[y * w + x0..y * w + x1] {
            if is_thing.get(c as usize).copied().unwrap_or(false) {
                fg += 1;
            }
        }
    }
    fg as f32 / n as f32
}

/// The CAM keep-mask (1 keep, 0 masked) of one image's pseudo-label `label`
/// (h·w, row-major).
///
/// Blocks of `b × b` pixels tile the image from the top-left (edge blocks are
/// cut at the border). A block whose [`fg_fraction`] is at least
/// `fg_min_fraction` is foreground: it is split into sub-blocks of
/// `max(1, b / divisor)` pixels, each masked with probability `fg_mask_ratio`.
/// Any other block is masked whole with probability `bg_mask_ratio`.
///
/// Draw order: blocks row-major; one `gen::<f32>()` per background block, one
/// per sub-block (row-major within the block) of a foreground block; masked
/// iff the draw is `< ratio`.
pub fn cam_mask<R: Rng + ?Sized>(
    label: &[u32],
    h: usize,
    w: usize,
    is_thing: &[bool],
    p: &CamMaskParams,
    rng: &mut R,
) -> Result<(Vec<f32>, CamMaskStats)> {
    if label.len() != h * w {
        return Err(Error::msg(format!(
            "cam_mask: label has {} values, expected {h}×{w}",
            label.len()
        )));
    }
    if p.block == 0 || p.divisor == 0 {
        return Err(Error::msg("cam_mask: block and divisor must be at least 1"));
    }
    let b = p.block;
    let sub = (b / p.divisor).max(1);
    let mut keep = vec![1f32; h * w];
    let mut st = CamMaskStats::default();
    let fill = |keep: &mut Vec<f32>, (y0, y1): (usize, usize), (x0, x1): (usize, usize)| {
        for y in y0..y1 {
            keep[y * w + x0..y * w + x1]
                .iter_mut()
                .for_each(|v| *v = 0.0);
        }
    };
    for by in (0..h).step_by(b) {
        for bx in (0..w).step_by(b) {
            let (y1, x1) = ((by + b).min(h), (bx + b).min(w));
            let n = (y1 - by) * (x1 - bx);
            st.blocks += 1;
            if fg_fraction(label, w, (by, y1), (bx, x1), is_thing) >= p.fg_min_fraction {
                st.fg_blocks += 1;
                st.fg_pixels += n;
                for sy in (by..y1).step_by(sub) {
                    for sx in (bx..x1).step_by(sub) {
                        let (sy1, sx1) = ((sy + sub).min(y1), (sx + sub).min(x1));
                        if rng.gen::<f32>() < p.fg_mask_ratio {
                            fill(&mut keep, (sy, sy1), (sx, sx1));
                            st.fg_masked += (sy1 - sy) * (sx1 - sx);
                        }
                    }
                }
            } else {
                st.bg_pixels += n;
                if rng.gen::<f32>() < p.bg_mask_ratio {
                    fill(&mut keep, (by, y1), (bx, x1));
                    st.bg_masked += n;
                }
            }
        }
    }
    Ok((keep, st))
}

/// Cell size of a `(h, w)` image over an `(hf, wf)` feature grid: `(h / hf, w / wf)`.
fn cell_size(h: usize, w: usize, hf: usize, wf: usize) -> Result<(usize, usize)> {
    if hf == 0 || wf == 0 || hf > h || wf > w {
        return Err(Error::msg(format!(
            "feature grid {hf}×{wf} does not fit an image of {h}×{w}"
        )));
    }
    Ok((h / hf, w / wf))
}

/// Mean of `values` (h·w) over each cell of an `hf × wf` grid (cells of
/// `(h / hf) × (w / wf)` pixels from the top-left, as
/// `omuda_core::ops::feature_distance::downscale_label_grid`).
pub fn cell_mean(values: &[f32], h: usize, w: usize, hf: usize, wf: usize) -> Result<Vec<f32>> {
    if values.len() != h * w {
        return Err(Error::msg(format!(
            "cell_mean: {} values, expected {h}×{w}",
            values.len()
        )));
    }
    let (sh, sw) = cell_size(h, w, hf, wf)?;
    let mut out = vec![0f32; hf * wf];
    for cy in 0..hf {
        for cx in 0..wf {
            let mut s = 0f64;
            for y in cy * sh..(cy + 1) * sh {
                s += values[y * w + cx * sw..y * w + (cx + 1) * sw]
                    .iter()
                    .map(|&v| v as f64)
                    .sum::<f64>();
            }
            out[cy * wf + cx] = (s / (sh * sw) as f64) as f32;
        }
    }
    Ok(out)
}
