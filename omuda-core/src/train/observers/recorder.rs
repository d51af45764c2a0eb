//! The observer of a training run, shared by `omuda train` and `omuda
//! compare`: progress, `log.jsonl`, TensorBoard, periodic checkpoints with
//! rotation, the best checkpoint by the selection split, and debug images.

use std::cell::Cell;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::tensorboard::EventWriter;
use crate::data::batch::BatchSource;
use crate::data::config::TargetSplit;
use crate::eval::miou::MiouReport;
use crate::io::write_atomic;
use crate::train::checkpoint::{self, Best, RunSidecar, BEST_DIR, FINAL_DIR, SIDECAR_FORMAT};
use crate::train::method::{StepDebug, StepLog, UdaMethod};
use crate::train::schedule::PolySchedule;
use crate::train::trainer::{StepTiming, TrainObserver};
use crate::{Error, Result};

/// A score in percent with two decimals, or `n/a`.
pub fn fmt_pct(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "n/a".into())
}

/// Keep the lines of `log.jsonl` up to iteration `iter` (a resumed run
/// rewrites what came after its checkpoint). A torn last line is dropped.
pub fn truncate_log(path: &Path, iter: usize) -> Result<()> {
    if !path.is_file() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let lines: Vec<&str> = text.lines().collect();
    let mut kept = String::new();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => {
                let at = v["iter"]
                    .as_u64()
                    .ok_or_else(|| Error::file(path, format!("line {}: no `iter`", i + 1)))?;
                if at as usize <= iter {
                    kept.push_str(line);
                    kept.push('\n');
                }
            }
            Err(_) if i + 1 == lines.len() => {}
            Err(e) => return Err(Error::file(path, format!("line {}: {e}", i + 1))),
        }
    }
    write_atomic(path, kept.as_bytes())
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`); `None` where unknown.
pub fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Makes [`peak_memory_mib`] report from now on, so that a run's peak is its
/// own and not an earlier run's of the same process (`--seeds`, `compare`).
/// The heap an earlier run freed is first handed back to the system
/// (`malloc_trim`): the allocator settings of `omuda` keep freed blocks for
/// reuse, which would otherwise count in every later run's resident memory.
/// Linux then resets the peak (VmHWM) on writing 5 to clear_refs. Elsewhere
/// the peak stays per process.
pub fn reset_peak_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: glibc's malloc_trim only releases free heap memory; it is
        // thread-safe and takes no pointers.
        unsafe {
            malloc_trim(0);
        }
    }
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// What a [`RunRecorder`] writes in its run folder.
pub const RECORDER_OUTPUTS: [&str; 6] = [
    "checkpoints",
    BEST_DIR,
    FINAL_DIR,
    "log.jsonl",
    "tb",
    "debug",
];

/// Removes what an earlier run left in `out`: the [`RECORDER_OUTPUTS`] and
/// `extra` names. Returns the names that were there.
pub fn clear_outputs(out: &Path, extra: &[&'static str]) -> Result<Vec<&'static str>> {
    let mut removed = Vec::new();
    for f in RECORDER_OUTPUTS
        .iter()
        .copied()
        .chain(extra.iter().copied())
    {
        let p = out.join(f);
        if p.exists() {
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            r.map_err(|e| Error::io(&p, e))?;
            removed.push(f);
        }
    }
    Ok(removed)
}

/// How progress is shown on the terminal (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// A progress bar on an interactive terminal (not with `TERM=dumb`),
    /// plain lines otherwise.
    #[default]
    Auto,
    /// One text line per log interval.
    Plain,
    /// One JSON object per log interval (the `log.jsonl` record, with
    /// `run`), and the recorder's other lines as `{"type": "message"}`.
    Json,
}

/// What a [`RunRecorder`] needs to know of its run.
#[derive(Clone)]
pub struct RecorderSettings {
    /// The method's name (checkpoint sidecars).
    pub name: String,
    /// How progress lines name the run (the method, or e.g. `dacs [cam] seed 0`).
    pub display: String,
    /// The method's output folder.
    pub out: PathBuf,
    pub iters: usize,
    /// A log line (and `log.jsonl` record) every this many iterations.
    pub log_interval: usize,
    /// Periodic checkpoints kept.
    pub keep_last: usize,
    /// Write TensorBoard event files under `out/tb`.
    pub tensorboard: bool,
    /// The split of the periodic evaluations and the best checkpoint.
    pub selection: TargetSplit,
    /// The schedule, for the learning rate a checkpoint resumes with.
    pub schedule: PolySchedule,
    /// The run's configuration as TOML, saved in every checkpoint.
    pub config_toml: String,
    /// What a user runs to continue from the last good checkpoint.
    pub resume_command: String,
    /// How progress is shown ([`crate::io::quiet`] silences it).
    pub log_format: LogFormat,
}

/// Test-only interruptions of a run, for the suite's kill-and-resume checks.
/// Never set in normal use.
pub trait Interruption {
    /// After iteration `done` was logged.
    fn after_iteration(&self, _done: usize) {}
    /// While the periodic checkpoint of iteration `iter` is written into
    /// `dir`, after the model files and before the sidecar.
    fn during_checkpoint(&self, _iter: usize, _dir: &Path) {}
}

/// Writes the debug image of a step (`out/debug/iter_N.png`).
pub type DebugImageWriter = dyn Fn(&Path, &StepDebug) -> Result<()>;

/// The observer of one method's run: progress (a bar on a terminal, lines
/// otherwise), `log.jsonl`, TensorBoard, periodic checkpoints with rotation,
/// the best checkpoint by the selection split, and debug images.
pub struct RunRecorder {
    bar: Option<ProgressBar>,
    name: String,
    out: PathBuf,
    settings: RecorderSettings,
    iters: usize,
    log_interval: usize,
    start: Instant,
    /// The iteration the run (re)started from.
    pub start_iter: usize,
    /// Training seconds of the run before a resume.
    pub train_seconds_before: f64,
    /// Seconds spent in evaluations, subtracted from the training time.
    pub eval_seconds: Rc<Cell<f64>>,
    /// The selection split's mIoU by iteration.
    pub curve: Vec<(usize, Option<f64>)>,
    pub best: Option<Best>,
    /// The newest checkpoint written (or resumed from).
    pub last_good: Option<(usize, PathBuf)>,
    log: Option<(PathBuf, File)>,
    tb: Option<EventWriter>,
    debug_images: Option<Box<DebugImageWriter>>,
    interruption: Option<Box<dyn Interruption>>,
}

impl RunRecorder {
    pub fn new(settings: RecorderSettings) -> Result<Self> {
        let iters = settings.iters;
        let name = settings.display.as_str();
        let interactive =
            std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb");
        let show_bar = settings.log_format == LogFormat::Auto && interactive && !crate::io::quiet();
        // The bar has a line of its own: iterations, lr, s/it and the ETA
        // measured from where this run (re)started; losses are printed above.
        let bar = show_bar.then(|| {
            let b = ProgressBar::new(iters as u64);
            if let Ok(style) = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
            {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_prefix(name.to_string());
            b
        });
        Ok(Self {
            bar,
            name: name.into(),
            out: settings.out.clone(),
            iters,
            log_interval: settings.log_interval.max(1),
            settings,
            start: Instant::now(),
            start_iter: 0,
            train_seconds_before: 0.0,
            eval_seconds: Rc::new(Cell::new(0.0)),
            curve: Vec::new(),
            best: None,
            last_good: None,
            log: None,
            tb: None,
            debug_images: None,
            interruption: None,
        })
    }

    /// Write debug images with `writer` at the loop's debug interval.
    pub fn with_debug_images(mut self, writer: Box<DebugImageWriter>) -> Self {
        self.debug_images = Some(writer);
        self
    }

    /// Test-only: interrupt the run as `interruption` says.
    pub fn with_interruption(mut self, interruption: Box<dyn Interruption>) -> Self {
        self.interruption = Some(interruption);
        self
    }

    /// Continues the run from checkpoint `dir`, whose `sidecar` was loaded
    /// into the method and data order: drops the lines of `log.jsonl` and the
    /// TensorBoard scalars after its iteration (they are written again) and
    /// takes over its curve, best score, training time and position. Call
    /// before [`Self::open_logs`].
    pub fn resume_from(&mut self, dir: &Path, sidecar: &RunSidecar) -> Result<()> {
        truncate_log(&self.out.join("log.jsonl"), sidecar.iteration)?;
        super::tensorboard::truncate_after(&self.out.join("tb"), sidecar.iteration as i64)?;
        self.curve = sidecar.target_curve.clone();
        self.best = sidecar.best;
        self.train_seconds_before = sidecar.train_seconds;
        self.last_good = Some((sidecar.iteration, dir.to_path_buf()));
        self.start_iter = sidecar.iteration;
        Ok(())
    }

    /// `log.jsonl` (appended to) and TensorBoard files under `out/tb`; the
    /// training clock starts here.
    pub fn open_logs(&mut self) -> Result<()> {
        reset_peak_memory();
        let log_path = self.out.join("log.jsonl");
        let tb_dir = self.out.join("tb");
        let (log_path, tb_dir) = (log_path.as_path(), tb_dir.as_path());
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(|e| Error::io(log_path, e))?;
        self.log = Some((log_path.to_path_buf(), f));
        if self.settings.tensorboard {
            self.tb = Some(EventWriter::create(tb_dir)?);
        }
        self.start = Instant::now();
        Ok(())
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }

    /// Training time so far, evaluations excluded, across resumptions.
    pub fn train_seconds(&self) -> f64 {
        self.train_seconds_before + self.start.elapsed().as_secs_f64() - self.eval_seconds.get()
    }

    fn println(&self, line: String) {
        if crate::io::quiet() {
            return;
        }
        match (&self.bar, self.settings.log_format) {
            (Some(b), _) => b.println(line),
            (None, LogFormat::Json) => {
                eprintln!(
                    "{}",
                    json!({ "type": "message", "run": self.name, "text": line })
                )
            }
            (None, _) => eprintln!("{line}"),
        }
    }

    fn log_json(&mut self, value: serde_json::Value) -> Result<()> {
        if let Some((path, f)) = &mut self.log {
            let mut line = value.to_string();
            line.push('\n');
            f.write_all(line.as_bytes())
                .map_err(|e| Error::io(path.as_path(), e))?;
        }
        Ok(())
    }

    pub fn log_eval(&mut self, iter: usize, report: &MiouReport) -> Result<()> {
        let split = self.selection_name();
        self.log_json(
            json!({ "type": "eval", "iter": iter, "split": split, "target_miou": report.miou }),
        )?;
        if let (Some(tb), Some(m)) = (&mut self.tb, report.miou) {
            tb.scalars(iter as i64, &[(format!("eval/target_{split}_miou"), m)])?;
        }
        Ok(())
    }

    /// The split of the periodic evaluations (`dev`, or `test` for a dataset
    /// on disk without `[data.dev]`).
    fn selection_name(&self) -> &'static str {
        match self.settings.selection {
            TargetSplit::Dev => "dev",
            TargetSplit::Test => "test",
        }
    }

    fn sidecar(&self, method: &dyn UdaMethod, data: &dyn BatchSource) -> Result<RunSidecar> {
        let it = method.iteration();
        Ok(RunSidecar {
            format: SIDECAR_FORMAT,
            code_version: checkpoint::code_version(),
            method: self.settings.name.clone(),
            iteration: it,
            next_lr: self.settings.schedule.lr(it),
            data_order: data.order_state()?,
            target_curve: self.curve.clone(),
            best: self.best,
            train_seconds: self.train_seconds(),
            config: self.settings.config_toml.clone(),
        })
    }

    /// Write a checkpoint of the current state into `dir` (`periodic`: one of
    /// `checkpoints/`, where the mid-checkpoint test hook applies).
    pub fn save(
        &mut self,
        dir: &Path,
        method: &dyn UdaMethod,
        data: &dyn BatchSource,
        periodic: bool,
    ) -> Result<()> {
        // The log holds every line up to this checkpoint before it exists.
        if let Some((path, f)) = &mut self.log {
            f.sync_data().map_err(|e| Error::io(path.as_path(), e))?;
        }
        let sidecar = self.sidecar(method, data)?;
        let interruption = self.interruption.as_deref().filter(|_| periodic);
        let hook = |d: &Path| {
            if let Some(i) = interruption {
                i.during_checkpoint(sidecar.iteration, d)
            }
        };
        let t0 = Instant::now();
        let hook: Option<&dyn Fn(&Path)> = interruption.map(|_| &hook as &dyn Fn(&Path));
        checkpoint::save_checkpoint(dir, method, &sidecar, hook)?;
        if periodic {
            self.println(format!(
                "{}: checkpoint {} ({:.2} s)",
                self.name,
                dir.display(),
                t0.elapsed().as_secs_f64()
            ));
        }
        self.last_good = Some((sidecar.iteration, dir.to_path_buf()));
        Ok(())
    }

    pub fn update_best(
        &mut self,
        iter: usize,
        report: &MiouReport,
        method: &dyn UdaMethod,
        data: &dyn BatchSource,
    ) -> Result<()> {
        let Some(m) = report.miou else { return Ok(()) };
        if self.best.is_some_and(|b| b.miou >= m) {
            return Ok(());
        }
        self.best = Some(Best {
            iteration: iter,
            miou: m,
        });
        let dir = self.out.join(BEST_DIR);
        self.save(&dir, method, data, false)
    }

    /// The error a failed run ends with: for a non-finite value, where the last good checkpoint is.
    pub fn fail(&mut self, e: Error) -> Error {
        let Error::NonFinite { iter, message } = &e else {
            return e;
        };
        let _ = self.log_json(json!({ "type": "error", "iter": iter, "message": message }));
        let kept = match &self.last_good {
            Some((i, dir)) => format!(
                "the last good checkpoint is {} (iteration {i}); continue from it with `{}`, or train with train.nonfinite = \"skip\"",
                dir.display(),
                self.settings.resume_command
            ),
            None => "no checkpoint was written before it".into(),
        };
        Error::msg(format!(
            "{}: training stopped: {message}; {kept}",
            self.name
        ))
    }
}

fn loss_summary(log: &StepLog) -> String {
    log.losses
        .iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl TrainObserver for RunRecorder {
    fn on_step(&mut self, log: &StepLog, timing: StepTiming) -> Result<()> {
        let done = log.iter + 1;
        if let Some(reason) = &log.skipped {
            self.println(format!(
                "{}: skipped the update of iteration {}: {reason}",
                self.name, log.iter
            ));
            self.log_json(json!({ "type": "skipped", "iter": done, "message": reason }))?;
        }
        if done.is_multiple_of(self.log_interval) || done == self.iters {
            let elapsed = self.start.elapsed().as_secs_f64();
            let per_iter = elapsed / (done - self.start_iter).max(1) as f64;
            let eta = per_iter * (self.iters - done) as f64;
            let mem = peak_memory_mib();
            let losses: serde_json::Map<String, serde_json::Value> = log
                .losses
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            let metrics: serde_json::Map<String, serde_json::Value> = log
                .metrics
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            let record = json!({
                "type": "step",
                "iter": done,
                "lr": log.lr,
                "losses": losses,
                "total_loss": log.total_loss(),
                "metrics": metrics,
                "time_iter": timing.step + timing.data,
                "data_time": timing.data,
                "eta_s": eta,
                "peak_mem_mib": mem,
            });
            if self.settings.log_format == LogFormat::Json && !crate::io::quiet() {
                let mut line = record.clone();
                line["run"] = json!(self.name);
                eprintln!("{line}");
            }
            self.log_json(record)?;
            if let Some(tb) = &mut self.tb {
                let mut s: Vec<(String, f64)> = vec![
                    ("train/lr".into(), log.lr),
                    ("train/total_loss".into(), log.total_loss()),
                ];
                s.extend(log.losses.iter().map(|(k, v)| (format!("loss/{k}"), *v)));
                s.extend(log.metrics.iter().map(|(k, v)| (format!("metric/{k}"), *v)));
                s.push(("time/iter_s".into(), timing.step + timing.data));
                s.push(("time/data_s".into(), timing.data));
                if let Some(m) = mem {
                    s.push(("memory/peak_mib".into(), m));
                }
                tb.scalars(done as i64, &s)?;
            }
            let mem_text = mem
                .map(|m| format!(" | mem {m:.0} MiB"))
                .unwrap_or_default();
            match (&self.bar, self.settings.log_format) {
                (_, _) if crate::io::quiet() => {}
                (Some(b), _) => {
                    b.println(format!(
                        "{} iter {done}/{} {}",
                        self.name,
                        self.iters,
                        loss_summary(log)
                    ));
                    b.set_message(format!(
                        "lr {:.2e} | {:.3} s/it | ETA {:.0} s{mem_text}",
                        log.lr, per_iter, eta
                    ));
                }
                (None, LogFormat::Json) => {}
                (None, _) => eprintln!(
                    "{} iter {done}/{} lr {:.3e} {} | {:.3} s/it (data {:.3}) | ETA {:.0} s{mem_text}",
                    self.name,
                    self.iters,
                    log.lr,
                    loss_summary(log),
                    timing.step + timing.data,
                    timing.data,
                    eta
                ),
            }
        }
        if let Some(b) = &self.bar {
            b.set_position(done as u64);
        }
        if let Some(i) = &self.interruption {
            i.after_iteration(done);
        }
        Ok(())
    }

    fn on_eval(
        &mut self,
        iter: usize,
        report: &MiouReport,
        method: &dyn UdaMethod,
        data: &dyn BatchSource,
    ) -> Result<()> {
        self.curve.push((iter, report.miou));
        self.println(format!(
            "{} iter {iter}: target-{} mIoU {}",
            self.name,
            self.selection_name(),
            fmt_pct(report.miou)
        ));
        self.log_eval(iter, report)?;
        self.update_best(iter, report, method, data)
    }

    fn on_checkpoint(
        &mut self,
        iter: usize,
        method: &dyn UdaMethod,
        data: &dyn BatchSource,
    ) -> Result<()> {
        let dir = checkpoint::periodic_dir(&self.out, iter);
        self.save(&dir, method, data, true)?;
        checkpoint::prune_periodic(&self.out, self.settings.keep_last)
    }

    fn on_debug(&mut self, iter: usize, debug: &StepDebug) -> Result<()> {
        let path = self
            .out
            .join("debug")
            .join(format!("iter_{:08}.png", iter + 1));
        match &self.debug_images {
            Some(write) => write(&path, debug),
            None => Ok(()),
        }
    }
}
