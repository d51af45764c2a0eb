//! The training loop, separate from the model and the method: it pulls
//! batches, calls `train_step`, times both, evaluates, checkpoints and
//! captures debug tensors at intervals, and reports to an observer (progress
//! bar, log lines, files).

use std::time::Instant;

use crate::data::batch::BatchSource;
use crate::eval::miou::MiouReport;
use crate::train::method::{StepDebug, StepLog, UdaMethod};
use crate::Result;

/// What a run does on a non-finite loss or gradient (`train.nonfinite`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonFinite {
    /// Stop the run with an error naming the iteration and the loss.
    Stop,
    /// Skip the parameter update (counted and logged).
    Skip,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub iters: usize,
    pub batch_size: usize,
    /// Print a log line every this many iterations.
    pub log_interval: usize,
    /// Evaluate on target-val every this many iterations (0: only at the end).
    pub eval_interval: usize,
    /// Write a resumable checkpoint every this many iterations (0: only at the end).
    pub checkpoint_interval: usize,
    /// Periodic checkpoints kept (the newest ones); the best-by-mIoU copy is kept apart.
    pub keep_last: usize,
    /// A non-finite loss or gradient: `"stop"` the run with an error, or
    /// `"skip"` the parameter update (counted and logged).
    pub nonfinite: NonFinite,
    /// Write a debug image grid every this many iterations (0: never).
    pub debug_interval: usize,
    /// Write TensorBoard event files (scalars) beside `log.jsonl`.
    pub tensorboard: bool,
}

impl Default for TrainConfig {
    /// The reference's 40k iterations, batch 2, evaluation and checkpoint every 4000.
    fn default() -> Self {
        Self {
            iters: 40_000,
            batch_size: 2,
            log_interval: 50,
            eval_interval: 4000,
            checkpoint_interval: 4000,
            keep_last: 2,
            nonfinite: NonFinite::Stop,
            debug_interval: 4000,
            tensorboard: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct LoopConfig {
    /// Train until the method has done this many iterations.
    pub iters: usize,
    /// Evaluate every this many iterations (0: never during training).
    pub eval_interval: usize,
    /// Call [`TrainObserver::on_checkpoint`] every this many iterations (0: never).
    pub checkpoint_interval: usize,
    /// Capture the step's intermediate tensors every this many iterations and
    /// pass them to [`TrainObserver::on_debug`] (0: never).
    pub debug_interval: usize,
}

/// Timing of one iteration, seconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StepTiming {
    pub data: f64,
    pub step: f64,
}

/// Receives what the loop produces.
pub trait TrainObserver {
    fn on_step(&mut self, _log: &StepLog, _timing: StepTiming) -> Result<()> {
        Ok(())
    }
    /// After each evaluation, with the method and data source as evaluated
    /// (e.g. to keep the best checkpoint).
    fn on_eval(
        &mut self,
        _iter: usize,
        _report: &MiouReport,
        _method: &dyn UdaMethod,
        _data: &dyn BatchSource,
    ) -> Result<()> {
        Ok(())
    }
    /// Every `checkpoint_interval` iterations (after the evaluation of the same
    /// iteration, if any), with everything a checkpoint needs.
    fn on_checkpoint(
        &mut self,
        _iter: usize,
        _method: &dyn UdaMethod,
        _data: &dyn BatchSource,
    ) -> Result<()> {
        Ok(())
    }
    /// The intermediate tensors of the step that just finished (0-based `iter`).
    fn on_debug(&mut self, _iter: usize, _debug: &StepDebug) -> Result<()> {
        Ok(())
    }
}

fn due(interval: usize, done: usize) -> bool {
    interval > 0 && done.is_multiple_of(interval)
}

/// Train `method` up to `cfg.iters` iterations (continuing from where it is).
/// `evaluate` is called every `eval_interval` iterations before the last.
pub fn fit(
    method: &mut dyn UdaMethod,
    data: &mut dyn BatchSource,
    cfg: LoopConfig,
    evaluate: &mut dyn FnMut(&dyn UdaMethod) -> Result<MiouReport>,
    observer: &mut dyn TrainObserver,
) -> Result<()> {
    while method.iteration() < cfg.iters {
        let t = method.iteration();
        let capture = due(cfg.debug_interval, t + 1);
        method.capture_debug(capture);
        let t0 = Instant::now();
        let batch = data.next_batch()?;
        let t1 = Instant::now();
        let log = method.train_step(&batch)?;
        let timing = StepTiming {
            data: (t1 - t0).as_secs_f64(),
            step: t1.elapsed().as_secs_f64(),
        };
        observer.on_step(&log, timing)?;
        if capture {
            method.capture_debug(false);
            if let Some(debug) = method.take_debug() {
                observer.on_debug(t, &debug)?;
            }
        }
        let done = method.iteration();
        if due(cfg.eval_interval, done) && done < cfg.iters {
            let report = evaluate(&*method)?;
            observer.on_eval(done, &report, &*method, &*data)?;
        }
        if due(cfg.checkpoint_interval, done) && done < cfg.iters {
            observer.on_checkpoint(done, &*method, &*data)?;
        }
    }
    Ok(())
}
