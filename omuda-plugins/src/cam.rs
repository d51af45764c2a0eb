//! CAM, Context-Aware Masking (design: `docs/omuda.md`).
//!
//! A masked-image-consistency loss on the target, as MIC's
//! (`lhoyer/MIC seg/mmseg/models/uda/masking_consistency_module.py`,
//! `MaskingConsistencyModule.__call__`: colour augmentation, then block
//! masking, then the host's loss against the teacher's pseudo-labels with the
//! host's pixel weights), but the mask follows the content: blocks that hold
//! foreground (thing classes in the pseudo-label) are masked in small
//! sub-blocks with a low ratio (local detail survives), background blocks in
//! whole blocks with a high ratio (stuff must be inferred from context).

use candle_core::{DType, Tensor};
use omuda_core::nn::ForwardCtx;
use omuda_core::ops::augment::strong_augment;
use omuda_core::ops::augment::StrongAugConfig;
use omuda_core::ops::block_mask::scaled_block;
use omuda_core::ops::pseudo::PseudoLabels;

use crate::config::PluginsConfig;
use omuda_core::train::{ChaCha8Rng, NamedLoss, StepHook, StepView};
use omuda_core::Result;

use crate::masks::{cam_mask, CamMaskParams, CamMaskStats};

/// Settings of CAM (`[plugin.cam]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CamConfig {
    /// Block size `b` in pixels at `reference_height` (MIC: 64 at 1024).
    pub block_size: usize,
    /// Image height at which `block_size` applies; `b` scales with the crop
    /// height. 0: use `block_size` as is.
    pub reference_height: usize,
    /// A block is foreground if the share of its pixels whose pseudo-label is
    /// a thing class is at least this.
    pub fg_min_fraction: f32,
    /// Probability that a background block is masked (at block size `b`).
    pub bg_mask_ratio: f32,
    /// Probability that a sub-block of a foreground block is masked.
    pub fg_mask_ratio: f32,
    /// Foreground blocks are split into sub-blocks of `b / fg_block_divisor`.
    pub fg_block_divisor: usize,
    /// Loss weight λ_cam.
    pub weight: f64,
    /// Colour jitter and blur of the target before masking (fresh draws; MIC's
    /// defaults).
    pub aug: StrongAugConfig,
    /// ClassMix pastes only thing classes from the source (keeps the target's
    /// stuff layout). Ablation switch.
    pub context_mix: bool,
}

impl Default for CamConfig {
    fn default() -> Self {
        Self {
            block_size: 64,
            reference_height: 1024,
            fg_min_fraction: 0.1,
            bg_mask_ratio: 0.7,
            fg_mask_ratio: 0.3,
            fg_block_divisor: 2,
            weight: 1.0,
            aug: StrongAugConfig::default(),
            context_mix: false,
        }
    }
}

/// Context-Aware Masking. Replaces a hook named `"mic"` (MIC's uniform block
/// mask) when attached to a MIC host.
pub struct Cam {
    cfg: CamConfig,
    thing_classes: Vec<u32>,
    metrics: Vec<(String, f64)>,
    /// The last step's keep mask (1 = pixel seen), for debug images.
    last_mask: Option<Tensor>,
}

impl Default for Cam {
    fn default() -> Self {
        let p = PluginsConfig::default();
        Self::new(p.cam, p.thing_classes)
    }
}

impl Cam {
    pub fn new(cfg: CamConfig, thing_classes: Vec<u32>) -> Self {
        Self {
            cfg,
            thing_classes,
            metrics: Vec::new(),
            last_mask: None,
        }
    }

    pub fn config(&self) -> &CamConfig {
        &self.cfg
    }

    /// The mask parameters for images of height `height`.
    pub fn mask_params(&self, height: usize) -> CamMaskParams {
        CamMaskParams {
            block: scaled_block(self.cfg.block_size, self.cfg.reference_height, height),
            divisor: self.cfg.fg_block_divisor,
            fg_min_fraction: self.cfg.fg_min_fraction,
            bg_mask_ratio: self.cfg.bg_mask_ratio,
            fg_mask_ratio: self.cfg.fg_mask_ratio,
        }
    }

    /// Keep-masks (B, 1, H, W) for the pseudo-labels (B, H, W) and what they realised.
    pub fn batch_mask(
        &self,
        label: &Tensor,
        num_classes: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<(Tensor, CamMaskStats)> {
        let (b, h, w) = label.dims3()?;
        let is_thing = thing_table(&self.thing_classes, num_classes);
        let params = self.mask_params(h);
        let labels = label
            .flatten_all()?
            .to_dtype(DType::U32)?
            .to_vec1::<u32>()?;
        let mut keep = Vec::with_capacity(b * h * w);
        let mut stats = CamMaskStats::default();
        for i in 0..b {
            let (k, st) = cam_mask(
                &labels[i * h * w..(i + 1) * h * w],
                h,
                w,
                &is_thing,
                &params,
                rng,
            )?;
            keep.extend(k);
            stats.add(&st);
        }
        Ok((Tensor::from_vec(keep, (b, 1, h, w), label.device())?, stats))
    }
}

/// `table[c]` is true iff class `c` is a thing class.
pub fn thing_table(thing_classes: &[u32], num_classes: usize) -> Vec<bool> {
    let mut t = vec![false; num_classes];
    for &c in thing_classes {
        if let Some(v) = t.get_mut(c as usize) {
            *v = true;
        }
    }
    t
}

impl StepHook for Cam {
    fn name(&self) -> &str {
        "cam"
    }

    fn replaces(&self) -> Vec<String> {
        vec!["mic".into()]
    }

    /// `context_mix`: keep only the thing classes of the ClassMix masks.
    fn on_mix_masks(
        &mut self,
        masks: &mut Vec<Tensor>,
        view: &StepView,
        _rng: &mut ChaCha8Rng,
    ) -> Result<()> {
        if !self.cfg.context_mix {
            return Ok(());
        }
        let is_thing = thing_table(&self.thing_classes, view.num_classes);
        for (i, m) in masks.iter_mut().enumerate() {
            let lab = view.batch.source_label.get(i)?;
            let (h, w) = lab.dims2()?;
            let things: Vec<f32> = lab
                .flatten_all()?
                .to_vec1::<u32>()?
                .iter()
                .map(|&c| {
                    if is_thing.get(c as usize).copied().unwrap_or(false) {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect();
            let things = Tensor::from_vec(things, (h, w), m.device())?.to_dtype(m.dtype())?;
            *m = m.mul(&things)?;
        }
        Ok(())
    }

    fn extra_losses(&mut self, view: &StepView, rng: &mut ChaCha8Rng) -> Result<Vec<NamedLoss>> {
        self.metrics.clear();
        self.last_mask = None;
        let Some(pseudo): Option<&PseudoLabels> = view.pseudo else {
            return Ok(Vec::new());
        };
        let target = &view.batch.target_image;
        let b = target.dim(0)?;
        // 1. Colour jitter and blur with fresh draws, then 2-3. the content mask.
        let aug = self.cfg.aug.sample(rng, b);
        let image = strong_augment(target, &aug)?;
        let (keep, stats) = self.batch_mask(&pseudo.label, view.num_classes, rng)?;
        let masked = image.broadcast_mul(&keep.to_dtype(image.dtype())?)?;
        self.last_mask = Some(keep.clone());
        // 4. The host's loss with the host's pixel weights and target averaging.
        let ones = pseudo.weight.ones_like()?;
        let weight = view.target_averaging.weights(
            &pseudo.label,
            &ones,
            &pseudo.weight,
            view.num_classes,
        )?;
        let (loss, _) = {
            let mut ctx = ForwardCtx::train(rng);
            view.objective.loss(
                view.student,
                &masked,
                &pseudo.label,
                Some(&weight),
                &mut ctx,
            )?
        };
        let share = |a: usize, n: usize| if n == 0 { 0.0 } else { a as f64 / n as f64 };
        self.metrics = vec![
            ("masked_share".into(), stats.masked_share()),
            (
                "fg_block_share".into(),
                share(stats.fg_blocks, stats.blocks),
            ),
            (
                "fg_masked_share".into(),
                share(stats.fg_masked, stats.fg_pixels),
            ),
            (
                "bg_masked_share".into(),
                share(stats.bg_masked, stats.bg_pixels),
            ),
        ];
        Ok(vec![NamedLoss {
            name: "loss_cam".into(),
            value: (loss * self.cfg.weight)?,
        }])
    }

    fn metrics(&self) -> Vec<(String, f64)> {
        self.metrics.clone()
    }

    fn debug_masks(&self) -> Vec<(String, Tensor)> {
        self.last_mask
            .iter()
            .map(|m| ("CAM mask".to_string(), m.clone()))
            .collect()
    }
}
