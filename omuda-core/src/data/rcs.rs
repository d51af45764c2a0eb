//! Rare Class Sampling (`lhoyer/MIC seg/mmseg/datasets/uda_dataset.py`
//! `get_rcs_class_probs` and `UDADataset.get_rare_class_sample`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::datasets::Dataset;
use super::stats::{
    read_sample_class_stats, read_samples_with_class, FrameStats, SAMPLES_WITH_CLASS,
    SAMPLE_CLASS_STATS,
};
use crate::{Error, Result};

/// RCS settings; the defaults are DAFormer's (`rcs_class_temp=0.01`,
/// `rcs_min_pixels=3000`, `rcs_min_crop_ratio=0.5`). HRDA uses `min_crop_ratio = 2`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RcsConfig {
    pub class_temp: f64,
    /// A file is a candidate for class c if it has more than this many
    /// pixels of c at file resolution.
    pub min_pixels: u64,
    /// A crop is accepted if it has more than `min_pixels · min_crop_ratio`
    /// pixels of the sampled class (at most 10 re-crops; 0 disables).
    pub min_crop_ratio: f64,
}

impl Default for RcsConfig {
    fn default() -> Self {
        Self {
            class_temp: 0.01,
            min_pixels: 3000,
            min_crop_ratio: 0.5,
        }
    }
}

impl RcsConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.class_temp > 0.0 && self.class_temp.is_finite()) {
            return Err(format!(
                "class_temp = {}: expected a positive number",
                self.class_temp
            ));
        }
        if !(self.min_crop_ratio >= 0.0 && self.min_crop_ratio.is_finite()) {
            return Err(format!(
                "min_crop_ratio = {}: expected a number ≥ 0",
                self.min_crop_ratio
            ));
        }
        Ok(())
    }
}

/// Classes in ascending order of total pixel count (ties in order of first
/// appearance) and their sampling probabilities
/// `softmax((1 − f_c) / T)` with `f_c = n_c / Σ n`, in float32 like the
/// reference's torch computation.
pub fn class_probs(stats: &[FrameStats], temperature: f64) -> (Vec<u8>, Vec<f32>) {
    let mut totals: Vec<(u8, u64)> = Vec::new();
    for f in stats {
        for &(c, n) in &f.counts {
            match totals.iter_mut().find(|(k, _)| *k == c) {
                Some(slot) => slot.1 += n,
                None => totals.push((c, n)),
            }
        }
    }
    // Python's `sorted` is stable, so equal counts keep first-appearance order.
    totals.sort_by_key(|&(_, n)| n);
    let sum: u64 = totals.iter().map(|t| t.1).sum();
    let t = temperature as f32;
    let logits: Vec<f32> = totals
        .iter()
        .map(|&(_, n)| (1.0 - n as f32 / sum as f32) / t)
        .collect();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let z: f32 = e.iter().sum();
    (
        totals.into_iter().map(|(c, _)| c).collect(),
        e.into_iter().map(|x| x / z).collect(),
    )
}

/// Candidate files of each class: those with strictly more than `min_pixels`.
pub fn candidate_files(
    samples_with_class: &BTreeMap<u8, Vec<(String, u64)>>,
    class: u8,
    min_pixels: u64,
) -> Vec<String> {
    samples_with_class
        .get(&class)
        .map(|v| {
            v.iter()
                .filter(|(_, n)| *n > min_pixels)
                .map(|(f, _)| f.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a crop holding `count` pixels of the sampled class is accepted
/// (`count > min_pixels · min_crop_ratio`).
pub fn crop_has_class(count: usize, cfg: &RcsConfig) -> bool {
    count as f64 > cfg.min_pixels as f64 * cfg.min_crop_ratio
}

/// The file basename of a stats entry, and the frame key it names
/// (the basename without the layout's label suffix).
fn stats_key(file: &str) -> (String, String) {
    let base = file.rsplit(['/', '\\']).next().unwrap_or(file).to_string();
    let mut key = base.clone();
    for suf in [
        "_gtFine_labelTrainIds.png",
        "_gtFine_labelIds.png",
        "_labelTrainIds.png",
        ".png",
    ] {
        if let Some(k) = base.strip_suffix(suf) {
            key = k.to_string();
            break;
        }
    }
    (base, key)
}

/// Draws (class, source frame) pairs.
#[derive(Debug, Clone)]
pub struct RcsSampler {
    pub classes: Vec<u8>,
    pub probs: Vec<f32>,
    cumulative: Vec<f64>,
    /// Frame indices of the candidate files of each class in `classes`.
    pub files: Vec<Vec<usize>>,
    pub cfg: RcsConfig,
}

impl RcsSampler {
    /// Read the statistics files from `stats_dir` (the dataset root by
    /// default) and match their files to the frames of `dataset` by label
    /// path, label basename, or frame key.
    pub fn from_dir(stats_dir: &Path, dataset: &Dataset, cfg: &RcsConfig) -> Result<Self> {
        let stats = read_sample_class_stats(&stats_dir.join(SAMPLE_CLASS_STATS))?;
        let swc = read_samples_with_class(&stats_dir.join(SAMPLES_WITH_CLASS))?;
        Self::new(
            &stats,
            &swc,
            dataset,
            cfg,
            &stats_dir.join(SAMPLES_WITH_CLASS),
        )
    }

    pub fn new(
        stats: &[FrameStats],
        samples_with_class: &BTreeMap<u8, Vec<(String, u64)>>,
        dataset: &Dataset,
        cfg: &RcsConfig,
        origin: &Path,
    ) -> Result<Self> {
        let mut by_path = HashMap::new();
        let mut by_base = HashMap::new();
        let mut by_key = HashMap::new();
        for (i, f) in dataset.frames.iter().enumerate() {
            if let Some(l) = &f.label {
                by_path.insert(l.path.display().to_string(), i);
                if let Some(b) = l.path.file_name().and_then(|b| b.to_str()) {
                    by_base.insert(b.to_string(), i);
                }
            }
            let k = f.key.rsplit('/').next().unwrap_or(&f.key).to_string();
            by_key.insert(k, i);
        }
        let lookup = |file: &str| {
            let (base, key) = stats_key(file);
            by_path.get(file).or_else(|| by_base.get(&base)).or_else(|| by_key.get(&key)).copied().ok_or_else(|| {
                format!(
                    "lists {file}, which is not a frame of the {} dataset at {} (stale statistics? rerun `omuda prepare`)",
                    dataset.name,
                    dataset.root.display()
                )
            })
        };
        Self::from_lookup(
            stats,
            samples_with_class,
            cfg,
            origin,
            &dataset.class_names,
            lookup,
        )
    }

    /// The sampler of statistics whose file names `lookup` maps to frame
    /// indices (an `Err` message names a file that is not a frame).
    /// `class_names` only names classes in errors.
    pub fn from_lookup(
        stats: &[FrameStats],
        samples_with_class: &BTreeMap<u8, Vec<(String, u64)>>,
        cfg: &RcsConfig,
        origin: &Path,
        class_names: &[String],
        lookup: impl Fn(&str) -> std::result::Result<usize, String>,
    ) -> Result<Self> {
        let (classes, probs) = class_probs(stats, cfg.class_temp);
        if classes.is_empty() {
            return Err(Error::file(
                origin,
                "RCS statistics hold no class pixels (empty or all-ignore labels?)",
            ));
        }
        let mut files = Vec::with_capacity(classes.len());
        for &c in &classes {
            let mut idx = Vec::new();
            for file in candidate_files(samples_with_class, c, cfg.min_pixels) {
                idx.push(lookup(&file).map_err(|m| Error::file(origin, m))?);
            }
            if idx.is_empty() {
                return Err(Error::file(
                    origin,
                    format!(
                        "class {c} ({}) has no file with more than {} pixels of it; lower rcs.min_pixels for small images",
                        class_names.get(usize::from(c)).map_or("?", |s| s.as_str()),
                        cfg.min_pixels
                    ),
                ));
            }
            files.push(idx);
        }
        let mut acc = 0.0;
        let cumulative = probs
            .iter()
            .map(|&p| {
                acc += f64::from(p);
                acc
            })
            .collect();
        Ok(Self {
            classes,
            probs,
            cumulative,
            files,
            cfg: cfg.clone(),
        })
    }

    /// Draw a class from the RCS distribution, then one of its files uniformly.
    pub fn draw(&self, rng: &mut impl Rng) -> (u8, usize) {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let u = rng.gen::<f64>() * total;
        let ci = self
            .cumulative
            .iter()
            .position(|&c| u < c)
            .unwrap_or(self.classes.len() - 1);
        let files = &self.files[ci];
        let f = files[rng.gen_range(0..files.len())];
        (self.classes[ci], f)
    }
}
