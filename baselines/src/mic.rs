//! MIC, Masked Image Consistency (`lhoyer/MIC
//! seg/mmseg/models/uda/masking_consistency_module.py::MaskingConsistencyModule`
//! with `mask_mode='separatetrgaug'`, `mask_alpha='same'`,
//! `mask_pseudo_threshold='same'`; `seg/mmseg/models/utils/masking_transforms.py`).
//!
//! A hook on the shared step's extra-loss point, so it attaches to any host
//! built on that step (`MIC(DACS)`, `MIC(DAFormer)`, `MIC(HRDA)`). The term
//! is omuda-core's masked consistency
//! ([`omuda_core::train::masked_consistency`]: colour jitter and blur with
//! fresh draws, a keep-mask, the host's own loss against the host teacher's
//! pseudo-labels and pixel weights, its main term times λ); MIC's mask rule
//! is uniform random blocks (`b` scaled with the crop height, ratio 0.7;
//! masked pixels are 0 in normalised space).
//!
//! Named `"mic"`: OMUDA's CAM replaces it.

use candle_core::Tensor;
use omuda_core::ops::augment::StrongAugConfig;
use omuda_core::ops::block_mask::{random_block_mask, scaled_block};
use omuda_core::ops::pseudo::PseudoLabels;
use omuda_core::train::masked_consistency::{MaskRule, MaskedConsistency};
use omuda_core::train::{ChaCha8Rng, NamedLoss, SelfTraining, StepHook, StepView};
use omuda_core::Result;
use rand::Rng;

/// Masked image consistency (MIC `configs/mic/gtaHR2csHR_mic_hrda.py`:
/// `mask_mode='separatetrgaug'`, block mask 64 px at full resolution, ratio
/// 0.7, `mask_lambda=1`, colour jitter s 0.2 p 0.2 and blur as DACS's).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MicConfig {
    /// Block size `b` in pixels at `reference_height`; `b` scales with the
    /// crop height (64 on 1024-high HRDA crops, 32 on 512-high DAFormer
    /// crops: `experiments.py` id 81). `reference_height = 0`: `b` as is.
    pub block_size: usize,
    pub reference_height: usize,
    /// A block is masked iff its uniform draw is `≤ mask_ratio` (kept iff `>`).
    pub mask_ratio: f32,
    /// Weight of the masked loss (`mask_lambda`): it scales the host's main
    /// term, which is the whole loss except under HRDA, whose detail term
    /// keeps its weight (as MIC scales only `decode.loss_seg`).
    pub lambda: f64,
    /// Colour jitter and blur of the target before masking (fresh draws). The
    /// reference's MIC blur ignores DACS's `uda.strong_aug.blur` flag, so
    /// `aug.blur` here is MIC's own switch (on, as published).
    pub aug: StrongAugConfig,
}

impl Default for MicConfig {
    fn default() -> Self {
        Self {
            block_size: 64,
            reference_height: 1024,
            mask_ratio: 0.7,
            lambda: 1.0,
            aug: StrongAugConfig::default(),
        }
    }
}

impl MicConfig {
    /// Range checks; each message names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.block_size == 0 {
            return Err("mic.block_size must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.mask_ratio) {
            return Err(format!(
                "mic.mask_ratio = {}: expected a value in [0, 1]",
                self.mask_ratio
            ));
        }
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return Err(format!(
                "mic.lambda = {}: expected a finite value >= 0",
                self.lambda
            ));
        }
        self.aug.validate().map_err(|e| format!("mic.aug: {e}"))
    }
}

/// MIC's mask rule: blocks of `b` pixels (scaled with the image height),
/// each masked with probability `mask_ratio`, drawn per image.
pub struct UniformBlocks {
    pub block_size: usize,
    pub reference_height: usize,
    pub mask_ratio: f32,
}

impl UniformBlocks {
    /// Block size for images of height `height` (64 at 1024, 32 at 512).
    pub fn block_size(&self, height: usize) -> usize {
        scaled_block(self.block_size, self.reference_height, height)
    }

    /// Keep-masks (B, 1, H, W) for a batch of `b` images of `h × w`.
    pub fn batch_mask<R: Rng + ?Sized>(
        &self,
        b: usize,
        h: usize,
        w: usize,
        rng: &mut R,
        device: &candle_core::Device,
    ) -> Result<Tensor> {
        let block = self.block_size(h);
        let mut keep = Vec::with_capacity(b * h * w);
        for _ in 0..b {
            keep.extend(random_block_mask(h, w, block, self.mask_ratio, rng)?);
        }
        Ok(Tensor::from_vec(keep, (b, 1, h, w), device)?)
    }
}

impl MaskRule for UniformBlocks {
    fn keep_mask(
        &mut self,
        image: &Tensor,
        _pseudo: &PseudoLabels,
        _num_classes: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Tensor> {
        let (b, _, h, w) = image.dims4()?;
        self.batch_mask(b, h, w, rng, image.device())
    }
}

/// The MIC hook.
pub struct Mic {
    cfg: MicConfig,
    term: MaskedConsistency<UniformBlocks>,
}

impl Mic {
    pub fn new(cfg: MicConfig) -> Self {
        let rule = UniformBlocks {
            block_size: cfg.block_size,
            reference_height: cfg.reference_height,
            mask_ratio: cfg.mask_ratio,
        };
        Self {
            term: MaskedConsistency::new("loss_mic", cfg.lambda, cfg.aug.clone(), rule),
            cfg,
        }
    }

    /// `host` with MIC attached (`MIC(host)`).
    pub fn wrap(host: SelfTraining, cfg: &MicConfig) -> SelfTraining {
        host.with(Mic::new(cfg.clone()))
    }

    pub fn config(&self) -> &MicConfig {
        &self.cfg
    }

    /// The mask rule (block size, batch masks).
    pub fn rule(&self) -> &UniformBlocks {
        &self.term.rule
    }
}

impl StepHook for Mic {
    fn name(&self) -> &str {
        "mic"
    }

    fn extra_losses(&mut self, view: &StepView, rng: &mut ChaCha8Rng) -> Result<Vec<NamedLoss>> {
        self.term.losses(view, rng)
    }

    fn metrics(&self) -> Vec<(String, f64)> {
        self.term.metrics()
    }

    fn debug_masks(&self) -> Vec<(String, Tensor)> {
        self.term.debug_mask("MIC mask")
    }
}
