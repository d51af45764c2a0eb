//! The shared self-training step (`lhoyer/MIC
//! seg/mmseg/models/uda/dacs.py::DACS.forward_train`), written once.
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

use crate::data::batch::UdaBatch;
use crate::nn::autocast::AutocastModel;
use crate::nn::weights::build_initial;
use crate::nn::{ForwardCtx, SegModel};
use crate::ops::augment::strong_augment;
use crate::ops::mix::{class_masks, class_mix, MixedBatch};
use crate::ops::pseudo::{pseudo_label_and_weight, PseudoLabels};
use crate::train::ema::{copy_parameters, ema_alpha, ema_update};
use crate::train::hooks::{StepHook, StepView, TargetAveraging};
use crate::train::method::{StepDebug, StepLog, UdaMethod};
use crate::train::objective::{SegObjective, WholeImage};
use crate::train::optimizer::AdamW;
use crate::{Error, Result};

mod debug;
mod nonfinite;
mod state;

pub use crate::train::spec::{SelfTrainingSpec, UdaConfig};
use nonfinite::first_nonfinite_grad;

/// The shared self-training step and the state it trains.
pub struct SelfTraining {
    spec: SelfTrainingSpec,
    student: Box<dyn SegModel>,
    student_vars: VarMap,
    /// The student as its training forwards see it under `model.autocast`
    /// (bf16/f16 compute on the f32 masters); `None` without autocast.
    train_student: Option<Box<dyn SegModel>>,
    teacher: Option<(Box<dyn SegModel>, VarMap)>,
    objective: Box<dyn SegObjective>,
    optimizer: AdamW,
    hooks: Vec<Box<dyn StepHook>>,
    /// (replaced hook, replacing hook) for every hook dropped by [`StepHook::replaces`].
    replaced_hooks: Vec<(String, String)>,
    /// Every random draw of the step (dropout, masks, augmentation).
    rng: ChaCha8Rng,
    iter: usize,
    device: Device,
    /// Skip (instead of failing) a step whose loss or gradient is not finite.
    skip_nonfinite: bool,
    /// Steps skipped for a non-finite loss or gradient so far.
    skipped_steps: usize,
    /// Keep the step's intermediate tensors for debug images.
    debug_on: bool,
    debug: Option<StepDebug>,
    /// The student on detached weights, for [`SelfTraining::predict`]
    /// (evaluation records no graph), with the iteration it was built at.
    eval_student: std::sync::Mutex<Option<(usize, std::sync::Arc<dyn SegModel>)>>,
}

impl SelfTraining {
    pub fn new(spec: SelfTrainingSpec, device: &Device) -> Result<Self> {
        // Pretrained weights (`model.weights`), strict unless `model.strict = false`.
        let (student, student_vars, report) = build_initial(&spec.model, spec.seed, device)?;
        if let Some(report) = report {
            if !crate::io::quiet() {
                eprintln!("{}: {}", spec.name, report.summary());
            }
        }
        let teacher = if spec.uda.self_training {
            let (model, vars, _) = build_initial(&spec.model, spec.seed, device)?;
            drop(model);
            // The teacher never backpropagates: its network runs on detached
            // views of its weights (which the EMA updates in place), so its
            // forward records no graph and frees intermediates as it goes.
            let model = crate::nn::detached::detached_model(&spec.model, &vars, device)?;
            Some((model, vars))
        } else {
            None
        };
        let train_student: Option<Box<dyn SegModel>> = match spec.model.autocast.dtype() {
            Some(_) => Some(Box::new(AutocastModel::new(
                &spec.model,
                &student_vars,
                spec.model.autocast,
                device,
            )?)),
            None => None,
        };
        let optimizer = AdamW::new(&student_vars, spec.optimizer.clone())?;
        // The step's generator is independent of the initialisation and the data order.
        let rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0x5354_4550_5f52_4e47);
        Ok(Self {
            spec,
            student,
            student_vars,
            train_student,
            teacher,
            objective: Box::new(WholeImage::default()),
            optimizer,
            hooks: Vec::new(),
            replaced_hooks: Vec::new(),
            rng,
            iter: 0,
            device: device.clone(),
            skip_nonfinite: false,
            skipped_steps: 0,
            debug_on: false,
            debug: None,
            eval_student: std::sync::Mutex::new(None),
        })
    }

    /// The same method with `hook` attached (builder form of [`Self::add_hook`]).
    pub fn with(mut self, hook: impl StepHook + 'static) -> Self {
        self.add_hook(Box::new(hook));
        self
    }

    /// Attach a hook; hooks run in the order attached. Attached hooks named in
    /// `hook.replaces()` are removed; `hook` is not added if an attached hook
    /// replaces its name. Both are recorded in [`Self::replaced_hooks`].
    pub fn add_hook(&mut self, hook: Box<dyn StepHook>) {
        if let Some(by) = self
            .hooks
            .iter()
            .find(|h| h.replaces().iter().any(|r| r == hook.name()))
        {
            self.replaced_hooks
                .push((hook.name().to_string(), by.name().to_string()));
            return;
        }
        let replaces = hook.replaces();
        let new_name = hook.name().to_string();
        let replaced = &mut self.replaced_hooks;
        self.hooks.retain(|h| {
            let drop = replaces.iter().any(|r| r == h.name());
            if drop {
                replaced.push((h.name().to_string(), new_name.clone()));
            }
            !drop
        });
        self.hooks.push(hook);
    }

    /// Names of the attached hooks, in the order they run.
    pub fn hook_names(&self) -> Vec<String> {
        self.hooks.iter().map(|h| h.name().to_string()).collect()
    }

    /// (replaced, replacing) hook names, for every hook left out because
    /// another one replaces it.
    pub fn replaced_hooks(&self) -> &[(String, String)] {
        &self.replaced_hooks
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

    /// What a non-finite loss term or gradient does: `false` (the default)
    /// makes the step an error naming the term or parameter and the
    /// iteration; `true` skips the parameter update, counts the step in
    /// [`Self::skipped_steps`] and logs it as the metric `nonfinite_skipped`.
    pub fn set_skip_nonfinite(&mut self, skip: bool) {
        self.skip_nonfinite = skip;
    }

    /// Steps whose update was skipped for a non-finite loss or gradient.
    pub fn skipped_steps(&self) -> usize {
        self.skipped_steps
    }

    /// One iteration of the shared step.
    pub fn step(&mut self, batch: &UdaBatch) -> Result<StepLog> {
        let t = self.iter;
        let lr = self.spec.schedule.lr(t);
        let mut log = StepLog {
            iter: t,
            lr,
            ..StepLog::default()
        };

        if let Some((_, teacher_vars)) = &self.teacher {
            if t == 0 {
                copy_parameters(teacher_vars, &self.student_vars)?;
            } else {
                ema_update(
                    teacher_vars,
                    &self.student_vars,
                    ema_alpha(t, self.spec.uda.ema_alpha),
                )?;
            }
        }

        let Self {
            student,
            train_student,
            teacher,
            objective,
            hooks,
            rng,
            spec,
            ..
        } = self;
        // Every training forward of the student (host losses and hook losses)
        // goes through autocast when it is on.
        let student: &dyn SegModel = match train_student.as_deref() {
            Some(cast) => cast,
            None => student.as_ref(),
        };
        let teacher_model: Option<&dyn SegModel> = teacher.as_ref().map(|(m, _)| m.as_ref());
        let objective: &dyn SegObjective = objective.as_ref();
        let num_classes = spec.model.num_classes;
        let spec: &SelfTrainingSpec = spec;
        let averaging = hooks
            .iter()
            .filter_map(|h| h.target_averaging())
            .next_back()
            .unwrap_or_default();

        // (1) Source, supervised.
        let (src_loss, src_features) = {
            let mut ctx = ForwardCtx::train(rng);
            objective.loss(
                student,
                &batch.source_image,
                &batch.source_label,
                None,
                &mut ctx,
            )?
        };
        let mut terms: Vec<(String, Tensor)> = vec![("loss_src".into(), src_loss)];

        let mut pseudo: Option<PseudoLabels> = None;
        let mut mixed: Option<MixedBatch> = None;
        if let Some(teacher_model) = teacher_model {
            // (2) Pseudo-labels from the teacher: no graph kept.
            let teacher_logits = {
                let mut ctx = ForwardCtx::teacher(rng);
                objective
                    .logits(teacher_model, &batch.target_image, &mut ctx)?
                    .detach()
            };
            let mut pl = pseudo_label_and_weight(&teacher_logits, spec.uda.pseudo_threshold)?;
            log.metrics
                .push(("pseudo_confident_share".into(), mean_scalar(&pl.weight)?));
            // `DACS.filter_valid_pseudo_region`, after `q` was taken over all pixels.
            pl.weight = spec.uda.crop_pseudo_weight(&pl.weight)?;
            if spec.uda.pseudo_margins.is_some() {
                let valid = batch.target_valid.as_ref().ok_or_else(|| {
                    Error::msg("uda.pseudo_margins is set but the batch has no target valid mask (UdaBatch::target_valid)")
                })?;
                if valid.dims() != pl.weight.dims() {
                    return Err(Error::msg(format!(
                        "UdaBatch::target_valid has shape {:?}, expected the target batch's {:?}",
                        valid.dims(),
                        pl.weight.dims()
                    )));
                }
                pl.weight = (&pl.weight * valid.to_dtype(pl.weight.dtype())?)?;
            }
            {
                let view = view(
                    t,
                    batch,
                    student,
                    Some(teacher_model),
                    objective,
                    &src_features,
                    None,
                    None,
                    spec,
                    averaging,
                );
                for h in hooks.iter_mut() {
                    h.on_pseudo_labels(&mut pl, &view, rng)?;
                }
            }

            // (3) ClassMix + strong augmentation, mixed loss.
            let mut masks = class_masks(&batch.source_label, rng, spec.uda.per_image_classes)?;
            {
                let view = view(
                    t,
                    batch,
                    student,
                    Some(teacher_model),
                    objective,
                    &src_features,
                    Some(&pl),
                    None,
                    spec,
                    averaging,
                );
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
            // The target part's averaging (class-balanced when a hook asks for it).
            let mix_weight = match averaging {
                TargetAveraging::PerPixel => mb.weight.clone(),
                other => {
                    let pasted = Tensor::stack(&mb.masks, 0)?.to_dtype(DType::F32)?;
                    other.weights(
                        &mb.label,
                        &pasted.affine(-1.0, 1.0)?,
                        &mb.weight,
                        num_classes,
                    )?
                }
            };
            let (mix_loss, _) = {
                let mut ctx = ForwardCtx::train(rng);
                objective.loss(student, &mb.image, &mb.label, Some(&mix_weight), &mut ctx)?
            };
            terms.push(("loss_mix".into(), (mix_loss * spec.uda.mix_loss_weight)?));
            pseudo = Some(pl);
            mixed = Some(mb);
        }

        // (4) Extra losses from hooks.
        {
            let view = view(
                t,
                batch,
                student,
                teacher_model,
                objective,
                &src_features,
                pseudo.as_ref(),
                mixed.as_ref(),
                spec,
                averaging,
            );
            for h in hooks.iter_mut() {
                for l in h.extra_losses(&view, rng)? {
                    terms.push((format!("{}.{}", h.name(), l.name), l.value));
                }
            }
        }

        // Backward of the sum, one optimizer step.
        let mut total: Option<Tensor> = None;
        let mut nonfinite: Option<String> = None;
        for (name, value) in &terms {
            let v = value.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !v.is_finite() && nonfinite.is_none() {
                nonfinite = Some(format!("iteration {t}: loss `{name}` is {v}"));
            }
            log.losses.push((name.clone(), v));
            total = Some(match total {
                None => value.clone(),
                Some(s) => (s + value)?,
            });
        }
        let total = total.ok_or_else(|| Error::msg("no loss term"))?;
        if nonfinite.is_none() {
            let grads = total.backward()?;
            match first_nonfinite_grad(&self.student_vars, &grads)? {
                Some(var) => {
                    nonfinite = Some(format!(
                        "iteration {t}: the gradient of `{var}` is not finite (loss terms: {})",
                        fmt_terms(&log.losses)
                    ))
                }
                None => self.optimizer.step(&grads, lr)?,
            }
        }
        if let Some(message) = nonfinite {
            if !self.skip_nonfinite {
                return Err(Error::NonFinite { iter: t, message });
            }
            self.skipped_steps += 1;
            log.metrics
                .push(("nonfinite_skipped".into(), self.skipped_steps as f64));
            log.skipped = Some(message);
        }

        {
            let Self {
                student,
                teacher,
                objective,
                hooks,
                spec,
                ..
            } = &mut *self;
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
                spec,
                averaging,
            );
            for h in hooks.iter_mut() {
                h.after_step(&view)?;
                for (k, v) in h.metrics() {
                    log.metrics.push((format!("{}.{}", h.name(), k), v));
                }
            }
        }
        if self.debug_on {
            self.debug = Some(self.debug_tiles(batch, pseudo.as_ref(), mixed.as_ref())?);
        }
        self.iter += 1;
        Ok(log)
    }

    /// Logits at the input size with the student in evaluation mode, on
    /// detached weights: the forward records no graph, so its intermediates
    /// are freed as it goes ([`crate::nn::detached`]).
    pub fn predict(&self, images: &Tensor) -> Result<Tensor> {
        // Evaluation is deterministic: this generator is never drawn from.
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut ctx = ForwardCtx::eval(&mut rng);
        let student = self.eval_student()?;
        Ok(self.objective.logits(student.as_ref(), images, &mut ctx)?)
    }

    /// The graph-free student of the current iteration (built once per iteration).
    fn eval_student(&self) -> Result<std::sync::Arc<dyn SegModel>> {
        let mut cached = self
            .eval_student
            .lock()
            .map_err(|_| Error::msg("evaluation student lock poisoned"))?;
        if let Some((iter, model)) = cached.as_ref() {
            if *iter == self.iter {
                return Ok(model.clone());
            }
        }
        let model: std::sync::Arc<dyn SegModel> =
            std::sync::Arc::from(crate::nn::detached::detached_model(
                &self.spec.model,
                &self.student_vars,
                &self.device,
            )?);
        *cached = Some((self.iter, model.clone()));
        Ok(model)
    }

    pub fn iteration(&self) -> usize {
        self.iter
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
    fn capture_debug(&mut self, on: bool) {
        self.debug_on = on;
    }
    fn take_debug(&mut self) -> Option<StepDebug> {
        self.debug.take()
    }
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
    spec: &'a SelfTrainingSpec,
    target_averaging: TargetAveraging,
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
        num_classes: spec.model.num_classes,
        spec,
        target_averaging,
    }
}

fn fmt_terms(losses: &[(String, f64)]) -> String {
    losses
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn mean_scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.mean_all()?.to_scalar::<f64>()?)
}
