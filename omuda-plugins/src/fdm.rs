//! FDM, Feature Distillation Masking (design: `docs/omuda.md`).
//!
//! Masked feature distillation: the student encodes a block-masked image and
//! is pulled, on thing-class cells, towards the features a frozen encoder
//! `E₀` computes on the unmasked image. The distance, the label downscaling
//! and the thing mask follow DAFormer's thing-class feature distance
//! (`lhoyer/MIC seg/mmseg/models/uda/dacs.py`, `DACS.calc_feat_dist` and
//! `DACS.masked_feat_dist`; `seg/mmseg/utils/utils.py::downscale_label_ratio`),
//! which FDM replaces when the host attaches it as a hook named `"fd"`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use omuda_core::nn::weights::build_initial;
use omuda_core::nn::{ForwardCtx, SegModel};
use omuda_core::ops::block_mask::scaled_block;
use omuda_core::ops::feature_distance::level_index;

use crate::config::PluginsConfig;
use omuda_core::train::{ChaCha8Rng, NamedLoss, StepHook, StepView};
use omuda_core::{Error, Result};

use crate::cam::thing_table;
use crate::masks::{
    cell_mean, downscale_label_ratio, masked_feature_distance, random_block_mask, IGNORE,
};

/// Settings of FDM (`[plugin.fdm]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FdmConfig {
    /// Probability that an input block is masked.
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
    /// Loss weight λ_fdm.
    pub weight: f64,
    /// Safetensors file with the frozen encoder's weights (names as the
    /// student's, e.g. `segformer.encoder.*`). None: the weights the student
    /// was initialised from (same model, same seed). `{seed}` in the path is
    /// replaced by the run's seed.
    pub encoder: Option<PathBuf>,
}

impl Default for FdmConfig {
    fn default() -> Self {
        Self {
            mask_ratio: 0.5,
            block_size: 64,
            reference_height: 1024,
            on_target: true,
            layer: -1,
            downscale_label_ratio: 0.75,
            weight: 0.005,
            encoder: None,
        }
    }
}

/// Feature Distillation Masking.
pub struct Fdm {
    cfg: FdmConfig,
    thing_classes: Vec<u32>,
    /// The frozen encoder, built at the first step.
    frozen: Option<(Box<dyn SegModel>, VarMap)>,
    metrics: Vec<(String, f64)>,
}

impl Default for Fdm {
    fn default() -> Self {
        let p = PluginsConfig::default();
        Self::new(p.fdm, p.thing_classes)
    }
}

/// The feature-cell mask (B, hf, wf) of FDM: cells whose downscaled label is
/// a thing class and, when `confidence` is given, whose mean confidence is
/// at least `threshold`.
#[allow(clippy::too_many_arguments)]
pub fn cell_mask(
    label: &[u32],
    confidence: Option<&[f32]>,
    (b, h, w): (usize, usize, usize),
    (hf, wf): (usize, usize),
    is_thing: &[bool],
    min_ratio: f32,
    threshold: f32,
) -> Result<Vec<f32>> {
    let k = is_thing.len();
    let mut out = Vec::with_capacity(b * hf * wf);
    for i in 0..b {
        let lab = downscale_label_ratio(
            &label[i * h * w..(i + 1) * h * w],
            h,
            w,
            hf,
            wf,
            min_ratio,
            k,
        )?;
        let conf = match confidence {
            Some(c) => Some(cell_mean(&c[i * h * w..(i + 1) * h * w], h, w, hf, wf)?),
            None => None,
        };
        for (j, &c) in lab.iter().enumerate() {
            let thing = c != IGNORE && is_thing.get(c as usize).copied().unwrap_or(false);
            let confident = conf.as_ref().is_none_or(|cf| cf[j] >= threshold);
            out.push(if thing && confident { 1.0 } else { 0.0 });
        }
    }
    Ok(out)
}

impl Fdm {
    pub fn new(cfg: FdmConfig, thing_classes: Vec<u32>) -> Self {
        Self {
            cfg,
            thing_classes,
            frozen: None,
            metrics: Vec::new(),
        }
    }

    pub fn config(&self) -> &FdmConfig {
        &self.cfg
    }

    /// Build `E₀`: the host's model with the weights the student was
    /// initialised from (same seeded initialisation, then the pretrained
    /// `model.weights` if set), or those of `cfg.encoder`.
    fn frozen(&mut self, view: &StepView, device: &Device) -> Result<&dyn SegModel> {
        if self.frozen.is_none() {
            // The student's initial network, as SelfTraining::new builds it.
            let (model, vars, _) = build_initial(&view.spec.model, view.spec.seed, device)?;
            if let Some(path) = &self.cfg.encoder {
                // `{seed}` in the path stands for the run's seed (one encoder per seed).
                let path = PathBuf::from(
                    path.to_string_lossy()
                        .replace("{seed}", &view.spec.seed.to_string()),
                );
                load_encoder(&vars, &path)?;
            }
            self.frozen = Some((model, vars));
        }
        match &self.frozen {
            Some((m, _)) => Ok(m.as_ref()),
            None => Err(Error::msg("fdm: frozen encoder missing")),
        }
    }

    /// One distillation term on `image` with per-pixel `label` (and the
    /// pseudo-label `confidence` on the target). None when no cell is kept.
    fn distil(
        &mut self,
        view: &StepView,
        image: &Tensor,
        label: &Tensor,
        confidence: Option<&Tensor>,
        rng: &mut ChaCha8Rng,
    ) -> Result<Option<Tensor>> {
        let device = image.device().clone();
        let (b, _, h, w) = image.dims4()?;
        let is_thing = thing_table(&self.thing_classes, view.num_classes);
        let threshold = view.spec.uda.pseudo_threshold;
        let (cfg_layer, ratio, block) = (
            self.cfg.layer,
            self.cfg.downscale_label_ratio,
            scaled_block(self.cfg.block_size, self.cfg.reference_height, h),
        );
        let mask_ratio = self.cfg.mask_ratio;
        // E₀ on the unmasked image, no graph, evaluation mode.
        let f0 = {
            let e0 = self.frozen(view, &device)?;
            let mut ctx = ForwardCtx::eval(rng);
            let feats = e0.features(image, &mut ctx)?;
            feats[level_index(cfg_layer, feats.len(), "plugin.fdm.layer")?].detach()
        };
        let (_, _, hf, wf) = f0.dims4()?;
        let lab = label
            .flatten_all()?
            .to_dtype(DType::U32)?
            .to_vec1::<u32>()?;
        let conf = match confidence {
            Some(c) => Some(c.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => None,
        };
        let cells = cell_mask(
            &lab,
            conf.as_deref(),
            (b, h, w),
            (hf, wf),
            &is_thing,
            ratio,
            threshold,
        )?;
        let kept = cells.iter().filter(|&&v| v > 0.0).count();
        if kept == 0 {
            return Ok(None);
        }
        let mut keep = Vec::with_capacity(b * h * w);
        for _ in 0..b {
            keep.extend(random_block_mask(h, w, block, mask_ratio, rng));
        }
        let keep = Tensor::from_vec(keep, (b, 1, h, w), &device)?.to_dtype(image.dtype())?;
        let masked = image.broadcast_mul(&keep)?;
        let f = {
            let mut ctx = ForwardCtx::train(rng);
            let feats = view.student.features(&masked, &mut ctx)?;
            let i = level_index(cfg_layer, feats.len(), "plugin.fdm.layer")?;
            feats[i].clone()
        };
        let cells = Tensor::from_vec(cells, (b, hf, wf), &device)?;
        masked_feature_distance(&f, &f0, &cells)
    }
}

/// Load the variables of `vars` found in the safetensors file `path`. Every
/// variable whose name contains `encoder` must be present with its shape.
pub fn load_encoder(vars: &VarMap, path: &Path) -> Result<()> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::file(path, e.to_string()))?;
    let data = vars
        .data()
        .lock()
        .map_err(|_| Error::msg("VarMap lock poisoned"))?;
    for (name, var) in data.iter() {
        match tensors.get(name) {
            Some(t) if t.shape() == var.shape() => {
                var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?
            }
            Some(t) => {
                return Err(Error::file(
                    path,
                    format!(
                        "tensor `{name}` has shape {:?}, expected {:?}",
                        t.shape(),
                        var.shape()
                    ),
                ))
            }
            None if name.contains("encoder") => {
                return Err(Error::file(
                    path,
                    format!(
                        "no tensor `{name}` (expected shape {:?}) for the FDM encoder",
                        var.shape()
                    ),
                ))
            }
            None => {}
        }
    }
    Ok(())
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
        let src = self.distil(
            view,
            &view.batch.source_image,
            &view.batch.source_label,
            None,
            rng,
        )?;
        self.metrics
            .push(("no_cells_src".into(), if src.is_none() { 1.0 } else { 0.0 }));
        out.push(NamedLoss {
            name: "loss_fdm_src".into(),
            value: (src.map_or_else(zero, Ok)? * self.cfg.weight)?,
        });
        if self.cfg.on_target {
            if let Some(p) = view.pseudo {
                let tgt = self.distil(
                    view,
                    &view.batch.target_image,
                    &p.label,
                    Some(&p.confidence),
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
