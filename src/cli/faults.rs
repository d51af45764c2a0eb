//! Fault injection for the test suite's kill-and-resume and non-finite
//! checks, compiled only with the `test-faults` feature (the test command
//! enables it; a release build of the tool has none of it). Environment
//! variables, read per run:
//! - `OMUDA_TEST_PAUSE_AT_ITER=k`: after iteration k, print
//!   `test hook: paused after iteration k` and wait to be killed;
//! - `OMUDA_TEST_STOP_MID_CHECKPOINT=k`: while writing the checkpoint of
//!   iteration k, after the model files and before the sidecar, print
//!   `test hook: stopped mid-checkpoint at iteration k` and wait to be killed;
//! - `OMUDA_TEST_FORCE_NAN_AT=k` / `OMUDA_TEST_FORCE_NAN_GRAD_AT=k`: at the
//!   step with 0-based index k, add a loss term `test_nan.loss` whose value
//!   (resp. gradient) is NaN;
//! - `OMUDA_TEST_CANDLE_ERROR_AT=k`: at the step with 0-based index k, fail
//!   with the error of a genuine Candle op (a matmul of mismatched shapes);
//! - `OMUDA_TEST_BALLOON=SEED:MIB`: at the first step of the run with seed
//!   SEED, touch and free MIB MiB, so that run's peak memory stands out.

use std::io::Write;
use std::path::Path;

use omuda::core::train::observers::Interruption;
use omuda::core::train::{ChaCha8Rng, NamedLoss, StepHook, StepView};
use omuda::{Error, Result, SelfTraining};

fn env_usize(name: &str) -> Result<Option<usize>> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| Error::msg(format!("{name}={v:?}: expected an iteration number"))),
        Err(_) => Ok(None),
    }
}

/// Block until killed; give up after ten minutes.
fn wait_to_be_killed(what: &str) -> ! {
    eprintln!("test hook: {what}");
    let _ = std::io::stderr().flush();
    std::thread::sleep(std::time::Duration::from_secs(600));
    eprintln!("test hook: not killed within 600 s, exiting");
    std::process::exit(3)
}

/// The pause and mid-checkpoint stop of the environment.
struct EnvInterruption {
    pause_at: Option<usize>,
    stop_mid_checkpoint: Option<usize>,
}

impl Interruption for EnvInterruption {
    fn after_iteration(&self, done: usize) {
        if self.pause_at == Some(done) {
            wait_to_be_killed(&format!("paused after iteration {done}"));
        }
    }

    fn during_checkpoint(&self, iter: usize, _dir: &Path) {
        if self.stop_mid_checkpoint == Some(iter) {
            wait_to_be_killed(&format!("stopped mid-checkpoint at iteration {iter}"));
        }
    }
}

pub fn interruption() -> Result<Box<dyn Interruption>> {
    Ok(Box::new(EnvInterruption {
        pause_at: env_usize("OMUDA_TEST_PAUSE_AT_ITER")?,
        stop_mid_checkpoint: env_usize("OMUDA_TEST_STOP_MID_CHECKPOINT")?,
    }))
}

/// A loss term that is NaN in value or in gradient at one iteration.
struct ForceNan {
    at: usize,
    grad_only: bool,
}

impl StepHook for ForceNan {
    fn name(&self) -> &str {
        "test_nan"
    }
    fn extra_losses(&mut self, view: &StepView, _rng: &mut ChaCha8Rng) -> Result<Vec<NamedLoss>> {
        if view.iter != self.at {
            return Ok(Vec::new());
        }
        let f = view
            .source_features
            .and_then(|f| f.first())
            .ok_or_else(|| {
                Error::msg("test hook: no source features to build the NaN loss from")
            })?;
        let value = if self.grad_only {
            // sqrt(x - x) is 0, its gradient 1 / (2 sqrt(0)) is infinite.
            (f - f.detach())?.sqrt()?.sum_all()?
        } else {
            (f.sum_all()? * f64::NAN)?
        };
        Ok(vec![NamedLoss {
            name: "loss".into(),
            value,
        }])
    }
}

/// A Candle op that fails at one iteration.
struct CandleError {
    at: usize,
}

impl StepHook for CandleError {
    fn name(&self) -> &str {
        "test_candle_error"
    }
    fn extra_losses(&mut self, view: &StepView, _rng: &mut ChaCha8Rng) -> Result<Vec<NamedLoss>> {
        if view.iter == self.at {
            let a = view.batch.source_image.flatten_from(1)?;
            a.matmul(&a)?;
        }
        Ok(Vec::new())
    }
}

/// A large allocation, touched page by page and freed, at the first step.
struct Balloon {
    mib: usize,
}

impl StepHook for Balloon {
    fn name(&self) -> &str {
        "test_balloon"
    }
    fn extra_losses(&mut self, _view: &StepView, _rng: &mut ChaCha8Rng) -> Result<Vec<NamedLoss>> {
        if self.mib > 0 {
            let mut buf = vec![0u8; self.mib << 20];
            for page in buf.chunks_mut(4096) {
                page[0] = 1;
            }
            std::hint::black_box(&buf);
            self.mib = 0;
        }
        Ok(Vec::new())
    }
}

fn balloon_for(seed: u64) -> Result<Option<usize>> {
    let Ok(v) = std::env::var("OMUDA_TEST_BALLOON") else {
        return Ok(None);
    };
    let bad = || Error::msg(format!("OMUDA_TEST_BALLOON={v:?}: expected SEED:MIB"));
    let (s, mib) = v.split_once(':').ok_or_else(bad)?;
    let (s, mib): (u64, usize) = (
        s.trim().parse().map_err(|_| bad())?,
        mib.trim().parse().map_err(|_| bad())?,
    );
    Ok((s == seed).then_some(mib))
}

/// The step hooks of the environment, for the run with `seed`.
pub fn attach_step_faults(method: &mut SelfTraining, seed: u64) -> Result<()> {
    if let Some(at) = env_usize("OMUDA_TEST_CANDLE_ERROR_AT")? {
        method.add_hook(Box::new(CandleError { at }));
    }
    if let Some(mib) = balloon_for(seed)? {
        method.add_hook(Box::new(Balloon { mib }));
    }
    attach_nan_hooks(method)
}

fn attach_nan_hooks(method: &mut SelfTraining) -> Result<()> {
    if let Some(at) = env_usize("OMUDA_TEST_FORCE_NAN_AT")? {
        method.add_hook(Box::new(ForceNan {
            at,
            grad_only: false,
        }));
    }
    if let Some(at) = env_usize("OMUDA_TEST_FORCE_NAN_GRAD_AT")? {
        method.add_hook(Box::new(ForceNan {
            at,
            grad_only: true,
        }));
    }
    Ok(())
}
