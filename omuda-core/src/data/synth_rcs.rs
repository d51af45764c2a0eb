//! Rare Class Sampling for the built-in synthetic pair (`lhoyer/MIC
//! seg/mmseg/datasets/uda_dataset.py`, the same sampler as for datasets on
//! disk, [`RcsSampler`]).
//!
//! The class statistics are computed from the generated labels of the
//! labelled domain's train split when the loader is built (a pure function
//! of the synthetic config and the dataset seed, so the same for every run).
//! Stats "files" are the frame indices as strings.
//!
//! The synthetic frames are used whole (no random crop), so the reference's
//! re-crop loop cannot change anything: the candidate filter already
//! guarantees more than `min_pixels` of the sampled class in the frame, and a
//! re-crop of the same whole frame holds the same count. It is therefore not
//! run; with `min_crop_ratio > 1` a frame below the crop threshold is used as
//! is, exactly what the reference's 11th, unchecked draw would give.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;

use super::classes::{CITYSCAPES_CLASSES, NUM_CLASSES};
use super::rcs::{RcsConfig, RcsSampler};
use super::stats::FrameStats;
use super::synth::{generate, Domain, Split, SynthConfig};
use crate::Result;

/// Per-frame class pixel counts of the train split of `domain` (file = index).
pub fn synth_class_stats(cfg: &SynthConfig, dataset_seed: u64, domain: Domain) -> Vec<FrameStats> {
    (0..cfg.train_size)
        .into_par_iter()
        .map(|i| {
            let s = generate(cfg, dataset_seed, domain, Split::Train, i);
            let mut hist = vec![0u64; NUM_CLASSES];
            for &l in &s.label {
                if let Some(h) = hist.get_mut(usize::from(l)) {
                    *h += 1;
                }
            }
            FrameStats::from_hist(i.to_string(), &hist)
        })
        .collect()
}

/// `samples_with_class`: class → [(file, pixels)], in frame order, as the
/// reference's converters write it.
pub fn samples_with_class(stats: &[FrameStats]) -> BTreeMap<u8, Vec<(String, u64)>> {
    let mut out: BTreeMap<u8, Vec<(String, u64)>> = BTreeMap::new();
    for f in stats {
        for &(c, n) in &f.counts {
            out.entry(c).or_default().push((f.file.clone(), n));
        }
    }
    out
}

/// The RCS sampler of the synthetic `domain` (train split).
pub fn synth_rcs(
    cfg: &SynthConfig,
    dataset_seed: u64,
    domain: Domain,
    rcs: &RcsConfig,
) -> Result<RcsSampler> {
    let stats = synth_class_stats(cfg, dataset_seed, domain);
    let swc = samples_with_class(&stats);
    let names: Vec<String> = CITYSCAPES_CLASSES.iter().map(|s| s.to_string()).collect();
    let origin = Path::new("data.rcs (synthetic source statistics)");
    RcsSampler::from_lookup(&stats, &swc, rcs, origin, &names, |file| {
        file.parse::<usize>()
            .map_err(|_| format!("synthetic stats file {file:?} is not a frame index"))
    })
}
