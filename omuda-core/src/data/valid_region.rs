//! Where target pseudo-labels may carry weight (`lhoyer/MIC
//! seg/mmseg/models/uda/dacs.py::DACS.filter_valid_pseudo_region`).
//!
//! - HRDA / MIC "croppl v2" (`lhoyer/MIC seg/mmseg/datasets/cityscapes.py::CityscapesDataset.pre_pipeline`):
//!   a mask of ones at the **original** frame resolution with the margins
//!   (top, bottom, left, right) zeroed — (30, 240, 30, 30) for 1024×2048
//!   Cityscapes frames — that goes through the target's resize, crop and
//!   flip like a label (`seg_fields`), and is multiplied into the
//!   pseudo-label weight (`dacs.py::DACS.filter_valid_pseudo_region`).
//! - DAFormer "croppl v1": the top 15 / bottom 120 rows of a 512-high crop;
//!   [`scaled_row_crop`] scales these rows to the batch's crop height.

use super::pipeline::{resize_nearest, CropBox};

/// The valid-pseudo-label mask of a `width`×`height` frame: 1 inside, 0 in
/// the `[top, bottom, left, right]` margins (row-major, one byte per pixel).
/// Margins larger than the frame zero all of it.
pub fn margin_mask(width: usize, height: usize, margins: [usize; 4]) -> Vec<u8> {
    let [top, bottom, left, right] = margins;
    let mut m = vec![0u8; width * height];
    let (y0, y1) = (top.min(height), height.saturating_sub(bottom));
    let (x0, x1) = (left.min(width), width.saturating_sub(right));
    for y in y0..y1.max(y0) {
        for v in &mut m[y * width + x0..y * width + x1.max(x0)] {
            *v = 1;
        }
    }
    m
}

/// The mask through the target pipeline, like a label: nearest resize of the
/// `sw`×`sh` frame mask to `rw`×`rh` (mmcv `nearest` for `seg_fields`), crop
/// to box `b`, horizontal flip, padding to `ow`×`oh` with 0 (no pseudo-label
/// weight in padding; mmseg pads seg fields with 255, but pads nothing for
/// the HRDA crops of Cityscapes). Values as `f32` 0/1.
#[allow(clippy::too_many_arguments)]
pub fn transform_mask(
    mask: &[u8],
    (sw, sh): (usize, usize),
    (rw, rh): (usize, usize),
    b: CropBox,
    flip: bool,
    (ow, oh): (usize, usize),
) -> Vec<f32> {
    let resized = resize_nearest(mask, sw, sh, rw, rh);
    let mut out = vec![0f32; ow * oh];
    for y in 0..b.h.min(oh) {
        let row = &resized[(b.y + y) * rw + b.x..(b.y + y) * rw + b.x + b.w];
        for x in 0..b.w.min(ow) {
            let sx = if flip { b.w - 1 - x } else { x };
            out[y * ow + x] = f32::from(row[sx]);
        }
    }
    out
}

/// DAFormer's row crop `[top, bottom]`, given for crops `ref_height` high
/// (512), scaled to a crop `height` high: `round(rows · height / ref_height)`.
pub fn scaled_row_crop([top, bottom]: [usize; 2], ref_height: usize, height: usize) -> [usize; 2] {
    if ref_height == 0 || ref_height == height {
        return [top, bottom];
    }
    let s = |r: usize| ((r * height) as f64 / ref_height as f64).round() as usize;
    [s(top), s(bottom)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_mask_zeroes_the_margins() {
        // 6×5 frame, margins top 1, bottom 2, left 1, right 2.
        let m = margin_mask(6, 5, [1, 2, 1, 2]);
        #[rustfmt::skip]
        let want = vec![
            0, 0, 0, 0, 0, 0,
            0, 1, 1, 1, 0, 0,
            0, 1, 1, 1, 0, 0,
            0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(m, want);
        assert!(margin_mask(4, 4, [3, 3, 0, 0]).iter().all(|&v| v == 0));
    }

    #[test]
    fn published_margins_at_cityscapes_size() {
        // 1024×2048, (30, 240, 30, 30): 754 valid rows × 1988 valid columns.
        let m = margin_mask(2048, 1024, [30, 240, 30, 30]);
        let ones = m.iter().filter(|&&v| v == 1).count();
        assert_eq!(ones, (1024 - 30 - 240) * (2048 - 60));
        assert_eq!(m[29 * 2048 + 100], 0);
        assert_eq!(m[30 * 2048 + 30], 1);
        assert_eq!(m[783 * 2048 + 2017], 1);
        assert_eq!(m[784 * 2048 + 1000], 0);
        assert_eq!(m[500 * 2048 + 2018], 0);
    }

    #[test]
    fn mask_follows_resize_crop_and_flip() {
        // An 8×6 frame with margins (1, 2, 1, 2), resized ×2 to 16×12
        // (nearest), cropped to 8×6 at (y 2, x 3) and flipped: output pixel
        // (y, x) comes from resized (2 + y, 3 + 7 − x) = frame ((2 + y)/2, (10 − x)/2).
        let (fw, fh) = (8, 6);
        let m = margin_mask(fw, fh, [1, 2, 1, 2]);
        let b = CropBox {
            y: 2,
            x: 3,
            h: 6,
            w: 8,
        };
        let out = transform_mask(&m, (fw, fh), (16, 12), b, true, (8, 6));
        for y in 0..6 {
            for x in 0..8 {
                let (r, c) = ((2 + y) / 2, (10 - x) / 2);
                let valid = (1..fh - 2).contains(&r) && (1..fw - 2).contains(&c);
                assert_eq!(out[y * 8 + x], if valid { 1.0 } else { 0.0 }, "({y}, {x})");
            }
        }
        // Without the flip the valid columns are mirrored.
        let plain = transform_mask(&m, (fw, fh), (16, 12), b, false, (8, 6));
        for y in 0..6 {
            for x in 0..8 {
                assert_eq!(plain[y * 8 + x], out[y * 8 + 7 - x]);
            }
        }
        // Padding (output larger than the box) carries no weight.
        let padded = transform_mask(&m, (fw, fh), (16, 12), b, false, (10, 7));
        assert!((0..7).all(|y| padded[y * 10 + 8] == 0.0 && padded[y * 10 + 9] == 0.0));
        assert!(padded[6 * 10..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn daformer_rows_scale_with_the_crop() {
        assert_eq!(scaled_row_crop([15, 120], 512, 512), [15, 120]);
        assert_eq!(scaled_row_crop([15, 120], 512, 1024), [30, 240]);
        assert_eq!(scaled_row_crop([15, 120], 512, 128), [4, 30]);
    }
}
