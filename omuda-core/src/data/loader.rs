//! Batching: images to normalised tensors, and the training/evaluation batch
//! sources of the built-in synthetic pair.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::batch::{BatchSource, UdaBatch};
use crate::data::synth::{generate_many, Domain, Sample, Split, SynthConfig};
use crate::{Error, Result};

/// ImageNet mean and std of the reference pipelines (RGB, 0–255 scale).
pub const IMAGENET_MEAN: [f32; 3] = [123.675, 116.28, 103.53];
pub const IMAGENET_STD: [f32; 3] = [58.395, 57.12, 57.375];

/// Stack samples into (B,3,H,W) normalised images and (B,H,W) u32 labels,
/// mirroring horizontally the ones whose `flip` is set.
pub fn samples_to_tensors(
    samples: &[Sample],
    flips: &[bool],
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let first = samples
        .first()
        .ok_or_else(|| crate::Error::msg("empty batch"))?;
    let (h, w) = (first.height, first.width);
    let mut img = Vec::with_capacity(samples.len() * 3 * h * w);
    let mut lbl = Vec::with_capacity(samples.len() * h * w);
    for (i, s) in samples.iter().enumerate() {
        if s.height != h || s.width != w {
            return Err(crate::Error::msg(format!(
                "batch sample {i} is {}×{}, the first is {h}×{w}",
                s.height, s.width
            )));
        }
        let flip = flips.get(i).copied().unwrap_or(false);
        let src_x = |x: usize| if flip { w - 1 - x } else { x };
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    let v = s.image[(y * w + src_x(x)) * 3 + c] as f32;
                    img.push((v - IMAGENET_MEAN[c]) / IMAGENET_STD[c]);
                }
            }
        }
        for y in 0..h {
            for x in 0..w {
                lbl.push(s.label[y * w + src_x(x)] as u32);
            }
        }
    }
    let n = samples.len();
    Ok((
        Tensor::from_vec(img, (n, 3, h, w), device)?,
        Tensor::from_vec(lbl, (n, h, w), device)?,
    ))
}

/// Training batches of the synthetic pair: random indices and flips from a
/// generator of its own, so the data order depends only on the data seed.
pub struct SynthPairLoader {
    pub synth: SynthConfig,
    /// Seed of the scenes (the dataset itself); fixed across runs to compare.
    pub dataset_seed: u64,
    /// Domain used as the labelled source (`Target` for the oracle run).
    pub source_domain: Domain,
    pub batch_size: usize,
    /// Pseudo-label margins `[top, bottom, left, right]` of the target frames
    /// (`uda.pseudo_margins`); the frames are not cropped, so the mask is
    /// built at frame size and flipped with the image.
    pub target_margins: Option<[usize; 4]>,
    rng: ChaCha8Rng,
    device: Device,
    /// Rare Class Sampling of the labelled frames (`[data.rcs]`); None: uniform.
    rcs: Option<std::sync::Arc<crate::data::rcs::RcsSampler>>,
}

impl SynthPairLoader {
    pub fn new(
        synth: SynthConfig,
        dataset_seed: u64,
        source_domain: Domain,
        batch_size: usize,
        order_seed: u64,
        device: &Device,
    ) -> Self {
        Self {
            synth,
            dataset_seed,
            source_domain,
            batch_size,
            target_margins: None,
            rng: ChaCha8Rng::seed_from_u64(order_seed ^ 0x4441_5441_5f4f_5244),
            device: device.clone(),
            rcs: None,
        }
    }

    /// Draw the labelled frames with Rare Class Sampling
    /// ([`crate::data::synth_rcs::synth_rcs`]); the draws come from the
    /// loader's own generator, so the data order stays a function of the seed.
    pub fn with_rcs(mut self, rcs: std::sync::Arc<crate::data::rcs::RcsSampler>) -> Self {
        self.rcs = Some(rcs);
        self
    }

    pub fn rng(&self) -> &ChaCha8Rng {
        &self.rng
    }

    pub fn set_rng(&mut self, rng: ChaCha8Rng) {
        self.rng = rng;
    }

    fn draw(&mut self) -> (Vec<usize>, Vec<bool>) {
        let n = self.synth.train_size;
        let idx = (0..self.batch_size)
            .map(|_| self.rng.gen_range(0..n))
            .collect();
        let flips = (0..self.batch_size)
            .map(|_| self.rng.gen_bool(0.5))
            .collect();
        (idx, flips)
    }

    /// Labelled frames with RCS: per slot a (class, frame) draw, then a flip.
    fn draw_rcs(&mut self, rcs: &crate::data::rcs::RcsSampler) -> (Vec<usize>, Vec<bool>) {
        let mut idx = Vec::with_capacity(self.batch_size);
        let mut flips = Vec::with_capacity(self.batch_size);
        for _ in 0..self.batch_size {
            idx.push(rcs.draw(&mut self.rng).1);
            flips.push(self.rng.gen_bool(0.5));
        }
        (idx, flips)
    }

    pub fn next_batch(&mut self) -> Result<UdaBatch> {
        let (src_idx, src_flip) = match self.rcs.clone() {
            Some(r) => self.draw_rcs(&r),
            None => self.draw(),
        };
        let (tgt_idx, tgt_flip) = self.draw();
        let src = generate_many(
            &self.synth,
            self.dataset_seed,
            self.source_domain,
            Split::Train,
            &src_idx,
        );
        let tgt = generate_many(
            &self.synth,
            self.dataset_seed,
            Domain::Target,
            Split::Train,
            &tgt_idx,
        );
        let (source_image, source_label) = samples_to_tensors(&src, &src_flip, &self.device)?;
        let (target_image, _) = samples_to_tensors(&tgt, &tgt_flip, &self.device)?;
        let target_valid = match self.target_margins {
            Some(m) => Some(synth_valid_masks(&tgt, &tgt_flip, m, &self.device)?),
            None => None,
        };
        Ok(UdaBatch {
            source_image,
            source_label,
            target_image,
            target_valid,
        })
    }
}

/// (B, H, W) valid-pseudo-label masks of uncropped frames, flipped like the images.
fn synth_valid_masks(
    samples: &[Sample],
    flips: &[bool],
    margins: [usize; 4],
    device: &Device,
) -> Result<Tensor> {
    use crate::data::pipeline::CropBox;
    use crate::data::valid_region::{margin_mask, transform_mask};
    let mut out = Vec::new();
    for (s, &flip) in samples.iter().zip(flips) {
        let (w, h) = (s.width, s.height);
        let whole = CropBox { y: 0, x: 0, h, w };
        out.extend(transform_mask(
            &margin_mask(w, h, margins),
            (w, h),
            (w, h),
            whole,
            flip,
            (w, h),
        ));
    }
    let first = samples
        .first()
        .ok_or_else(|| crate::Error::msg("empty batch"))?;
    Ok(Tensor::from_vec(
        out,
        (samples.len(), first.height, first.width),
        device,
    )?)
}

/// Labelled evaluation batches of one split, in index order.
pub fn eval_batches<'a>(
    synth: &'a SynthConfig,
    dataset_seed: u64,
    domain: Domain,
    split: Split,
    batch_size: usize,
    device: &Device,
) -> impl Iterator<Item = Result<(Tensor, Vec<u8>)>> + 'a {
    let n = synth.split_size(split);
    let device = device.clone();
    (0..n).step_by(batch_size.max(1)).map(move |start| {
        let idx: Vec<usize> = (start..(start + batch_size).min(n)).collect();
        let samples = generate_many(synth, dataset_seed, domain, split, &idx);
        let (img, _) = samples_to_tensors(&samples, &[], &device)?;
        let labels = samples
            .iter()
            .flat_map(|s| s.label.iter().copied())
            .collect();
        Ok((img, labels))
    })
}

impl BatchSource for SynthPairLoader {
    fn next_batch(&mut self) -> Result<UdaBatch> {
        SynthPairLoader::next_batch(self)
    }

    fn order_state(&self) -> Result<serde_json::Value> {
        let state = crate::rng_state::RngState::capture(self.rng());
        serde_json::to_value(state)
            .map_err(|e| Error::msg(format!("data-order RNG state to JSON: {e}")))
    }

    fn restore_order_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let s: crate::rng_state::RngState = serde_json::from_value(state.clone()).map_err(|e| {
            Error::msg(format!(
                "data-order RNG state: {e} (expected seed, stream, word_pos)"
            ))
        })?;
        self.set_rng(s.restore()?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(h: usize, w: usize) -> Sample {
        let image = (0..h * w * 3).map(|i| (i % 251) as u8).collect();
        let label = (0..h * w).map(|i| (i % 19) as u8).collect();
        Sample {
            image,
            label,
            height: h,
            width: w,
        }
    }

    #[test]
    fn normalisation_layout_and_flip() {
        let s = sample(2, 3);
        let (img, lbl) =
            samples_to_tensors(&[s.clone(), s.clone()], &[false, true], &Device::Cpu).unwrap();
        assert_eq!(img.dims(), &[2, 3, 2, 3]);
        let all = img.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (w, plane) = (3, 6); // width, pixels per channel plane
        let (y, x, c) = (1, 2, 1);
        // image 0, channel c, pixel (y, x): HWC byte at ((y*w + x)*3 + c)
        let byte = s.image[(y * w + x) * 3 + c] as f32;
        let want = (byte - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        assert!((all[c * plane + y * w + x] - want).abs() < 1e-6);
        // flipped image 1: pixel (1, 0) holds source pixel (1, 2)
        assert!((all[18 + 6 + 3] - want).abs() < 1e-6);
        let l = lbl.flatten_all().unwrap().to_vec1::<u32>().unwrap();
        assert_eq!(l[6 + 3], s.label[5] as u32);
    }

    #[test]
    fn mismatched_sizes_are_an_error() {
        let err = samples_to_tensors(&[sample(2, 3), sample(3, 3)], &[], &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sample 1"), "{err}");
    }
}
