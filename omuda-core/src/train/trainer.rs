//! The training loop, separate from the model and the method: it pulls
//! batches, calls `train_step`, times both, evaluates, checkpoints and
//! captures debug tensors at intervals, and reports to an observer (progress
//! bar, log lines, files).

use std::time::Instant;

use crate::eval::miou::MiouReport;
use crate::train::batch::UdaBatch;
use crate::train::method::{StepDebug, StepLog, UdaMethod};
use crate::{Error, Result};

/// Where training batches come from.
pub trait BatchSource {
    fn next_batch(&mut self) -> Result<UdaBatch>;

    /// The data-order state (which batches come next) as JSON, saved in
    /// checkpoints so a resumed run draws the same batches. The default is an
    /// error: a source that cannot say where it is cannot be resumed exactly.
    fn order_state(&self) -> Result<serde_json::Value> {
        Err(Error::msg(
            "this batch source does not record its data order; it cannot be checkpointed",
        ))
    }

    /// Continue from a state written by [`BatchSource::order_state`].
    fn restore_order_state(&mut self, _state: &serde_json::Value) -> Result<()> {
        Err(Error::msg(
            "this batch source does not record its data order; it cannot be resumed",
        ))
    }
}

impl BatchSource for crate::data::loader::SynthPairLoader {
    fn next_batch(&mut self) -> Result<UdaBatch> {
        crate::data::loader::SynthPairLoader::next_batch(self)
    }

    fn order_state(&self) -> Result<serde_json::Value> {
        let state = crate::train::rng_state::RngState::capture(self.rng());
        serde_json::to_value(state)
            .map_err(|e| Error::msg(format!("data-order RNG state to JSON: {e}")))
    }

    fn restore_order_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let s: crate::train::rng_state::RngState =
            serde_json::from_value(state.clone()).map_err(|e| {
                Error::msg(format!(
                    "data-order RNG state: {e} (expected seed, stream, word_pos)"
                ))
            })?;
        self.set_rng(s.restore()?);
        Ok(())
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
