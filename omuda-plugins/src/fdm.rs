//! FDM, Feature Distillation Masking (design: `docs/omuda.md`).
//!
//! Masked feature distillation: the student encodes a block-masked image and
//! is pulled, on thing-class cells, towards the features a frozen encoder
//! `E₀` computes on the unmasked image. The distance, the label downscaling
//! and the thing mask follow DAFormer's thing-class feature distance
//! (`lhoyer/MIC seg/mmseg/models/uda/dacs.py`, `DACS.calc_feat_dist` and
//! `DACS.masked_feat_dist`; `seg/mmseg/utils/utils.py::downscale_label_ratio`),
//! which FDM replaces when the host attaches it as a hook named `"fd"`.

use std::path::PathBuf;

use candle_core::{DType, Tensor};
use omuda_core::nn::ForwardCtx;
use omuda_core::ops::block_mask::{random_block_mask, scaled_block};
use omuda_core::ops::feature_distance::{
    downscale_label_grid, level_index, masked_feature_distance,
};
use omuda_core::ops::IGNORE_INDEX;
use omuda_core::train::frozen_encoder::FrozenEncoder;
use omuda_core::train::{ChaCha8Rng, NamedLoss, StepHook, StepView};
use omuda_core::{Error, Result};

use crate::cam::thing_table;
use crate::config::PluginsConfig;
use crate::masks::cell_mean;

/// Settings of FDM (`[plugin.fdm]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FdmConfig {
    /// Probability that an input block is masked (default 0.25, chosen with
    /// `weight` on the built-in benchmark's dev split; docs/omuda.md).
    pub mask_ratio: f32,
    /// Mask block size at `reference_height` (scaled with the crop like CAM's).
    pub block_size: usize,
    pub reference_height: usize,
    /// Also distil on the target batch (labels = pseudo-labels).
    pub on_target: bool,
    /// Encoder level whose features are distilled; negative counts from the
    /// end (-1: the last, stride 32).
    pub layer: i64,
    /// A feature cell gets the label of its majority class when that class
    /// covers at least this share of the cell (DAFormer `downscale_label_ratio`).
    pub downscale_label_ratio: f32,
    /// Loss weight λ_fdm (default 0.05, chosen on dev as DAFormer's feature
    /// distance weight was on this benchmark).
    pub weight: f64,
    /// Weight of the unmasked source term: the student's features of the
    /// whole source image (those the host's step computed) pulled towards
    /// `E₀` on the same thing cells, i.e. DAFormer's feature distance kept
    /// beside the masked term. 0 (the default) leaves it out.
    pub unmasked_weight: f64,
    /// Safetensors file with the frozen encoder's weights (names as the
    /// student's, e.g. `segformer.encoder.*`). None: the weights the student
    /// was initialised from (same model, same seed). `{seed}` in the path is
    /// replaced by the run's seed.
    pub encoder: Option<PathBuf>,
}

impl Default for FdmConfig {
    fn default() -> Self {
        Self {
            mask_ratio: 0.25,
            block_size: 64,
            reference_height: 1024,
            on_target: true,
            layer: -1,
            downscale_label_ratio: 0.75,
            weight: 0.05,
            unmasked_weight: 0.0,
            encoder: None,
        }
    }
}

/// Feature Distillation Masking.
pub struct Fdm {
    cfg: FdmConfig,
    thing_classes: Vec<u32>,
    /// `E₀`: the host's initial network, or with the encoder of `cfg.encoder`.
    frozen: FrozenEncoder,
    metrics: Vec<(String, f64)>,
}

impl Default for Fdm {
    fn default() -> Self {
        let p = PluginsConfig::default();
        Self::new(p.fdm, p.thing_classes)
    }
}

/// The feature-cell mask (B, hf, wf) of FDM: cells whose downscaled label
/// (`cell_label`, B·hf·wf) is a thing class and, when the pixel `confidence`
/// (B·h·w) is given, whose mean confidence is at least `threshold`.
pub fn cell_mask(
    cell_label: &[u32],
    confidence: Option<&[f32]>,
    (b, h, w): (usize, usize, usize),
    (hf, wf): (usize, usize),
    is_thing: &[bool],
    threshold: f32,
) -> Result<Vec<f32>> {
    if cell_label.len() != b * hf * wf {
        return Err(Error::msg(format!(
            "fdm: {} cell labels for {b} images of {hf}×{wf} cells",
            cell_label.len()
        )));
    }
    let mut out = Vec::with_capacity(b * hf * wf);
    for (i, lab) in cell_label.chunks(hf * wf).enumerate() {
        let conf = match confidence {
            Some(c) => Some(cell_mean(&c[i * h * w..(i + 1) * h * w], h, w, hf, wf)?),
            None => None,
        };
        for (j, &c) in lab.iter().enumerate() {
            let thing = c != IGNORE_INDEX && is_thing.get(c as usize).copied().unwrap_or(false);
            let confident = conf.as_ref().is_none_or(|cf| cf[j] >= threshold);
            out.push(if thing && confident { 1.0 } else { 0.0 });
        }
    }
    Ok(out)
}

impl Fdm {
    pub fn new(cfg: FdmConfig, thing_classes: Vec<u32>) -> Self {
        Self {
            frozen: FrozenEncoder::new(cfg.encoder.clone()),
            cfg,
            thing_classes,
            metrics: Vec::new(),
        }
    }

    pub fn config(&self) -> &FdmConfig {
        &self.cfg
    }

    /// The thing (and, on the target, confident) cells of `label` on an
    /// `(hf, wf)` feature grid, as a (B, hf, wf) 0/1 tensor; None when no cell
    /// is kept.
    fn cells(
        &self,
        view: &StepView,
        label: &Tensor,
        confidence: Option<&[f32]>,
        (hf, wf): (usize, usize),
    ) -> Result<Option<Tensor>> {
        let (b, h, w) = label.dims3()?;
        let is_thing = thing_table(&self.thing_classes, view.num_classes);
        let lab = downscale_label_grid(
            label,
            (hf, wf),
            self.cfg.downscale_label_ratio,
            view.num_classes,
        )?
        .flatten_all()?
        .to_vec1::<u32>()?;
        let cells = cell_mask(
            &lab,
            confidence,
            (b, h, w),
            (hf, wf),
            &is_thing,
            view.spec.uda.pseudo_threshold,
        )?;
        if cells.iter().all(|&v| v == 0.0) {
            return Ok(None);
        }
        Ok(Some(Tensor::from_vec(cells, (b, hf, wf), label.device())?))
    }

    /// One distillation term on `image` with per-pixel `label` (and the
    /// pseudo-label `confidence` on the target). None when no cell is kept.
    /// With `unmasked` (the student's features of the host's feature input
    /// of `image`, with graph), also the distance of those features to `E₀`
    /// on the same cells.
    fn distil(
        &mut self,
        view: &StepView,
        image: &Tensor,
        label: &Tensor,
        confidence: Option<&Tensor>,
        unmasked: Option<&Tensor>,
        rng: &mut ChaCha8Rng,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let device = image.device().clone();
        let (b, _, h, w) = image.dims4()?;
        let cfg_layer = self.cfg.layer;
        let block = scaled_block(self.cfg.block_size, self.cfg.reference_height, h);
        let mask_ratio = self.cfg.mask_ratio;
        // E₀ on the unmasked image, no graph, evaluation mode.
        let f0 = self
            .frozen
            .features(view, image, cfg_layer, "plugin.fdm.layer", rng)?;
        let (_, _, hf, wf) = f0.dims4()?;
        let conf = match confidence {
            Some(c) => Some(c.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => None,
        };
        let Some(cells) = self.cells(view, label, conf.as_deref(), (hf, wf))? else {
            return Ok((None, None));
        };
        let whole = match unmasked {
            None => None,
            // The host's features are of `image` itself: same E₀ features, same cells.
            Some(f) if f.dims() == f0.dims() => masked_feature_distance(f, &f0, &cells)?,
            // Multi-resolution hosts encode a resized image (`feature_input`).
            Some(f) => {
                let x = view.objective.feature_input(image)?;
                let f0x = self
                    .frozen
                    .features(view, &x, cfg_layer, "plugin.fdm.layer", rng)?;
                let (_, _, hx, wx) = f0x.dims4()?;
                match self.cells(view, label, conf.as_deref(), (hx, wx))? {
                    Some(cx) => masked_feature_distance(f, &f0x, &cx)?,
                    None => None,
                }
            }
        };
        let mut keep = Vec::with_capacity(b * h * w);
        for _ in 0..b {
            keep.extend(random_block_mask(h, w, block, mask_ratio, rng)?);
        }
        let keep = Tensor::from_vec(keep, (b, 1, h, w), &device)?.to_dtype(image.dtype())?;
        let masked = image.broadcast_mul(&keep)?;
        let f = {
            let mut ctx = ForwardCtx::train(rng);
            let feats = view.student.features(&masked, &mut ctx)?;
            let i = level_index(cfg_layer, feats.len(), "plugin.fdm.layer")?;
            feats[i].clone()
        };
        Ok((masked_feature_distance(&f, &f0, &cells)?, whole))
    }
}

impl StepHook for Fdm {
    fn name(&self) -> &str {
        "fdm"
    }

    fn replaces(&self) -> Vec<String> {
        vec!["fd".into()]
    }

    fn extra_losses(&mut self, view: &StepView, rng: &mut ChaCha8Rng) -> Result<Vec<NamedLoss>> {
        self.metrics.clear();
        let mut out = Vec::new();
        let zero = || Tensor::new(0f32, view.batch.source_image.device());
        let unmasked = if self.cfg.unmasked_weight > 0.0 {
            let features = view.source_features.ok_or_else(|| {
                Error::msg(
                    "plugin.fdm.unmasked_weight > 0 needs the host's source features, \
                     and this host's step passes none",
                )
            })?;
            let i = level_index(self.cfg.layer, features.len(), "plugin.fdm.layer")?;
            Some(&features[i])
        } else {
            None
        };
        let (src, whole) = self.distil(
            view,
            &view.batch.source_image,
            &view.batch.source_label,
            None,
            unmasked,
            rng,
        )?;
        self.metrics
            .push(("no_cells_src".into(), if src.is_none() { 1.0 } else { 0.0 }));
        out.push(NamedLoss {
            name: "loss_fdm_src".into(),
            value: (src.map_or_else(zero, Ok)? * self.cfg.weight)?,
        });
        if unmasked.is_some() {
            out.push(NamedLoss {
                name: "loss_fdm_whole".into(),
                value: (whole.map_or_else(zero, Ok)? * self.cfg.unmasked_weight)?,
            });
        }
        if self.cfg.on_target {
            if let Some(p) = view.pseudo {
                let (tgt, _) = self.distil(
                    view,
                    &view.batch.target_image,
                    &p.label,
                    Some(&p.confidence),
                    None,
                    rng,
                )?;
                self.metrics
                    .push(("no_cells_tgt".into(), if tgt.is_none() { 1.0 } else { 0.0 }));
                out.push(NamedLoss {
                    name: "loss_fdm_tgt".into(),
                    value: (tgt.map_or_else(zero, Ok)? * self.cfg.weight)?,
                });
            }
        }
        Ok(out)
    }

    fn metrics(&self) -> Vec<(String, f64)> {
        self.metrics.clone()
    }
}
