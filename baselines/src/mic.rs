//! MIC, Masked Image Consistency (`lhoyer/MIC
//! seg/mmseg/models/uda/masking_consistency_module.py::MaskingConsistencyModule`
//! with `mask_mode='separatetrgaug'`, `mask_alpha='same'`,
//! `mask_pseudo_threshold='same'`; `seg/mmseg/models/utils/masking_transforms.py`).
//!
//! A hook on the shared step's extra-loss point, so it attaches to any host
//! built on that step (`MIC(DACS)`, `MIC(DAFormer)`, `MIC(HRDA)`):
//!
//! 1. the target batch gets colour jitter and blur with fresh draws (one
//!    decision per step, jitter parameters per image, one blur σ for the batch);
//! 2. then a random block mask (`b` scaled with the crop height, ratio 0.7);
//!    masked pixels are 0 in normalised space;
//! 3. the loss is the host's own loss (`objective.loss`, so HRDA's 0.9 fused +
//!    0.1 detail terms with a new detail crop) against the host teacher's
//!    pseudo-labels and pixel weights (after the margins, before mixing),
//!    averaged like the host's mixed loss, times λ.
//!
//! Named `"mic"`: OMUDA's CAM replaces it.

use candle_core::Tensor;
use omuda_core::nn::ForwardCtx;
use omuda_core::ops::augment::StrongAugConfig;
use omuda_core::ops::augment::{
    sample_blur_sigma, strong_augment, ColorJitterParams, StrongAugParams,
};
use omuda_core::ops::block_mask::mic_block_mask;
use omuda_core::ops::block_mask::scaled_block;
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

/// The MIC hook.
pub struct Mic {
    cfg: MicConfig,
    metrics: Vec<(String, f64)>,
    /// The last step's keep mask (1 = pixel seen), for debug images.
    last_mask: Option<Tensor>,
}

impl Mic {
    pub fn new(cfg: MicConfig) -> Self {
        Self {
            cfg,
            metrics: Vec::new(),
            last_mask: None,
        }
    }

    /// `host` with MIC attached (`MIC(host)`).
    pub fn wrap(host: SelfTraining, cfg: &MicConfig) -> SelfTraining {
        host.with(Mic::new(cfg.clone()))
    }

    pub fn config(&self) -> &MicConfig {
        &self.cfg
    }

    /// Block size for images of height `height` (64 at 1024, 32 at 512).
    pub fn block_size(&self, height: usize) -> usize {
        scaled_block(self.cfg.block_size, self.cfg.reference_height, height)
    }

    /// The augmentation of the `n` target images: one jitter/blur decision
    /// ([`omuda_core::ops::augment::StrongAugConfig::decide`]), jitter
    /// parameters per image (kornia samples per batch element), and one blur
    /// σ for the whole batch (MIC calls `gaussian_blur` once on the batch).
    /// Draw order: decision, jitter of images 0..n, σ.
    pub fn sample_aug<R: Rng + ?Sized>(&self, rng: &mut R, n: usize) -> Vec<StrongAugParams> {
        let aug = &self.cfg.aug;
        let decision = aug.decide(rng);
        let jitter: Vec<Option<ColorJitterParams>> = (0..n)
            .map(|_| {
                decision
                    .jitter
                    .then(|| ColorJitterParams::sample(rng, aug.color_jitter_strength))
            })
            .collect();
        let sigma = decision.blur.then(|| sample_blur_sigma(rng));
        jitter
            .into_iter()
            .map(|jitter| StrongAugParams {
                jitter,
                blur: sigma,
            })
            .collect()
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
            keep.extend(mic_block_mask(h, w, block, self.cfg.mask_ratio, rng)?);
        }
        Ok(Tensor::from_vec(keep, (b, 1, h, w), device)?)
    }
}

impl StepHook for Mic {
    fn name(&self) -> &str {
        "mic"
    }

    fn extra_losses(&mut self, view: &StepView, rng: &mut ChaCha8Rng) -> Result<Vec<NamedLoss>> {
        self.metrics.clear();
        self.last_mask = None;
        let Some(pseudo) = view.pseudo else {
            return Ok(Vec::new());
        };
        let target = &view.batch.target_image;
        let (b, _, h, w) = target.dims4()?;
        // 1. Colour augmentation first, 2. then the block mask.
        let aug = self.sample_aug(rng, b);
        let image = strong_augment(target, &aug)?;
        let keep = self.batch_mask(b, h, w, rng, target.device())?;
        let masked = image.broadcast_mul(&keep.to_dtype(image.dtype())?)?;
        // 3. The host's loss with the host's pseudo-labels, weights and averaging.
        let ones = pseudo.weight.ones_like()?;
        let weight = view.target_averaging.weights(
            &pseudo.label,
            &ones,
            &pseudo.weight,
            view.num_classes,
        )?;
        // λ scales the host's main term only (HRDA's detail term keeps its weight).
        let (loss, _) = {
            let mut ctx = ForwardCtx::train(rng);
            view.objective.loss_with_main_weight(
                view.student,
                &masked,
                &pseudo.label,
                Some(&weight),
                &mut ctx,
                self.cfg.lambda,
            )?
        };
        let kept = keep
            .mean_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        self.metrics.push(("masked_share".into(), 1.0 - kept));
        self.last_mask = Some(keep);
        Ok(vec![NamedLoss {
            name: "loss_mic".into(),
            value: loss,
        }])
    }

    fn metrics(&self) -> Vec<(String, f64)> {
        self.metrics.clone()
    }

    fn debug_masks(&self) -> Vec<(String, Tensor)> {
        self.last_mask
            .iter()
            .map(|m| ("MIC mask".to_string(), m.clone()))
            .collect()
    }
}
