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
//!   (resp. gradient) is NaN.

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

pub fn attach_nan_hooks(method: &mut SelfTraining) -> Result<()> {
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
