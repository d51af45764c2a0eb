//! CDM, Class Decoupling Masking (design: `docs/omuda.md`).
//!
//! Replaces the host's one batch-wide pseudo-label weight (DACS: the share of
//! confident pixels, `dacs.py::DACS.get_pseudo_label_and_weight`) by class-wise
//! masking: each class has its own confidence threshold, derived from a
//! running mean of the teacher's confidence on that class, and the target
//! part of the mixed (and masked) losses is averaged per class.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use omuda_core::data::classes::class_name;
use omuda_core::ops::pseudo::PseudoLabels;
use omuda_core::train::{ChaCha8Rng, StepHook, StepView, TargetAveraging};
use omuda_core::{Error, Result};

/// How CDM turns confidence into a pixel weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CdmMode {
    /// `w = 1[conf ≥ τ_ŷ]`.
    Hard,
    /// `w = min(1, conf / τ_ŷ)`.
    Soft,
}

/// Settings of CDM (`[plugin.cdm]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CdmConfig {
    /// EMA momentum `m` of the per-class mean confidence μ_c.
    pub momentum: f64,
    /// Base threshold τ; None: the host's pseudo-label threshold (0.968).
    pub threshold: Option<f32>,
    pub mode: CdmMode,
    /// Average the target part of the mixed (and masked) losses per class,
    /// then over the classes present: `true`, `false`, or `"auto"` (the
    /// default): on, except beside CAM's context mix (see [`ClassBalancing`]).
    pub class_balanced: ClassBalancing,
}

/// Whether CDM averages the target part per class (`class_balanced`).
///
/// `Auto` is on, except when CDM is attached together with CAM's context mix
/// (`plugins = [..., "cam", ..., "cdm"]` with `plugin.cam.context_mix`, or
/// [`crate::with_omuda`]): the context mix pastes only the source's thing
/// pixels, so a mixed image is mostly target, and averaging it per class lets
/// the few confident pixels of rare classes outweigh the stuff layout. On the
/// built-in benchmark's dev split the averaging is better for CDM alone and
/// worse beside the context mix (docs/omuda.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClassBalancing {
    #[default]
    Auto,
    On,
    Off,
}

impl ClassBalancing {
    /// Whether to balance, given whether CAM's context mix is attached too.
    pub fn resolve(self, beside_context_mix: bool) -> bool {
        match self {
            Self::Auto => !beside_context_mix,
            Self::On => true,
            Self::Off => false,
        }
    }
}

impl From<bool> for ClassBalancing {
    fn from(on: bool) -> Self {
        if on {
            Self::On
        } else {
            Self::Off
        }
    }
}

impl serde::Serialize for ClassBalancing {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Auto => s.serialize_str("auto"),
            Self::On => s.serialize_bool(true),
            Self::Off => s.serialize_bool(false),
        }
    }
}

impl<'de> serde::Deserialize<'de> for ClassBalancing {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ClassBalancing;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false or \"auto\"")
            }
            fn visit_bool<E: serde::de::Error>(
                self,
                v: bool,
            ) -> std::result::Result<Self::Value, E> {
                Ok(v.into())
            }
            fn visit_str<E: serde::de::Error>(
                self,
                v: &str,
            ) -> std::result::Result<Self::Value, E> {
                match v {
                    "auto" => Ok(ClassBalancing::Auto),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Default for CdmConfig {
    fn default() -> Self {
        Self {
            momentum: 0.999,
            threshold: None,
            mode: CdmMode::Hard,
            class_balanced: ClassBalancing::Auto,
        }
    }
}

/// Class Decoupling Masking.
pub struct Cdm {
    cfg: CdmConfig,
    /// `cfg.class_balanced`, resolved (see [`Cdm::beside_context_mix`]).
    class_balanced: bool,
    /// Running mean confidence μ_c per class (empty until the first step).
    mu: Vec<f64>,
    metrics: Vec<(String, f64)>,
}

impl Default for Cdm {
    fn default() -> Self {
        Self::new(CdmConfig::default())
    }
}

/// `τ_c = τ · μ_c / max_k μ_k` (all `τ` when every μ is 0).
pub fn class_thresholds(mu: &[f64], tau: f32) -> Vec<f32> {
    let max = mu.iter().cloned().fold(0.0f64, f64::max);
    mu.iter()
        .map(|&m| {
            if max > 0.0 {
                (tau as f64 * m / max) as f32
            } else {
                tau
            }
        })
        .collect()
}

/// The weight of a pixel with confidence `conf` and class threshold `thr`:
/// hard `1[conf ≥ thr]`, soft `min(1, conf / thr)` (1 when `thr` is 0).
pub fn pixel_weight(conf: f32, thr: f32, mode: CdmMode) -> f32 {
    match mode {
        CdmMode::Hard => {
            if conf >= thr {
                1.0
            } else {
                0.0
            }
        }
        CdmMode::Soft => {
            if thr <= 0.0 {
                1.0
            } else {
                (conf / thr).min(1.0)
            }
        }
    }
}

/// EMA update of the class means: for every class `c` predicted on at least
/// one pixel, `μ_c ← m·μ_c + (1 − m)·mean(conf | label = c)`; other classes
/// keep their value. Labels outside `0..μ.len()` are skipped.
pub fn update_class_means(mu: &mut [f64], label: &[u32], conf: &[f32], momentum: f64) {
    let k = mu.len();
    let mut sum = vec![0f64; k];
    let mut count = vec![0usize; k];
    for (&l, &c) in label.iter().zip(conf) {
        if (l as usize) < k {
            sum[l as usize] += c as f64;
            count[l as usize] += 1;
        }
    }
    for c in 0..k {
        if count[c] > 0 {
            mu[c] = momentum * mu[c] + (1.0 - momentum) * (sum[c] / count[c] as f64);
        }
    }
}

impl Cdm {
    /// CDM alone: `class_balanced = "auto"` is on.
    pub fn new(cfg: CdmConfig) -> Self {
        Self {
            class_balanced: cfg.class_balanced.resolve(false),
            cfg,
            mu: Vec::new(),
            metrics: Vec::new(),
        }
    }

    /// Resolves `class_balanced = "auto"` for a step that also runs CAM's
    /// context mix (`yes`) or not. [`crate::attach`] and
    /// [`crate::with_omuda`] call it; a method composed by hand with
    /// `.with(Cam…).with(Cdm…)` calls it too.
    pub fn beside_context_mix(mut self, yes: bool) -> Self {
        self.class_balanced = self.cfg.class_balanced.resolve(yes);
        self
    }

    /// Whether the target part is averaged per class in this step.
    pub fn class_balanced(&self) -> bool {
        self.class_balanced
    }

    /// The running class means μ (empty before the first step).
    pub fn class_means(&self) -> &[f64] {
        &self.mu
    }

    fn ensure_init(&mut self, num_classes: usize) {
        if self.mu.len() != num_classes {
            self.mu = vec![1.0 / num_classes as f64; num_classes];
        }
    }

    /// Pixel weights (B, H, W) of pseudo-labels under the current class thresholds.
    pub fn weights(&self, pseudo: &PseudoLabels, tau: f32) -> Result<Tensor> {
        let thr = class_thresholds(&self.mu, tau);
        let label = pseudo
            .label
            .flatten_all()?
            .to_dtype(DType::U32)?
            .to_vec1::<u32>()?;
        let conf = pseudo
            .confidence
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        let w: Vec<f32> = label
            .iter()
            .zip(&conf)
            .map(|(&l, &c)| match thr.get(l as usize) {
                Some(&t) => pixel_weight(c, t, self.cfg.mode),
                None => 0.0,
            })
            .collect();
        Ok(Tensor::from_vec(
            w,
            pseudo.confidence.shape(),
            pseudo.confidence.device(),
        )?)
    }
}

impl StepHook for Cdm {
    fn name(&self) -> &str {
        "cdm"
    }

    fn target_averaging(&self) -> Option<TargetAveraging> {
        self.class_balanced
            .then_some(TargetAveraging::ClassBalanced)
    }

    fn on_pseudo_labels(
        &mut self,
        pseudo: &mut PseudoLabels,
        view: &StepView,
        _rng: &mut ChaCha8Rng,
    ) -> Result<()> {
        self.ensure_init(view.num_classes);
        let tau = self.cfg.threshold.unwrap_or(view.spec.uda.pseudo_threshold);
        let w = self.weights(pseudo, tau)?;
        // The host's pseudo-label crop still applies, scaled to the frame as
        // the step scales it.
        let w = view.spec.uda.crop_pseudo_weight(&w)?;
        pseudo.weight = w.to_dtype(pseudo.weight.dtype())?;
        Ok(())
    }

    fn after_step(&mut self, view: &StepView) -> Result<()> {
        self.metrics.clear();
        let Some(pseudo) = view.pseudo else {
            return Ok(());
        };
        self.ensure_init(view.num_classes);
        let label = pseudo
            .label
            .flatten_all()?
            .to_dtype(DType::U32)?
            .to_vec1::<u32>()?;
        let conf = pseudo
            .confidence
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        update_class_means(&mut self.mu, &label, &conf, self.cfg.momentum);
        let mean_w = pseudo
            .weight
            .to_dtype(DType::F64)?
            .mean_all()?
            .to_scalar::<f64>()?;
        self.metrics.push(("weight_mean".into(), mean_w));
        for (c, m) in self.mu.iter().enumerate() {
            let name = if c < 256 {
                class_name(c as u8).replace(' ', "_")
            } else {
                c.to_string()
            };
            self.metrics.push((format!("mu.{name}"), *m));
        }
        Ok(())
    }

    fn metrics(&self) -> Vec<(String, f64)> {
        self.metrics.clone()
    }

    fn state(&self) -> Result<HashMap<String, Tensor>> {
        if self.mu.is_empty() {
            return Ok(HashMap::new());
        }
        let n = self.mu.len();
        Ok(HashMap::from([(
            "mu".to_string(),
            Tensor::from_vec(self.mu.clone(), n, &candle_core::Device::Cpu)?,
        )]))
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let mu = state.get("mu").ok_or_else(|| {
            Error::msg("cdm state: no tensor `mu` (expected the class means, shape (K,))")
        })?;
        self.mu = mu.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        Ok(())
    }
}
