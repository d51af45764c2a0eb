//! Whole-image and sliding-window inference (`lhoyer/MIC
//! seg/mmseg/models/segmentors/encoder_decoder.py` `whole_inference` /
//! `slide_inference`).

use candle_core::{Result, Tensor};

/// Logits of `predict` (any resolution) bilinearly resized to the input size.
pub fn whole_inference(
    images: &Tensor,
    predict: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (_, _, h, w) = images.dims4()?;
    let logits = predict(images)?;
    crate::ops::resize_bilinear(&logits, h, w)
}

/// Window origins along one axis: `grids = max(len − crop + stride − 1, 0) / stride + 1`,
/// each window clipped to the image and shifted back to full size.
pub fn window_starts(len: usize, crop: usize, stride: usize) -> Vec<usize> {
    let grids = (len + stride).saturating_sub(crop + 1) / stride + 1;
    (0..grids)
        .map(|i| {
            let end = (i * stride + crop).min(len);
            end.saturating_sub(crop)
        })
        .collect()
}

/// Sliding-window logits at the input size: each window's logits are resized to
/// the window, summed into the canvas, and divided by the per-pixel window count.
pub fn slide_inference(
    images: &Tensor,
    crop: (usize, usize),
    stride: (usize, usize),
    predict: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (b, _, h, w) = images.dims4()?;
    let (ch, cw) = (crop.0.min(h), crop.1.min(w));
    let mut sum: Option<Tensor> = None;
    let mut count = vec![0f32; h * w];
    for &y in &window_starts(h, ch, stride.0) {
        for &x in &window_starts(w, cw, stride.1) {
            let window = images.narrow(2, y, ch)?.narrow(3, x, cw)?;
            let logits = crate::ops::resize_bilinear(&predict(&window)?, ch, cw)?;
            let k = logits.dim(1)?;
            // Place the window in a zero canvas by padding.
            let placed =
                logits
                    .pad_with_zeros(2, y, h - y - ch)?
                    .pad_with_zeros(3, x, w - x - cw)?;
            sum = Some(match sum {
                None => placed,
                Some(s) => (s + placed)?,
            });
            for yy in y..y + ch {
                for xx in x..x + cw {
                    count[yy * w + xx] += 1.0;
                }
            }
            let _ = (b, k);
        }
    }
    let sum = sum.ok_or_else(|| candle_core::Error::Msg("slide inference: no window".into()))?;
    let count = Tensor::from_vec(count, (1, 1, h, w), images.device())?.to_dtype(sum.dtype())?;
    sum.broadcast_div(&count)
}

/// Class index per pixel (B, H, W) u32; ties go to the first class.
pub fn argmax_classes(logits: &Tensor) -> Result<Tensor> {
    logits.argmax(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn window_grid_golden_values() {
        // `EncoderDecoder.slide_inference` grid: 1024×2048 with crop 1024, stride 512
        // → x ∈ {0, 512, 1024}, y = 0.
        assert_eq!(window_starts(2048, 1024, 512), vec![0, 512, 1024]);
        assert_eq!(window_starts(1024, 1024, 512), vec![0]);
        // HR sub-windows: 1024 with crop 512 and stride 256 → {0, 256, 512}.
        assert_eq!(window_starts(1024, 512, 256), vec![0, 256, 512]);
        // Non-divisible: last window shifted back to the border.
        assert_eq!(window_starts(700, 512, 256), vec![0, 188]);
    }

    #[test]
    fn slide_equals_whole_for_a_pointwise_model() {
        // A model that acts per pixel gives the same logits in windows or whole.
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, (2 * 3 * 10 * 14) as f32, &dev)
            .unwrap()
            .reshape((2, 3, 10, 14))
            .unwrap();
        let f = |t: &Tensor| (t * 2.0).and_then(|t| t.sin());
        let whole = whole_inference(&x, &f).unwrap();
        let slid = slide_inference(&x, (6, 8), (4, 5), &f).unwrap();
        let d = (whole - slid)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "{d}");
    }

    #[test]
    fn argmax_tie_goes_to_first() {
        let dev = Device::Cpu;
        let l = Tensor::from_vec(vec![1f32, 1.0, 0.0, 2.0], (1, 2, 1, 2), &dev).unwrap();
        let a = argmax_classes(&l)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
        assert_eq!(a, vec![0, 1]);
    }
}
