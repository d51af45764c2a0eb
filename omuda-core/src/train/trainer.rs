//! The training loop, separate from the model and the method: it pulls
//! batches, calls `train_step`, times both, evaluates at intervals and reports
//! to an observer (progress bar, log lines, files).

use std::time::Instant;

use crate::eval::miou::MiouReport;
use crate::train::batch::UdaBatch;
use crate::train::method::{StepLog, UdaMethod};
use crate::Result;

/// Where training batches come from.
pub trait BatchSource {
    fn next_batch(&mut self) -> Result<UdaBatch>;
}

impl BatchSource for crate::data::loader::SynthPairLoader {
    fn next_batch(&mut self) -> Result<UdaBatch> {
        crate::data::loader::SynthPairLoader::next_batch(self)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct LoopConfig {
    /// Train until the method has done this many iterations.
    pub iters: usize,
    /// Evaluate every this many iterations (0: never during training).
    pub eval_interval: usize,
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
    fn on_eval(&mut self, _iter: usize, _report: &MiouReport) -> Result<()> {
        Ok(())
    }
}

/// Train `method` up to `cfg.iters` iterations (continuing from where it is).
/// `evaluate` is called every `eval_interval` iterations.
pub fn fit(
    method: &mut dyn UdaMethod,
    data: &mut dyn BatchSource,
    cfg: LoopConfig,
    evaluate: &mut dyn FnMut(&dyn UdaMethod) -> Result<MiouReport>,
    observer: &mut dyn TrainObserver,
) -> Result<()> {
    while method.iteration() < cfg.iters {
        let t0 = Instant::now();
        let batch = data.next_batch()?;
        let t1 = Instant::now();
        let log = method.train_step(&batch)?;
        let timing = StepTiming { data: (t1 - t0).as_secs_f64(), step: t1.elapsed().as_secs_f64() };
        observer.on_step(&log, timing)?;
        let done = method.iteration();
        if cfg.eval_interval > 0 && done.is_multiple_of(cfg.eval_interval) && done < cfg.iters {
            let report = evaluate(&*method)?;
            observer.on_eval(done, &report)?;
        }
    }
    Ok(())
}
