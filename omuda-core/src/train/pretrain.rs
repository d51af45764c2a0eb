//! Pretraining of a MiT encoder on the built-in pretraining set
//! ([`crate::data::synth_pretrain`]): the start every `synth-*` preset loads,
//! as the published methods load ImageNet weights.
//!
//! The objective is multi-label classification, not dense segmentation: the
//! crop is cut into `grid × grid` cells (16 pixels square by default), the
//! encoder's four feature maps are averaged over each cell and concatenated,
//! and one linear layer predicts for each cell and each of the 19 classes
//! whether the cell contains it (binary cross-entropy). With `grid = 1` this is
//! image-level tagging, as ImageNet classification is. Only the encoder is
//! kept; its tensors carry the names of the segmentation models
//! (`segformer.encoder.*`), so the file loads strictly into `segformer_*` and
//! `daformer_*` models of the same MiT size, heads left at their
//! initialisation.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::classes::NUM_CLASSES;
use crate::data::loader::{IMAGENET_MEAN, IMAGENET_STD};
use crate::data::synth_pretrain::{pretrain_samples, PretrainSample, PretrainSetConfig};
use crate::nn::layers::Linear;
use crate::nn::mit::{MitConfig, MixTransformer};
use crate::nn::{seeded_var_builder, ForwardCtx};
use crate::train::optimizer::{AdamW, AdamWConfig};
use crate::train::schedule::PolySchedule;
use crate::{Error, Result};

/// Prefix of the encoder's tensors, as in the segmentation models.
pub const ENCODER_PREFIX: &str = "segformer.encoder";

/// Everything that determines a pretrained encoder.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PretrainConfig {
    /// MiT size (`tiny`, `b0` … `b5`).
    pub encoder: String,
    /// Seed of the initialisation, the pretraining set and the data order.
    pub seed: u64,
    pub iters: usize,
    pub batch_size: usize,
    /// Peak learning rate of the encoder (the classifier gets ×10, norms no decay).
    pub lr: f64,
    pub warmup_iters: usize,
    /// Held-out crops scored at the end (mean average precision).
    pub check_size: usize,
    pub set: PretrainSetConfig,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            encoder: "tiny".into(),
            seed: 0,
            iters: 5000,
            batch_size: 32,
            lr: 1e-3,
            warmup_iters: 250,
            check_size: 512,
            set: PretrainSetConfig::default(),
        }
    }
}

impl PretrainConfig {
    pub fn validate(&self) -> Result<()> {
        MitConfig::by_name(&self.encoder).map_err(|e| Error::Config {
            origin: "pretrain".into(),
            message: format!("encoder: {e}"),
        })?;
        let fail = |message: String| Error::Config {
            origin: "pretrain".into(),
            message,
        };
        if self.iters == 0 || self.batch_size == 0 {
            return Err(fail(format!(
                "iters = {} and batch_size = {} must be > 0",
                self.iters, self.batch_size
            )));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(fail(format!("lr = {} must be finite and > 0", self.lr)));
        }
        self.set.validate()
    }
}

/// What a pretraining run reports.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PretrainReport {
    /// Mean training loss of the first and the last 10 % of iterations.
    pub first_loss: f64,
    pub last_loss: f64,
    /// Mean average precision over the classes present in the check set,
    /// for the pretrained network and for the same network at its initialisation.
    pub check_map: f64,
    pub check_map_at_init: f64,
    /// Average precision per class (`None`: no positive crop in the check set).
    pub check_ap: Vec<Option<f64>>,
    /// Share of check crops that contain each class.
    pub check_prevalence: Vec<f64>,
    /// Trainable parameters of the encoder.
    pub encoder_parameters: usize,
}

/// The encoder with its classification head.
struct Classifier {
    encoder: MixTransformer,
    head: Linear,
    grid: usize,
}

impl Classifier {
    fn new(
        mit: &MitConfig,
        grid: usize,
        vars: &VarMap,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let vb = seeded_var_builder(vars, seed, DType::F32, device);
        let encoder = MixTransformer::new(mit, vb.pp("segformer").pp("encoder"), 0.0)?;
        let width: usize = mit.hidden_sizes.iter().sum();
        let head = Linear::new(width, NUM_CLASSES, vb.pp("pretrain_head"))?;
        Ok(Self {
            encoder,
            head,
            grid,
        })
    }

    /// (B, 3, c, c) normalised images → (B, grid², 19) logits, cells row-major.
    fn forward(&self, x: &Tensor, rng: &mut ChaCha8Rng) -> Result<Tensor> {
        let mut ctx = ForwardCtx::train(rng);
        let feats = self.encoder.forward(x, &mut ctx)?;
        let pooled = feats
            .iter()
            .map(|f| cell_means(f, self.grid))
            .collect::<Result<Vec<_>>>()?;
        // (B, C, g, g) → (B, g², C) → logits per cell.
        let cells = Tensor::cat(&pooled, 1)?;
        let (b, c, g, _) = cells.dims4()?;
        let cells = cells
            .reshape((b, c, g * g))?
            .transpose(1, 2)?
            .contiguous()?;
        Ok(self.head.forward(&cells)?)
    }
}

/// The mean of `f` (B, C, s, s) over each cell of a `g × g` grid, (B, C, g, g):
/// averaged when the map is finer than the grid, repeated when it is coarser.
fn cell_means(f: &Tensor, g: usize) -> Result<Tensor> {
    let (b, c, h, w) = f.dims4()?;
    if h != w || !(h.is_multiple_of(g) || g.is_multiple_of(h)) {
        return Err(Error::msg(format!(
            "pretrain: a {h}×{w} feature map does not fit a {g}×{g} grid"
        )));
    }
    Ok(if h >= g {
        let k = h / g;
        f.reshape((b, c, g, k, g, k))?.mean(5)?.mean(3)?
    } else {
        let r = g / h;
        f.reshape((b, c, h, 1, h, 1))?
            .broadcast_as((b, c, h, r, h, r))?
            .reshape((b, c, g, g))?
    })
}

/// Images as (B, 3, c, c) normalised tensors and presence as (B, cells, 19) 0/1 targets.
fn batch_tensors(samples: &[PretrainSample], device: &Device) -> Result<(Tensor, Tensor)> {
    let c = samples.first().map(|s| s.crop).unwrap_or(0);
    let mut img = Vec::with_capacity(samples.len() * 3 * c * c);
    let cells = samples.first().map(|s| s.present.len()).unwrap_or(0);
    let mut tgt = Vec::with_capacity(samples.len() * cells * NUM_CLASSES);
    for s in samples {
        for ch in 0..3 {
            for p in 0..c * c {
                img.push((s.image[p * 3 + ch] as f32 - IMAGENET_MEAN[ch]) / IMAGENET_STD[ch]);
            }
        }
        tgt.extend(
            s.present
                .iter()
                .flatten()
                .map(|&p| if p { 1f32 } else { 0.0 }),
        );
    }
    let n = samples.len();
    Ok((
        Tensor::from_vec(img, (n, 3, c, c), device)?,
        Tensor::from_vec(tgt, (n, cells, NUM_CLASSES), device)?,
    ))
}

/// Mean binary cross-entropy with logits, in the stable form
/// `max(x, 0) − x·y + log(1 + exp(−|x|))`.
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let softplus_neg_abs = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    (logits.relu()? - (logits * targets)?)?
        .add(&softplus_neg_abs)?
        .mean_all()
}

/// Average precision of one class: mean precision at each positive, scores
/// ranked high to low (ties in input order). `None` without positives.
pub fn average_precision(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut hits, mut sum) = (0usize, 0f64);
    for (rank, &i) in order.iter().enumerate() {
        if positive[i] {
            hits += 1;
            sum += hits as f64 / (rank + 1) as f64;
        }
    }
    (hits > 0).then(|| sum / hits as f64)
}

/// Per-class AP of `model` on the check crops.
fn score(
    model: &Classifier,
    check: &[PretrainSample],
    device: &Device,
) -> Result<Vec<Option<f64>>> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut scores: Vec<Vec<f32>> = vec![Vec::new(); NUM_CLASSES];
    for chunk in check.chunks(64) {
        let (x, _) = batch_tensors(chunk, device)?;
        let logits = model.forward(&x, &mut rng)?.detach().to_vec3::<f32>()?;
        for row in logits.into_iter().flatten() {
            for (c, v) in row.into_iter().enumerate() {
                scores[c].push(v);
            }
        }
    }
    Ok((0..NUM_CLASSES)
        .map(|c| {
            let pos: Vec<bool> = check
                .iter()
                .flat_map(|s| s.present.iter().map(move |p| p[c]))
                .collect();
            average_precision(&scores[c], &pos)
        })
        .collect())
}

fn mean_ap(ap: &[Option<f64>]) -> f64 {
    let v: Vec<f64> = ap.iter().flatten().copied().collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// A pretrained encoder: its variables (the encoder's alone) and the report.
pub struct Pretrained {
    pub encoder: HashMap<String, Tensor>,
    pub report: PretrainReport,
}

impl Pretrained {
    /// Writes the encoder's tensors as safetensors, through a temporary file
    /// renamed into place. The bytes depend only on the configuration.
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let tmp = dir.join(format!(".pretrain.tmp{}", std::process::id()));
        candle_core::safetensors::save(&self.encoder, &tmp)
            .map_err(|e| Error::file(&tmp, e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }
}

/// Trains the encoder of `cfg`; `on_log(iteration, loss, lr)` is called every
/// `log_every` iterations (and at the last).
pub fn pretrain(
    cfg: &PretrainConfig,
    device: &Device,
    log_every: usize,
    on_log: &mut dyn FnMut(usize, f64, f64),
) -> Result<Pretrained> {
    cfg.validate()?;
    let mit = MitConfig::by_name(&cfg.encoder)?;
    let vars = VarMap::new();
    let model = Classifier::new(&mit, cfg.set.grid, &vars, cfg.seed, device)?;
    let mut opt = AdamW::new(
        &vars,
        AdamWConfig {
            custom_keys: AdamWConfig::default()
                .custom_keys
                .into_iter()
                .map(|mut r| {
                    if r.key == "head" {
                        r.key = "pretrain_head".into();
                    }
                    r
                })
                .collect(),
            ..AdamWConfig::default()
        },
    )?;
    let schedule = PolySchedule {
        base_lr: cfg.lr,
        max_iters: cfg.iters,
        power: 1.0,
        min_lr: 0.0,
        warmup_iters: cfg.warmup_iters,
        warmup_ratio: 1e-6,
    };
    let check_idx: Vec<usize> = (0..cfg.check_size).collect();
    let check = pretrain_samples(&cfg.set, cfg.seed, false, &check_idx);
    let check_map_at_init = mean_ap(&score(&model, &check, device)?);

    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5052_4554_5241_494e);
    let window = (cfg.iters / 10).max(1);
    let (mut first, mut last) = (0f64, 0f64);
    let mut since_log = (0f64, 0usize);
    for it in 0..cfg.iters {
        let idx: Vec<usize> = (it * cfg.batch_size..(it + 1) * cfg.batch_size).collect();
        let samples = pretrain_samples(&cfg.set, cfg.seed, true, &idx);
        let (x, y) = batch_tensors(&samples, device)?;
        let loss = bce_with_logits(&model.forward(&x, &mut rng)?, &y)?;
        let value = loss.to_scalar::<f32>()? as f64;
        if !value.is_finite() {
            return Err(Error::msg(format!(
                "pretrain: the loss is {value} at iteration {it}"
            )));
        }
        let lr = schedule.lr(it);
        opt.step(&loss.backward()?, lr)?;
        if it < window {
            first += value / window as f64;
        }
        if it >= cfg.iters - window {
            last += value / window as f64;
        }
        since_log = (since_log.0 + value, since_log.1 + 1);
        if (it + 1) % log_every.max(1) == 0 || it + 1 == cfg.iters {
            on_log(it + 1, since_log.0 / since_log.1 as f64, lr);
            since_log = (0.0, 0);
        }
    }
    let check_ap = score(&model, &check, device)?;
    let cells = check.iter().map(|s| s.present.len()).sum::<usize>().max(1);
    let prevalence = (0..NUM_CLASSES)
        .map(|c| {
            let n = check
                .iter()
                .flat_map(|s| s.present.iter())
                .filter(|p| p[c])
                .count();
            n as f64 / cells as f64
        })
        .collect();
    let data = vars
        .data()
        .lock()
        .map_err(|_| Error::msg("VarMap lock poisoned"))?;
    let encoder: HashMap<String, Tensor> = data
        .iter()
        .filter(|(n, _)| n.starts_with(ENCODER_PREFIX))
        .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
        .collect();
    let encoder_parameters = encoder
        .iter()
        .filter(|(n, _)| !crate::nn::is_buffer(n))
        .map(|(_, t)| t.elem_count())
        .sum();
    Ok(Pretrained {
        encoder,
        report: PretrainReport {
            first_loss: first,
            last_loss: last,
            check_map: mean_ap(&check_ap),
            check_map_at_init,
            check_ap,
            check_prevalence: prevalence,
            encoder_parameters,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bce_matches_the_direct_formula() {
        let x = Tensor::new(&[[-3.0f32, 0.0, 2.5], [40.0, -40.0, 0.7]], &Device::Cpu).unwrap();
        let y = Tensor::new(&[[0.0f32, 1.0, 1.0], [1.0, 0.0, 0.0]], &Device::Cpu).unwrap();
        let got = bce_with_logits(&x, &y).unwrap().to_scalar::<f32>().unwrap() as f64;
        let xs = [-3.0f64, 0.0, 2.5, 40.0, -40.0, 0.7];
        let ys = [0.0f64, 1.0, 1.0, 1.0, 0.0, 0.0];
        let want: f64 = xs
            .iter()
            .zip(ys)
            .map(|(&x, y)| {
                let p = 1.0 / (1.0 + (-x).exp());
                -(y * p.max(1e-300).ln() + (1.0 - y) * (1.0 - p).max(1e-300).ln())
            })
            .sum::<f64>()
            / 6.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn average_precision_of_known_rankings() {
        assert_eq!(
            average_precision(&[0.9, 0.8, 0.1], &[true, true, false]),
            Some(1.0)
        );
        // Positives at ranks 2 and 3: (1/2 + 2/3) / 2.
        let ap = average_precision(&[0.9, 0.8, 0.7], &[false, true, true]).unwrap();
        assert!((ap - (0.5 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert_eq!(average_precision(&[0.1], &[false]), None);
    }
}
