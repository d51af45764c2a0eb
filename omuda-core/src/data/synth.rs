//! The built-in synthetic domain pair: procedurally generated street scenes
//! with pixel-exact labels in the 19 Cityscapes trainIds, in a game-like
//! **source** domain and a camera-like **target** domain.
//!
//! Every sample is a pure function of `(config, seed, domain, split, index)`:
//! [`sample_seed`] mixes the four values with SplitMix64 into the seed of a
//! ChaCha8 generator that draws the whole scene, so samples can be generated in
//! any order and in parallel, always byte-identical (on one platform: drawing
//! uses `f32` and a few libm functions, whose last bits may differ elsewhere).
//!
//! # Scenes
//! A level camera looks down a straight street: sky above the horizon, the
//! road as a trapezoid converging at the vanishing point (lane markings,
//! sometimes a crosswalk), curbs and sidewalks beside it, optional grass
//! strips, then buildings (with windows), tree rows or open ground along both
//! sides, and low walls and fences. Objects stand on the ground plane at a
//! random depth and are sized by perspective: cars, trucks, buses and trams
//! (as boxes showing their near face and, off-centre, their side) on the
//! road; pedestrians on sidewalks and crossing; cyclists and motorcyclists
//! (rider label on a bicycle or motorcycle) at the road's edge; parked
//! bicycles; poles with street lamps, traffic lights and traffic signs; street
//! trees. Objects are painted far to near, so nearer ones occlude. A few
//! pixels are ignore ([`IGNORE_INDEX`](crate::data::classes::IGNORE_INDEX)):
//! unlabelled street clutter, and in the target the ego vehicle's hood and a
//! random share of class-boundary pixels.
//!
//! # Domain shift
//! Both domains share the scene grammar, so classes keep their shape,
//! position and colour relations (sky above buildings, green foliage, grey
//! road), but differ in every knob of [`DomainStyle`]:
//!
//! | aspect | source ([`DomainStyle::game`]) | target ([`DomainStyle::camera`]) |
//! |---|---|---|
//! | colours | saturated, ±5 % per object | hue +16°, saturation ×0.55, ±12 % per object |
//! | texture | flat | asphalt grain, paving joints, plaster, leaf speckle, clouds, … |
//! | light | uniform, ±5 % | ×0.8 ±30 %, warm or cool cast, contrast ×0.8, strong side shadow |
//! | sky | clear blue | 70 % overcast or dusk |
//! | lens, sensor | sharp, noiseless | vignetting, 3×3 blur, noise σ ≈ 8/255 |
//! | layout | horizon at 0.40 h, road 1.5 w wide at the bottom | horizon at 0.47 h, road 1.15 w, wider sidewalks, more grass and trees |
//! | objects | ×1.15, near; per image 5 cars, 2 pedestrians, 0.3 cyclists | ×0.85, far; 3 cars, 7 pedestrians, 2.5 cyclists, 1.2 parked bicycles |
//! | ignore | street clutter only | + ego hood, 12 % of class-boundary pixels |
//!
//! [`SynthConfig::shift`] interpolates the target between the source style
//! (`0`) and its own style (`1`, default), to vary the size of the gap.

mod canvas;
mod geometry;
mod look;
mod noise;
mod people;
mod scene;
mod street;
mod style;
mod things;
mod vehicles;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use style::DomainStyle;

use crate::{Error, Result};

/// Size of the generated images, nominal split lengths and the two domains' styles.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SynthConfig {
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Number of samples in each domain's train split.
    pub train_size: usize,
    /// Number of samples in the source's val split.
    pub val_size: usize,
    /// Number of samples in the target's dev split (labelled; for choosing
    /// hyperparameters, never for a reported number).
    pub dev_size: usize,
    /// Number of samples in the target's test split (labelled; the reported one).
    pub test_size: usize,
    /// Size of the domain gap: the target is drawn with
    /// `source.lerp(target, shift)`; 0 removes the style gap, values above 1
    /// widen it (each knob clamped to its range).
    pub shift: f32,
    /// Source style; knobs left out keep their [`DomainStyle::game`] value.
    #[serde(deserialize_with = "style::deserialize_source")]
    pub source: DomainStyle,
    /// Target style; knobs left out keep their [`DomainStyle::camera`] value.
    #[serde(deserialize_with = "style::deserialize_target")]
    pub target: DomainStyle,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            height: 128,
            width: 256,
            train_size: 2000,
            val_size: 100,
            dev_size: 100,
            test_size: 200,
            shift: 1.0,
            source: DomainStyle::game(),
            target: DomainStyle::camera(),
        }
    }
}

impl SynthConfig {
    /// Smallest image side the scene layout is meant for.
    pub const MIN_SIDE: usize = 16;

    /// Checks sizes, `shift` and every knob of both styles.
    pub fn validate(&self) -> Result<()> {
        let fail = |message: String| Error::Config {
            origin: "synth".into(),
            message,
        };
        if self.height < Self::MIN_SIDE || self.width < Self::MIN_SIDE {
            return Err(fail(format!(
                "image size {}x{} is below the minimum side {}",
                self.height,
                self.width,
                Self::MIN_SIDE
            )));
        }
        if !(self.shift.is_finite() && (0.0..=4.0).contains(&self.shift)) {
            return Err(fail(format!("shift = {} is outside [0, 4]", self.shift)));
        }
        for (name, style) in [("source", &self.source), ("target", &self.target)] {
            style.check().map_err(|m| fail(format!("{name}.{m}")))?;
        }
        Ok(())
    }

    /// The style a domain is actually drawn with (the target after `shift`).
    pub fn style(&self, domain: Domain) -> DomainStyle {
        match domain {
            Domain::Source => self.source.clone(),
            Domain::Target => self.source.lerp(&self.target, self.shift),
        }
    }

    /// Nominal number of samples in `split`.
    pub fn split_size(&self, split: Split) -> usize {
        match split {
            Split::Train => self.train_size,
            Split::Val => self.val_size,
            Split::Dev => self.dev_size,
            Split::Test => self.test_size,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Domain {
    Source,
    Target,
}

/// The splits of the pair. The source has `Train` (labelled) and `Val`; the
/// target has `Train` (its images alone are read by the UDA methods), `Dev`
/// (labelled, for choosing hyperparameters) and `Test` (labelled, reported).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Dev,
    Test,
}

/// One generated image and its label map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Interleaved RGB, row-major (HWC), `height * width * 3` bytes.
    pub image: Vec<u8>,
    /// trainIds (`0..19`) or 255 (ignore), row-major, `height * width` bytes.
    pub label: Vec<u8>,
    pub height: usize,
    pub width: usize,
}

/// The ChaCha8 seed of one sample:
/// `m(m(m(m(seed) ^ domain) ^ split) ^ index)` with `m` = [SplitMix64's
/// finaliser](https://prng.di.unimi.it/splitmix64.c), domain 1 = source,
/// 2 = target (3 is the pretraining set's, [`pretrain_seed`]), split 1 =
/// train, 2 = val, 3 = dev, 4 = test. Chained mixing makes neighbouring
/// indices, seeds, domains and splits give unrelated generators.
pub fn sample_seed(seed: u64, domain: Domain, split: Split, index: usize) -> u64 {
    let domain_tag = match domain {
        Domain::Source => 1,
        Domain::Target => 2,
    };
    let split_tag = match split {
        Split::Train => 1,
        Split::Val => 2,
        Split::Dev => 3,
        Split::Test => 4,
    };
    let h = noise::mix64(seed);
    let h = noise::mix64(h ^ domain_tag);
    let h = noise::mix64(h ^ split_tag);
    noise::mix64(h ^ index as u64)
}

/// The ChaCha8 seed of sample `index` of the pretraining set
/// (`pretrain = true`: the images the encoder is trained on; `false`: its
/// held-out check set): `m(m(m(m(seed) ^ 3) ^ part) ^ index)`, part 1 or 2.
/// Domain tag 3 belongs to no benchmark domain, so no image of the
/// benchmark's splits is drawn again.
pub fn pretrain_seed(seed: u64, pretrain: bool, index: usize) -> u64 {
    let h = noise::mix64(seed);
    let h = noise::mix64(h ^ 3);
    let h = noise::mix64(h ^ if pretrain { 1 } else { 2 });
    noise::mix64(h ^ index as u64)
}

/// Generates sample `index` of `split` in `domain`. Pure: the same arguments
/// always give byte-identical samples. `index` may exceed the nominal split
/// size. A zero height or width gives an empty sample; sides below
/// [`SynthConfig::MIN_SIDE`] work but make crude scenes.
pub fn generate(
    cfg: &SynthConfig,
    seed: u64,
    domain: Domain,
    split: Split,
    index: usize,
) -> Sample {
    let style = cfg.style(domain);
    let mut rng = ChaCha8Rng::seed_from_u64(sample_seed(seed, domain, split, index));
    generate_styled(cfg.height, cfg.width, &style, &mut rng)
}

/// One scene of `height × width` drawn in `style` from `rng` (the body of
/// [`generate`]; the pretraining set draws its own styles).
pub fn generate_styled(
    height: usize,
    width: usize,
    style: &DomainStyle,
    rng: &mut ChaCha8Rng,
) -> Sample {
    if height == 0 || width == 0 {
        return Sample {
            image: Vec::new(),
            label: Vec::new(),
            height,
            width,
        };
    }
    let mut canvas = scene::compose(width, height, style, rng);
    let image = look::develop(&mut canvas, style, rng);
    let salt = rand::Rng::gen::<u64>(rng);
    look::ignore_boundaries(
        &mut canvas.label,
        width,
        height,
        style.boundary_ignore,
        salt,
    );
    Sample {
        image,
        label: canvas.label,
        height,
        width,
    }
}

/// [`generate`] for several indices, in parallel on the rayon pool; the
/// result is in the order of `indices`.
pub fn generate_many(
    cfg: &SynthConfig,
    seed: u64,
    domain: Domain,
    split: Split,
    indices: &[usize],
) -> Vec<Sample> {
    indices
        .par_iter()
        .map(|&i| generate(cfg, seed, domain, split, i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_mix_is_the_documented_chain() {
        let m = noise::mix64;
        let expect = m(m(m(m(7) ^ 2) ^ 1) ^ 5);
        assert_eq!(sample_seed(7, Domain::Target, Split::Train, 5), expect);
    }

    #[test]
    fn partial_style_keeps_domain_defaults() {
        let cfg: SynthConfig =
            serde_json::from_str(r#"{"height": 64, "target": {"noise": 0.0}}"#).unwrap();
        assert_eq!(cfg.height, 64);
        assert_eq!(cfg.width, 256);
        assert_eq!(cfg.target.noise, 0.0);
        assert_eq!(cfg.target.blur, DomainStyle::camera().blur);
        assert_eq!(cfg.source, DomainStyle::game());
    }

    #[test]
    fn unknown_knobs_are_rejected() {
        let err = serde_json::from_str::<SynthConfig>(r#"{"target": {"nosie": 0.0}}"#);
        assert!(err.is_err());
        let err = serde_json::from_str::<SynthConfig>(r#"{"hieght": 64}"#);
        assert!(err.is_err());
    }

    #[test]
    fn config_round_trips_through_json() {
        let cfg = SynthConfig {
            shift: 0.5,
            ..SynthConfig::default()
        };
        let json = serde_json::to_string(&cfg).unwrap();
        let back: SynthConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn validate_rejects_bad_values() {
        assert!(SynthConfig::default().validate().is_ok());
        let small = SynthConfig {
            height: 8,
            ..SynthConfig::default()
        };
        assert!(small.validate().is_err());
        let mut bad = SynthConfig::default();
        bad.target.saturation = f32::NAN;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn zero_shift_draws_the_target_in_source_style() {
        let cfg = SynthConfig {
            shift: 0.0,
            ..SynthConfig::default()
        };
        assert_eq!(cfg.style(Domain::Target), DomainStyle::game());
    }

    #[test]
    fn degenerate_sizes_do_not_panic() {
        for (h, w) in [(0, 10), (1, 1), (2, 3), (5, 200)] {
            let cfg = SynthConfig {
                height: h,
                width: w,
                ..SynthConfig::default()
            };
            for domain in [Domain::Source, Domain::Target] {
                let s = generate(&cfg, 1, domain, Split::Train, 0);
                assert_eq!(s.label.len(), h * w);
                assert_eq!(s.image.len(), h * w * 3);
            }
        }
    }
}
