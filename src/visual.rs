//! Pictures of what a model sees and predicts: debug grids of a training
//! step and colourised predictions, drawn with the Cityscapes palette.

use std::path::Path;

use candle_core::{DType, Tensor};
use plotters::prelude::*;

use crate::core::data::classes::colorize;
use crate::core::data::loader::{IMAGENET_MEAN, IMAGENET_STD};
use crate::core::train::method::{DebugKind, StepDebug};
use crate::plot::{register_font, write_rgb_png};
use crate::{Error, Result};

/// An RGB8 picture.
#[derive(Debug, Clone, PartialEq)]
pub struct Rgb {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl Rgb {
    /// Nearest-neighbour resize (labels and masks stay crisp).
    pub fn resized(&self, width: usize, height: usize) -> Rgb {
        if width == self.width && height == self.height {
            return self.clone();
        }
        let mut data = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            let sy = (y * self.height / height.max(1)).min(self.height.saturating_sub(1));
            for x in 0..width {
                let sx = (x * self.width / width.max(1)).min(self.width.saturating_sub(1));
                let i = (sy * self.width + sx) * 3;
                data.extend_from_slice(&self.data[i..i + 3]);
            }
        }
        Rgb {
            width,
            height,
            data,
        }
    }
}

/// (B, 3, H, W) ImageNet-normalised images back to RGB8.
pub fn denormalize(images: &Tensor) -> Result<Vec<Rgb>> {
    let (b, c, h, w) = images.dims4()?;
    if c != 3 {
        return Err(Error::msg(format!(
            "image tensor has {c} channels, expected 3"
        )));
    }
    let v = images
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok((0..b)
        .map(|i| {
            let mut data = Vec::with_capacity(h * w * 3);
            for p in 0..h * w {
                for ch in 0..3 {
                    let x = v[((i * 3 + ch) * h * w) + p] * IMAGENET_STD[ch] + IMAGENET_MEAN[ch];
                    data.push(x.round().clamp(0.0, 255.0) as u8);
                }
            }
            Rgb {
                width: w,
                height: h,
                data,
            }
        })
        .collect())
}

/// (B, H, W) (or (B, 1, H, W)) trainIds to palette colours; 255 and invalid ids are black.
pub fn colorize_labels(labels: &Tensor) -> Result<Vec<Rgb>> {
    let labels = if labels.rank() == 4 {
        labels.squeeze(1)?
    } else {
        labels.clone()
    };
    let (b, h, w) = labels.dims3()?;
    let v = labels
        .to_dtype(DType::U32)?
        .flatten_all()?
        .to_vec1::<u32>()?;
    Ok((0..b)
        .map(|i| {
            let ids: Vec<u8> = v[i * h * w..(i + 1) * h * w]
                .iter()
                .map(|&l| l.min(255) as u8)
                .collect();
            Rgb {
                width: w,
                height: h,
                data: colorize(&ids),
            }
        })
        .collect())
}

/// (B, H, W) (or (B, 1, H, W)) values in [0, 1] to grey levels (clamped).
pub fn gray(values: &Tensor) -> Result<Vec<Rgb>> {
    let values = if values.rank() == 4 {
        values.squeeze(1)?
    } else {
        values.clone()
    };
    let (b, h, w) = values.dims3()?;
    let v = values
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok((0..b)
        .map(|i| {
            let data = v[i * h * w..(i + 1) * h * w]
                .iter()
                .flat_map(|&x| {
                    let g = if x.is_finite() {
                        (x.clamp(0.0, 1.0) * 255.0).round() as u8
                    } else {
                        0
                    };
                    [g, g, g]
                })
                .collect();
            Rgb {
                width: w,
                height: h,
                data,
            }
        })
        .collect())
}

const HEADER: usize = 22;
const GAP: usize = 2;

/// A grid with one column per tile of `debug` and one row per batch image,
/// titled, written as PNG to `path`.
pub fn debug_grid(path: &Path, debug: &StepDebug) -> Result<()> {
    let mut columns: Vec<(String, Vec<Rgb>)> = Vec::new();
    for (title, kind, t) in &debug.tiles {
        let pics = match kind {
            DebugKind::Image => denormalize(t),
            DebugKind::Labels => colorize_labels(t),
            DebugKind::Gray => gray(t),
        }
        .map_err(|e| Error::file(path, format!("debug tile {title:?}: {e}")))?;
        columns.push((title.clone(), pics));
    }
    let first = columns
        .first()
        .and_then(|(_, p)| p.first())
        .ok_or_else(|| Error::file(path, "no debug tiles"))?;
    // Tiles at least 96 px wide so the titles fit; all tiles share one size.
    let scale = (96 + first.width - 1) / first.width.max(1);
    let (tw, th) = (first.width * scale.max(1), first.height * scale.max(1));
    let rows = columns.iter().map(|(_, p)| p.len()).max().unwrap_or(0);
    let width = columns.len() * (tw + GAP) + GAP;
    let height = HEADER + rows * (th + GAP) + GAP;
    let mut buf = vec![255u8; width * height * 3];
    for (c, (_, pics)) in columns.iter().enumerate() {
        for (r, pic) in pics.iter().enumerate() {
            let pic = pic.resized(tw, th);
            let (x0, y0) = (GAP + c * (tw + GAP), HEADER + r * (th + GAP));
            for y in 0..th {
                let dst = ((y0 + y) * width + x0) * 3;
                buf[dst..dst + tw * 3].copy_from_slice(&pic.data[y * tw * 3..(y + 1) * tw * 3]);
            }
        }
    }
    register_font()?;
    {
        let root =
            BitMapBackend::with_buffer(&mut buf, (width as u32, height as u32)).into_drawing_area();
        for (c, (title, _)) in columns.iter().enumerate() {
            let x = (GAP + c * (tw + GAP) + 2) as i32;
            root.draw(&Text::new(
                title.clone(),
                (x, 4),
                ("sans-serif", 13).into_font(),
            ))
            .map_err(|e| Error::file(path, format!("drawing title {title:?}: {e}")))?;
        }
        root.present()
            .map_err(|e| Error::file(path, e.to_string()))?;
    }
    write_rgb_png(path, &buf, width as u32, height as u32)
}

/// `base` blended with `over`: `(1 - opacity) * base + opacity * over`.
pub fn overlay(base: &Rgb, over: &Rgb, opacity: f32) -> Rgb {
    let a = opacity.clamp(0.0, 1.0);
    let data = base
        .data
        .iter()
        .zip(&over.data)
        .map(|(&b, &o)| ((1.0 - a) * b as f32 + a * o as f32).round() as u8)
        .collect();
    Rgb {
        width: base.width,
        height: base.height,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn palette_and_denormalisation() {
        let labels = Tensor::new(&[[[0u32, 1], [255, 18]]], &Device::Cpu).unwrap();
        let rgb = colorize_labels(&labels).unwrap();
        assert_eq!(&rgb[0].data[0..3], &[128, 64, 128]); // road
        assert_eq!(&rgb[0].data[6..9], &[0, 0, 0]); // ignore
        let px = [10.0f32, 200.0, 30.0];
        let norm: Vec<f32> = (0..3)
            .map(|c| (px[c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
            .collect();
        let img = Tensor::from_vec(norm, (1, 3, 1, 1), &Device::Cpu).unwrap();
        assert_eq!(denormalize(&img).unwrap()[0].data, vec![10, 200, 30]);
    }

    #[test]
    fn grid_has_one_column_per_tile() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let debug = StepDebug {
            tiles: vec![
                (
                    "image".into(),
                    DebugKind::Image,
                    Tensor::zeros((2, 3, 8, 16), DType::F32, &dev).unwrap(),
                ),
                (
                    "label".into(),
                    DebugKind::Labels,
                    Tensor::ones((2, 8, 16), DType::U32, &dev).unwrap(),
                ),
                (
                    "mask".into(),
                    DebugKind::Gray,
                    Tensor::ones((2, 8, 16), DType::F32, &dev).unwrap(),
                ),
            ],
        };
        let p = dir.path().join("g.png");
        debug_grid(&p, &debug).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        // 16 px tiles scaled ×6 to 96 px: 3 columns, 2 rows.
        assert_eq!(img.width() as usize, 3 * (96 + GAP) + GAP);
        assert_eq!(img.height() as usize, HEADER + 2 * (48 + GAP) + GAP);
        // Second column, first row: the sidewalk colour of label 1.
        let px = img.get_pixel((GAP + 96 + GAP + 10) as u32, (HEADER + 10) as u32);
        assert_eq!(px.0, [244, 35, 232]);
    }
}
