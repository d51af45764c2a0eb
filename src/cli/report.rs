//! What a finished training run writes and prints.

use std::path::Path;

use omuda::core::eval::miou::MiouReport;
use omuda::core::io::write_atomic;
use omuda::core::train::checkpoint::Best;
use omuda::{Error, Result};
use serde::Serialize;

#[derive(Serialize)]
pub struct RunMetrics<'a> {
    pub method: &'a str,
    pub seed: u64,
    pub iters: usize,
    /// Wall time of the training loop, periodic evaluations excluded.
    pub train_seconds: f64,
    /// mIoU on the target dev split over training (iteration, mIoU); the
    /// test split where a dataset on disk has no dev split.
    pub target_curve: &'a [(usize, Option<f64>)],
    /// The target test split: the reported score.
    pub target_test: &'a MiouReport,
    /// The target dev split (for choosing hyperparameters; empty without one).
    pub target_dev: &'a MiouReport,
    pub source_val: &'a MiouReport,
    /// Best mIoU over the evaluations of the `target_curve` split (its checkpoint is `best/`).
    pub best: Option<Best>,
    /// Steps whose update was skipped for a non-finite loss or gradient.
    pub nonfinite_skipped: usize,
}

pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::file(path, e.to_string()))?;
    write_atomic(path, text.as_bytes())
}

pub use omuda::core::train::observers::recorder::fmt_pct;

/// Mean of `v` (NaN when empty).
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Sample standard deviation (n − 1); 0 for one value.
pub fn std(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}
