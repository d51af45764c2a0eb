//! The shared self-training step (reference §3.1; MIC
//! `seg/mmseg/models/uda/dacs.py` `DACS.forward_train`), written once.
//! Methods configure it with [`UdaConfig`] and attach [`StepHook`]s.
//!
//! One iteration t:
//!
//! ```text
//!  lr(t) ─────────────────────────────────────────────────────────────┐
//!  teacher ← student (t = 0) | EMA(α_t) (t ≥ 1)                        │
//!  (1) source:  L_src = CE(up(student(x_s)), y_s)                      │
//!  (2) target:  ŷ, w = pseudo_label(up(teacher(x_t)))  ── hook: on_pseudo_labels
//!  (3) mix:     M = ClassMix masks(y_s)                 ── hook: on_mix_masks
//!               x_m, y_m, w_m = mix(M; source, target) → strong aug
//!               L_mix = CE_w(up(student(x_m)), y_m, w_m)
//!  (4) extra:   Σ hook losses                            ── hook: extra_losses
//!  backward(L_src + L_mix + Σ extra); AdamW step at lr(t) ── hook: after_step
//! ```
//!
//! With `self_training = false` only (1) runs: source-only training.
//! The reference runs one backward per loss group; the gradients add up, so a
//! single backward of the sum gives the same update.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::nn::segmentor::build_segmentor;
use crate::nn::{seeded_var_builder, ForwardCtx, ModelConfig, SegModel};
use crate::ops::augment::{strong_augment, StrongAugConfig};
use crate::ops::mix::{class_masks, class_mix, MixedBatch};
use crate::ops::pseudo::{pseudo_label_and_weight, zero_rows, PseudoLabels};
use crate::train::batch::UdaBatch;
use crate::train::ema::{copy_parameters, ema_alpha, ema_update};
use crate::train::hooks::{StepHook, StepView};
use crate::train::method::{StepLog, UdaMethod};
use crate::train::objective::{SegObjective, WholeImage};
use crate::train::optimizer::{AdamW, AdamWConfig};
use crate::train::rng_state::RngState;
use crate::train::schedule::PolySchedule;
use crate::{Error, Result};

/// What the shared step does; each baseline is a choice of these values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UdaConfig {
    /// Train on the target with teacher pseudo-labels and ClassMix (false: source only).
    pub self_training: bool,
    /// EMA teacher momentum α (0.99 for DACS, 0.999 for DAFormer/HRDA/MIC).
    pub ema_alpha: f64,
    /// Confidence threshold τ of the pseudo-label weight.
    pub pseudo_threshold: f32,
    /// Weight of the mixed loss.
    pub mix_loss_weight: f64,
    /// ClassMix picks classes from each image's own labels (original DACS)
    /// instead of the batch union (mmseg re-implementation, the default).
    pub per_image_classes: bool,
    /// Zero the pseudo-label weight of the top/bottom rows (DAFormer: [15, 120]).
    pub pseudo_label_crop: Option<[usize; 2]>,
    /// Colour jitter and blur applied to the mixed images.
    pub strong_aug: StrongAugConfig,
}

impl Default for UdaConfig {
    /// DACS as re-implemented in mmseg (reference §2.3).
    fn default() -> Self {
        Self {
            self_training: true,
            ema_alpha: 0.99,
            pseudo_threshold: 0.968,
            mix_loss_weight: 1.0,
            per_image_classes: false,
            pseudo_label_crop: None,
            strong_aug: StrongAugConfig::default(),
        }
    }
}

/// Everything a [`SelfTraining`] run is built from.
#[derive(Debug, Clone)]
pub struct SelfTrainingSpec {
    pub name: String,
    pub model: ModelConfig,
    pub uda: UdaConfig,
    pub optimizer: AdamWConfig,
    pub schedule: PolySchedule,
    pub seed: u64,
}

/// The shared self-training step and the state it trains.
pub struct SelfTraining {
    spec: SelfTrainingSpec,
    student: Box<dyn SegModel>,
    student_vars: VarMap,
    teacher: Option<(Box<dyn SegModel>, VarMap)>,
    objective: Box<dyn SegObjective>,
    optimizer: AdamW,
    hooks: Vec<Box<dyn StepHook>>,
    /// Every random draw of the step (dropout, masks, augmentation).
    rng: ChaCha8Rng,
    iter: usize,
    device: Device,
}

impl SelfTraining {
    pub fn new(spec: SelfTrainingSpec, device: &Device) -> Result<Self> {
        let student_vars = VarMap::new();
        let student = build_segmentor(&spec.model, seeded_var_builder(&student_vars, spec.seed, DType::F32, device))?;
        let teacher = if spec.uda.self_training {
            let vars = VarMap::new();
            let model = build_segmentor(&spec.model, seeded_var_builder(&vars, spec.seed, DType::F32, device))?;
            Some((model, vars))
        } else {
            None
        };
        let optimizer = AdamW::new(&student_vars, spec.optimizer.clone())?;
        // The step's generator is independent of the initialisation and the data order.
        let rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0x5354_4550_5f52_4e47);
        Ok(Self {
            spec,
            student,
            student_vars,
            teacher,
            objective: Box::new(WholeImage::default()),
            optimizer,
            hooks: Vec::new(),
            rng,
            iter: 0,
            device: device.clone(),
        })
    }

    /// The same method with `hook` attached (builder form of [`Self::add_hook`]).
    pub fn with(mut self, hook: impl StepHook + 'static) -> Self {
        self.hooks.push(Box::new(hook));
        self
    }

    /// Attach a hook; hooks run in the order attached.
    pub fn add_hook(&mut self, hook: Box<dyn StepHook>) {
        self.hooks.push(hook);
    }

    /// Replace how the network is run and scored (e.g. multi-resolution training).
    pub fn set_objective(&mut self, objective: Box<dyn SegObjective>) {
        self.objective = objective;
    }

    pub fn spec(&self) -> &SelfTrainingSpec {
        &self.spec
    }

    pub fn student_vars(&self) -> &VarMap {
        &self.student_vars
    }

    pub fn teacher_vars(&self) -> Option<&VarMap> {
        self.teacher.as_ref().map(|(_, v)| v)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// One iteration of the shared step.
    pub fn step(&mut self, batch: &UdaBatch) -> Result<StepLog> {
        let t = self.iter;
        let lr = self.spec.schedule.lr(t);
        let mut log = StepLog { iter: t, lr, ..StepLog::default() };

        if let Some((_, teacher_vars)) = &self.teacher {
            if t == 0 {
                copy_parameters(teacher_vars, &self.student_vars)?;
            } else {
                ema_update(teacher_vars, &self.student_vars, ema_alpha(t, self.spec.uda.ema_alpha))?;
            }
        }

        let Self { student, teacher, objective, hooks, rng, spec, .. } = self;
        let student: &dyn SegModel = student.as_ref();
        let teacher_model: Option<&dyn SegModel> = teacher.as_ref().map(|(m, _)| m.as_ref());
        let objective: &dyn SegObjective = objective.as_ref();
        let num_classes = spec.model.num_classes;

        // (1) Source, supervised.
        let (src_loss, src_features) = {
            let mut ctx = ForwardCtx::train(rng);
            objective.loss(student, &batch.source_image, &batch.source_label, None, &mut ctx)?
        };
        let mut terms: Vec<(String, Tensor)> = vec![("loss_src".into(), src_loss)];

        let mut pseudo: Option<PseudoLabels> = None;
        let mut mixed: Option<MixedBatch> = None;
        if let Some(teacher_model) = teacher_model {
            // (2) Pseudo-labels from the teacher: no graph kept.
            let teacher_logits = {
                let mut ctx = ForwardCtx::teacher(rng);
                objective.logits(teacher_model, &batch.target_image, &mut ctx)?.detach()
            };
            let mut pl = pseudo_label_and_weight(&teacher_logits, spec.uda.pseudo_threshold)?;
            log.metrics.push(("pseudo_confident_share".into(), mean_scalar(&pl.weight)?));
            if let Some([top, bottom]) = spec.uda.pseudo_label_crop {
                pl.weight = zero_rows(&pl.weight, top, bottom)?;
            }
            {
                let view = view(t, batch, student, Some(teacher_model), objective, &src_features, None, None, num_classes);
                for h in hooks.iter_mut() {
                    h.on_pseudo_labels(&mut pl, &view, rng)?;
                }
            }

            // (3) ClassMix + strong augmentation, mixed loss.
            let mut masks = class_masks(&batch.source_label, rng, spec.uda.per_image_classes)?;
            {
                let view = view(t, batch, student, Some(teacher_model), objective, &src_features, Some(&pl), None, num_classes);
                for h in hooks.iter_mut() {
                    h.on_mix_masks(&mut masks, &view, rng)?;
                }
            }
            let mut mb = class_mix(
                &batch.source_image,
                &batch.source_label,
                &batch.target_image,
                &pl.label,
                &pl.weight,
                &masks,
            )?;
            let aug = spec.uda.strong_aug.sample(rng, mb.image.dim(0)?);
            mb.image = strong_augment(&mb.image, &aug)?;
            let (mix_loss, _) = {
                let mut ctx = ForwardCtx::train(rng);
                objective.loss(student, &mb.image, &mb.label, Some(&mb.weight), &mut ctx)?
            };
            terms.push(("loss_mix".into(), (mix_loss * spec.uda.mix_loss_weight)?));
            pseudo = Some(pl);
            mixed = Some(mb);
        }

        // (4) Extra losses from hooks.
        {
            let view = view(t, batch, student, teacher_model, objective, &src_features, pseudo.as_ref(), mixed.as_ref(), num_classes);
            for h in hooks.iter_mut() {
                for l in h.extra_losses(&view, rng)? {
                    terms.push((format!("{}.{}", h.name(), l.name), l.value));
                }
            }
        }

        // Backward of the sum, one optimizer step.
        let mut total: Option<Tensor> = None;
        for (name, value) in &terms {
            let v = value.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !v.is_finite() {
                return Err(Error::msg(format!("iteration {t}: loss `{name}` is {v}")));
            }
            log.losses.push((name.clone(), v));
            total = Some(match total {
                None => value.clone(),
                Some(s) => (s + value)?,
            });
        }
        let total = total.ok_or_else(|| Error::msg("no loss term"))?;
        let grads = total.backward()?;
        self.optimizer.step(&grads, lr)?;

        {
            let Self { student, teacher, objective, hooks, spec, .. } = &mut *self;
            let teacher_model: Option<&dyn SegModel> = teacher.as_ref().map(|(m, _)| m.as_ref());
            let view = view(
                t,
                batch,
                student.as_ref(),
                teacher_model,
                objective.as_ref(),
                &[],
                pseudo.as_ref(),
                mixed.as_ref(),
                spec.model.num_classes,
            );
            for h in hooks.iter_mut() {
                h.after_step(&view)?;
                for (k, v) in h.metrics() {
                    log.metrics.push((format!("{}.{}", h.name(), k), v));
                }
            }
        }
        self.iter += 1;
        Ok(log)
    }

    /// Logits at the input size with the student in evaluation mode.
    pub fn predict(&self, images: &Tensor) -> Result<Tensor> {
        // Evaluation is deterministic: this generator is never drawn from.
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut ctx = ForwardCtx::eval(&mut rng);
        Ok(self.objective.logits(self.student.as_ref(), images, &mut ctx)?)
    }

    pub fn iteration(&self) -> usize {
        self.iter
    }

    /// Student, teacher, optimizer moments, hook state, iteration and RNG.
    /// Written whole or not at all: into a temporary folder renamed over `dir`.
    pub fn save_state(&self, dir: &Path) -> Result<()> {
        crate::io::replace_dir_atomic(dir, |tmp| self.write_state(tmp))
    }

    fn write_state(&self, dir: &Path) -> Result<()> {
        save_varmap(&self.student_vars, &dir.join("student.safetensors"))?;
        if let Some((_, vars)) = &self.teacher {
            save_varmap(vars, &dir.join("teacher.safetensors"))?;
        }
        self.optimizer.save(&dir.join("optimizer.safetensors"))?;
        for h in &self.hooks {
            let state = h.state()?;
            if !state.is_empty() {
                let path = dir.join(format!("hook_{}.safetensors", h.name()));
                candle_core::safetensors::save(&state, &path).map_err(|e| Error::file(&path, e.to_string()))?;
            }
        }
        let state = StepState {
            method: self.spec.name.clone(),
            iter: self.iter,
            optimizer_steps: self.optimizer.steps(),
            rng: RngState::capture(&self.rng),
        };
        let path = dir.join("state.json");
        let json = serde_json::to_string_pretty(&state).map_err(|e| Error::file(&path, e.to_string()))?;
        std::fs::write(&path, json).map_err(|e| Error::io(&path, e))?;
        Ok(())
    }

    pub fn load_state(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join("state.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let state: StepState = serde_json::from_str(&text).map_err(|e| Error::file(&path, e.to_string()))?;
        load_varmap(&self.student_vars, &dir.join("student.safetensors"))?;
        if let Some((_, vars)) = &self.teacher {
            load_varmap(vars, &dir.join("teacher.safetensors"))?;
        }
        self.optimizer.load(&dir.join("optimizer.safetensors"), state.optimizer_steps)?;
        for h in self.hooks.iter_mut() {
            let path = dir.join(format!("hook_{}.safetensors", h.name()));
            if path.exists() {
                let map = candle_core::safetensors::load(&path, &self.device).map_err(|e| Error::file(&path, e.to_string()))?;
                h.load_state(&map)?;
            }
        }
        self.iter = state.iter;
        self.rng = state.rng.restore()?;
        Ok(())
    }
}

impl UdaMethod for SelfTraining {
    fn name(&self) -> String {
        self.spec.name.clone()
    }
    fn train_step(&mut self, batch: &UdaBatch) -> Result<StepLog> {
        self.step(batch)
    }
    fn predict(&self, images: &Tensor) -> Result<Tensor> {
        SelfTraining::predict(self, images)
    }
    fn iteration(&self) -> usize {
        self.iter
    }
    fn save_state(&self, dir: &Path) -> Result<()> {
        SelfTraining::save_state(self, dir)
    }
    fn load_state(&mut self, dir: &Path) -> Result<()> {
        SelfTraining::load_state(self, dir)
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepState {
    method: String,
    iter: usize,
    optimizer_steps: usize,
    rng: RngState,
}

#[allow(clippy::too_many_arguments)]
fn view<'a>(
    iter: usize,
    batch: &'a UdaBatch,
    student: &'a dyn SegModel,
    teacher: Option<&'a dyn SegModel>,
    objective: &'a dyn SegObjective,
    source_features: &'a [Tensor],
    pseudo: Option<&'a PseudoLabels>,
    mixed: Option<&'a MixedBatch>,
    num_classes: usize,
) -> StepView<'a> {
    StepView {
        iter,
        batch,
        student,
        teacher,
        objective,
        source_features: (!source_features.is_empty()).then_some(source_features),
        pseudo,
        mixed,
        num_classes,
    }
}

fn mean_scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.mean_all()?.to_scalar::<f64>()?)
}

/// Save every variable of `vars` (parameters and buffers) as safetensors.
pub fn save_varmap(vars: &VarMap, path: &Path) -> Result<()> {
    vars.save(path).map_err(|e| Error::file(path, e.to_string()))
}

/// Load every variable of `vars` from `path`; a missing or mis-shaped tensor is an error naming it.
pub fn load_varmap(vars: &VarMap, path: &Path) -> Result<()> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| Error::file(path, e.to_string()))?;
    let data = vars.data().lock().map_err(|_| Error::msg("VarMap lock poisoned"))?;
    for (name, var) in data.iter() {
        let t = tensors
            .get(name)
            .ok_or_else(|| Error::file(path, format!("no tensor `{name}` (expected shape {:?})", var.shape())))?;
        if t.shape() != var.shape() {
            return Err(Error::file(path, format!("tensor `{name}` has shape {:?}, expected {:?}", t.shape(), var.shape())));
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok(())
}
