//! The pretraining set of the built-in benchmark: the role ImageNet plays for
//! GTA5 → Cityscapes. Street scenes of the synthetic generator, each drawn in
//! a style of its own ([`DomainStyle::randomized`]: every appearance knob
//! across its whole range, so the set is neither source- nor target-styled),
//! at a randomly chosen scale, from a seed space no benchmark split uses
//! ([`pretrain_seed`]). The encoder sees a square crop of each scene and learns
//! which classes the crop contains: image-level multi-label classification,
//! not the benchmark's dense segmentation (see `docs/datasets.md`).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::classes::NUM_CLASSES;
use crate::data::synth::{generate_styled, pretrain_seed, DomainStyle};
use crate::{Error, Result};

/// How the pretraining crops are drawn.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PretrainSetConfig {
    /// Heights a scene is drawn at (its width is twice that), one chosen
    /// uniformly per scene: a fixed crop of a small scene sees the whole
    /// street, of a large one a close-up, as ImageNet's crops vary in scale.
    pub heights: Vec<usize>,
    /// Side of the square crop the encoder sees.
    pub crop: usize,
    /// The crop is tagged per cell of a `grid × grid` partition (1: one set
    /// of tags for the whole crop).
    pub grid: usize,
    /// A class counts as present in a cell when it covers at least this share
    /// of the cell's pixels.
    pub min_share: f64,
}

impl Default for PretrainSetConfig {
    fn default() -> Self {
        Self {
            heights: vec![64, 96, 128, 192],
            crop: 64,
            grid: 4,
            min_share: 0.02,
        }
    }
}

impl PretrainSetConfig {
    /// Every height at least the crop, the crop at least 16 pixels, the share in (0, 1].
    pub fn validate(&self) -> Result<()> {
        let fail = |message: String| Error::Config {
            origin: "pretrain".into(),
            message,
        };
        if self.crop < 16 {
            return Err(fail(format!("crop = {} is below 16 pixels", self.crop)));
        }
        if self.heights.is_empty() {
            return Err(fail("heights is empty".into()));
        }
        if let Some(h) = self.heights.iter().find(|&&h| h < self.crop) {
            return Err(fail(format!(
                "heights holds {h}, below the crop {}: every scene must contain a crop",
                self.crop
            )));
        }
        if self.grid == 0 || !self.crop.is_multiple_of(self.grid) {
            return Err(fail(format!(
                "grid = {} must be > 0 and divide the crop {}",
                self.grid, self.crop
            )));
        }
        if !(self.min_share > 0.0 && self.min_share <= 1.0) {
            return Err(fail(format!(
                "min_share = {} is outside (0, 1]",
                self.min_share
            )));
        }
        Ok(())
    }
}

/// One pretraining crop and the classes each of its cells contains.
#[derive(Clone, Debug, PartialEq)]
pub struct PretrainSample {
    /// Interleaved RGB, row-major (HWC), `crop * crop * 3` bytes.
    pub image: Vec<u8>,
    /// `present[cell][c]`: class `c` covers at least `min_share` of the cell
    /// (cells row-major, `grid * grid` of them).
    pub present: Vec<[bool; NUM_CLASSES]>,
    pub crop: usize,
}

/// Sample `index` of the pretraining set (`pretrain = true`) or of its
/// held-out check set (`false`). Pure: the same arguments give the same bytes.
pub fn pretrain_sample(
    cfg: &PretrainSetConfig,
    seed: u64,
    pretrain: bool,
    index: usize,
) -> PretrainSample {
    let mut rng = ChaCha8Rng::seed_from_u64(pretrain_seed(seed, pretrain, index));
    let style = DomainStyle::randomized(&mut rng);
    let h = cfg.heights[rng.gen_range(0..cfg.heights.len())];
    let w = 2 * h;
    let scene = generate_styled(h, w, &style, &mut rng);
    let c = cfg.crop.min(h);
    let y0 = rng.gen_range(0..=h - c);
    let x0 = rng.gen_range(0..=w - c);
    let flip = rng.gen_bool(0.5);
    let (g, cell) = (cfg.grid, c / cfg.grid);
    let mut image = Vec::with_capacity(c * c * 3);
    let mut counts = vec![[0usize; NUM_CLASSES]; g * g];
    for y in 0..c {
        for x in 0..c {
            let sx = x0 + if flip { c - 1 - x } else { x };
            let p = (y0 + y) * w + sx;
            image.extend_from_slice(&scene.image[p * 3..p * 3 + 3]);
            let l = scene.label[p] as usize;
            if l < NUM_CLASSES {
                counts[(y / cell) * g + x / cell][l] += 1;
            }
        }
    }
    let need = (cfg.min_share * (cell * cell) as f64).ceil().max(1.0) as usize;
    let present = counts
        .iter()
        .map(|cell_counts| {
            let mut p = [false; NUM_CLASSES];
            for (p, &n) in p.iter_mut().zip(cell_counts) {
                *p = n >= need;
            }
            p
        })
        .collect();
    PretrainSample {
        image,
        present,
        crop: c,
    }
}

/// [`pretrain_sample`] for several indices, in parallel, in the order given.
pub fn pretrain_samples(
    cfg: &PretrainSetConfig,
    seed: u64,
    pretrain: bool,
    indices: &[usize],
) -> Vec<PretrainSample> {
    indices
        .par_iter()
        .map(|&i| pretrain_sample(cfg, seed, pretrain, i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_pure_sized_and_labelled() {
        let cfg = PretrainSetConfig::default();
        cfg.validate().unwrap();
        let a = pretrain_samples(&cfg, 5, true, &[0, 1, 2, 3]);
        assert_eq!(a[2], pretrain_sample(&cfg, 5, true, 2));
        for s in &a {
            assert_eq!(s.image.len(), 64 * 64 * 3);
            assert_eq!(s.present.len(), 16);
            assert!(
                s.present.iter().flatten().any(|&p| p),
                "a street crop holds some class"
            );
        }
        assert_ne!(a[0], a[1]);
        assert_ne!(a[0], pretrain_sample(&cfg, 5, false, 0));
        assert_ne!(a[0], pretrain_sample(&cfg, 6, true, 0));
    }

    #[test]
    fn bad_configs_name_the_key() {
        let bad = PretrainSetConfig {
            heights: vec![32],
            ..PretrainSetConfig::default()
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("heights") && e.contains("32"), "{e}");
        let bad = PretrainSetConfig {
            min_share: 0.0,
            ..PretrainSetConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("min_share"));
    }
}
