//! `omuda train`: train each configured method (for one seed or several),
//! with periodic checkpoints, logs, debug images and exact resume; evaluate
//! and write results.
//!
//! Test hooks (environment variables, for the test suite; see docs/running.md):
//! - `OMUDA_TEST_PAUSE_AT_ITER=k`: after iteration k, print
//!   `test hook: paused after iteration k` and wait to be killed;
//! - `OMUDA_TEST_STOP_MID_CHECKPOINT=k`: while writing the checkpoint of
//!   iteration k, after the model files and before the sidecar, print
//!   `test hook: stopped mid-checkpoint at iteration k` and wait to be killed;
//! - `OMUDA_TEST_FORCE_NAN_AT=k` / `OMUDA_TEST_FORCE_NAN_GRAD_AT=k`: at the
//!   step with 0-based index k, add a loss term `test_nan.loss` whose value
//!   (resp. gradient) is NaN.

use std::cell::Cell;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use omuda::core::data::batch::BatchSource;
use omuda::core::data::config::TargetSplit;
use omuda::core::eval::miou::MiouReport;
use omuda::core::io::write_atomic;
use omuda::core::train::checkpoint::{self, Best, RunSidecar, BEST_DIR, FINAL_DIR, SIDECAR_FORMAT};
use omuda::core::train::method::StepDebug;
use omuda::core::train::trainer::{fit, LoopConfig, NonFinite, StepTiming, TrainObserver};
use omuda::core::train::{ChaCha8Rng, NamedLoss, StepHook, StepLog, StepView};
use omuda::run::{evaluate_target, selection_split};
use omuda::tensorboard::EventWriter;
use omuda::{build_method, Error, Result, RunConfig, SelfTraining, UdaMethod};
use serde_json::json;

use super::report::{fmt_pct, write_json, RunMetrics};
use super::{load_config, TrainArgs};

/// Marker file of a multi-seed run folder.
const SEEDS_FILE: &str = "seeds.json";

pub fn run(args: TrainArgs) -> Result<()> {
    if let Some(dir) = &args.resume {
        let given: Vec<&str> = [
            ("--config", args.config.is_some()),
            ("--method", args.method.is_some()),
            ("--iters", args.iters.is_some()),
            ("--seed", args.seed.is_some()),
            ("--seeds", args.seeds.is_some()),
            ("--out", args.out.is_some()),
        ]
        .iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| *n)
        .collect();
        if !given.is_empty() {
            return Err(Error::Config {
                origin: "--resume".into(),
                message: format!(
                    "a resumed run keeps its saved configuration; drop {}",
                    given.join(", ")
                ),
            });
        }
        return resume(dir);
    }
    let mut cfg = load_config(args.config.as_ref())?;
    if let Some(m) = args.method {
        cfg.methods = m;
    }
    if let Some(n) = args.iters {
        cfg.train.iters = n;
    }
    if let Some(s) = args.seed {
        cfg.seed = s;
    }
    if let Some(o) = args.out {
        cfg.out = o;
    }
    cfg.validate("command line")?;
    check_methods(&cfg)?;
    // Once for a fresh run, whatever the number of seeds: a seed changes
    // no file, weight or data set these checks read.
    if !matches!(&args.seeds, Some(s) if s.is_empty()) {
        preflight(&cfg, &cfg.open_device()?)?;
    }
    match args.seeds {
        Some(seeds) if !seeds.is_empty() => run_seeds(&cfg, &seeds, false),
        Some(_) => Err(Error::Config {
            origin: "--seeds".into(),
            message: "no seed given".into(),
        }),
        None => run_all(&cfg, false).map(|_| ()),
    }
}

fn check_methods(cfg: &RunConfig) -> Result<()> {
    // Fail on an unknown method before any training starts.
    for m in &cfg.methods {
        if !omuda::METHOD_NAMES.contains(&m.as_str()) {
            return Err(Error::Config {
                origin: "--method".into(),
                message: format!(
                    "unknown method {m:?}; available: {}",
                    omuda::METHOD_NAMES.join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// Continue the run in `dir` (single- or multi-seed) with its saved configuration.
fn resume(dir: &Path) -> Result<()> {
    let cfg_path = dir.join("config.toml");
    if !cfg_path.is_file() {
        return Err(Error::file(
            dir,
            "not a run folder written by `omuda train` (no config.toml)",
        ));
    }
    let mut cfg = RunConfig::from_file(&cfg_path)?;
    cfg.out = dir.to_path_buf();
    if let Some(Some(d)) = super::DEVICE_FLAG.get() {
        cfg.device = d.clone();
    }
    let seeds_path = dir.join(SEEDS_FILE);
    if seeds_path.is_file() {
        let text = std::fs::read_to_string(&seeds_path).map_err(|e| Error::io(&seeds_path, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::file(&seeds_path, e.to_string()))?;
        let seeds: Vec<u64> = serde_json::from_value(v["seeds"].clone()).map_err(|e| {
            Error::file(
                &seeds_path,
                format!("key `seeds`: {e} (expected a list of integers)"),
            )
        })?;
        return run_seeds(&cfg, &seeds, true);
    }
    run_all(&cfg, true).map(|_| ())
}

/// What one method's run ended with.
struct Outcome {
    name: String,
    /// The target test split: the reported score.
    target: MiouReport,
    source: MiouReport,
    checkpoint: PathBuf,
}

/// What can fail before training, checked before anything is written: every
/// method builds with its plugins (weights loaded and checked), its training
/// data opens, and every evaluation frame on disk decodes.
fn preflight(cfg: &RunConfig, device: &Device) -> Result<()> {
    omuda::run::check_eval_data(cfg)?;
    for name in &cfg.methods {
        omuda::attach_plugins(build_method(name, cfg, device)?, cfg)?;
        omuda::run::build_batch_source(cfg, name, device)?;
    }
    Ok(())
}

/// Train every method of `cfg` into `cfg.out`; print the summary table.
fn run_all(cfg: &RunConfig, resume: bool) -> Result<Vec<Outcome>> {
    let device = cfg.open_device()?;
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    if !resume {
        write_atomic(&cfg.out.join("config.toml"), cfg.to_toml()?.as_bytes())?;
    }
    let mut outcomes = Vec::new();
    for name in cfg.methods.clone() {
        outcomes.push(train_one(&name, cfg, &device, resume)?);
    }
    println!(
        "\nsummary (seed {}, {} iterations, mIoU %):",
        cfg.seed, cfg.train.iters
    );
    println!(
        "{:<14} {:>11} {:>11}",
        "method", "target-test", "source-val"
    );
    for o in &outcomes {
        println!(
            "{:<14} {:>11} {:>11}",
            o.name,
            fmt_pct(o.target.miou),
            fmt_pct(o.source.miou)
        );
    }
    Ok(outcomes)
}

/// Train every method once per seed into `<out>/seed_<s>/`; write
/// `<out>/summary.json` with mean ± std of target mIoU and the median seed.
fn run_seeds(cfg: &RunConfig, seeds: &[u64], resume: bool) -> Result<()> {
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    if !resume {
        write_atomic(&cfg.out.join("config.toml"), cfg.to_toml()?.as_bytes())?;
        write_json(&cfg.out.join(SEEDS_FILE), &json!({ "seeds": seeds }))?;
    }
    let mut per_seed = Vec::new();
    for &seed in seeds {
        let mut c = cfg.clone();
        c.seed = seed;
        c.out = cfg.out.join(format!("seed_{seed}"));
        let resume_this = resume && c.out.join("config.toml").is_file();
        per_seed.push((seed, run_all(&c, resume_this)?));
    }
    let mut methods = Vec::new();
    println!(
        "\nover seeds {seeds:?} ({} iterations), target-test mIoU %:",
        cfg.train.iters
    );
    println!(
        "{:<14} {:>16}  median seed (checkpoint)",
        "method", "mean ± std"
    );
    for name in &cfg.methods {
        let mut runs: Vec<(u64, f64, PathBuf)> = Vec::new();
        for (seed, outcomes) in &per_seed {
            if let Some(o) = outcomes.iter().find(|o| &o.name == name) {
                let miou = o.target.miou.ok_or_else(|| {
                    Error::msg(format!("{name}, seed {seed}: target mIoU undefined"))
                })?;
                runs.push((*seed, miou, o.checkpoint.clone()));
            }
        }
        let values: Vec<f64> = runs.iter().map(|r| r.1).collect();
        let (mean, std) = mean_std(&values);
        let mut sorted = runs.clone();
        sorted.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        let median = &sorted[(sorted.len() - 1) / 2];
        println!(
            "{:<14} {:>7.2} ± {:<6.2}  seed {} ({})",
            name,
            mean,
            std,
            median.0,
            median.2.display()
        );
        methods.push(json!({
            "method": name,
            "seeds": runs.iter().map(|r| r.0).collect::<Vec<_>>(),
            "target_miou": values,
            "mean": mean,
            "std": std,
            "median_seed": median.0,
            "median_checkpoint": median.2,
        }));
    }
    let path = cfg.out.join("summary.json");
    write_json(
        &path,
        &json!({ "iters": cfg.train.iters, "std": "sample standard deviation (n - 1)", "methods": methods }),
    )?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Mean and sample standard deviation (0 for a single value).
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

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

/// Block until killed (test hooks); give up after ten minutes.
fn wait_to_be_killed(what: &str) -> ! {
    eprintln!("test hook: {what}");
    let _ = std::io::stderr().flush();
    std::thread::sleep(std::time::Duration::from_secs(600));
    eprintln!("test hook: not killed within 600 s, exiting");
    std::process::exit(3)
}

/// Test hook: a loss term that is NaN in value or in gradient at one iteration.
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

fn attach_test_hooks(method: &mut SelfTraining) -> Result<()> {
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

/// Files of a previous run in a method folder, replaced by a fresh run.
const RUN_FILES: [&str; 8] = [
    "checkpoints",
    BEST_DIR,
    FINAL_DIR,
    "log.jsonl",
    "tb",
    "debug",
    "metrics.json",
    "plots",
];

fn train_one(name: &str, run_cfg: &RunConfig, device: &Device, resume: bool) -> Result<Outcome> {
    let out = run_cfg.out.join(name);
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let metrics_path = out.join("metrics.json");
    let final_dir = out.join(FINAL_DIR);

    if resume && metrics_path.is_file() {
        let text =
            std::fs::read_to_string(&metrics_path).map_err(|e| Error::io(&metrics_path, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::file(&metrics_path, e.to_string()))?;
        let report = |key: &str| -> Result<MiouReport> {
            serde_json::from_value(v[key].clone())
                .map_err(|e| Error::file(&metrics_path, format!("key `{key}`: {e}")))
        };
        eprintln!("{name}: finished earlier ({})", metrics_path.display());
        return Ok(Outcome {
            name: name.into(),
            target: report("target_test")?,
            source: report("source_val")?,
            checkpoint: final_dir,
        });
    }

    // Where to continue from, and with which configuration.
    let mut from: Option<(PathBuf, RunSidecar)> = None;
    if resume {
        checkpoint::clean_temporaries(&out)?;
        if let Some((_, dir)) = checkpoint::latest(&out)? {
            let sidecar = RunSidecar::read(&dir)?;
            from = Some((dir, sidecar));
        }
    }
    let cfg = match &from {
        Some((dir, s)) => {
            let mut c =
                RunConfig::from_toml_str(&s.config, &dir.join("run.json").display().to_string())?;
            c.out = run_cfg.out.clone();
            c.device = run_cfg.device.clone();
            c
        }
        None => run_cfg.clone(),
    };
    if from.is_none() {
        let mut replaced = Vec::new();
        for f in RUN_FILES {
            let p = out.join(f);
            if p.exists() {
                let r = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                r.map_err(|e| Error::io(&p, e))?;
                replaced.push(f);
            }
        }
        if !replaced.is_empty() {
            eprintln!(
                "{name}: starting afresh in {} (replaced {})",
                out.display(),
                replaced.join(", ")
            );
        }
    }
    write_atomic(&out.join("config.toml"), cfg.to_toml()?.as_bytes())?;

    let mut method = omuda::attach_plugins(build_method(name, &cfg, device)?, &cfg)?;
    attach_test_hooks(&mut method)?;
    method.set_skip_nonfinite(cfg.train.nonfinite == NonFinite::Skip);
    let mut loader = omuda::run::build_batch_source(&cfg, name, device)?;

    let log_path = out.join("log.jsonl");
    let tb_dir = out.join("tb");
    let mut observer = RunObserver::new(name, &out, &cfg)?;
    match &from {
        Some((dir, _)) => {
            let sidecar = checkpoint::load_checkpoint(dir, &mut method, &mut loader)?;
            truncate_log(&log_path, sidecar.iteration)?;
            omuda::tensorboard::truncate_after(&tb_dir, sidecar.iteration as i64)?;
            eprintln!(
                "{name}: resuming from {} (iteration {}/{})",
                dir.display(),
                sidecar.iteration,
                cfg.train.iters
            );
            observer.curve = sidecar.target_curve.clone();
            observer.best = sidecar.best;
            observer.train_seconds_before = sidecar.train_seconds;
            observer.last_good = Some((sidecar.iteration, dir.clone()));
            observer.start_iter = sidecar.iteration;
        }
        None => eprintln!(
            "training {name}: {} iterations, seed {}, model {}",
            cfg.train.iters, cfg.seed, cfg.model.name
        ),
    }
    observer.open_logs(&log_path, &tb_dir)?;

    let eval_seconds = Rc::new(Cell::new(0.0));
    observer.eval_seconds = eval_seconds.clone();
    // Periodic evaluations and the best checkpoint use the dev split; the
    // test split is scored once, at the end.
    let selection = selection_split(&cfg);
    let evaluate_target = |m: &dyn UdaMethod, split: TargetSplit| -> Result<MiouReport> {
        let t0 = Instant::now();
        let report = evaluate_target(&cfg, split, device, &|x| Ok(m.predict(x)?));
        eval_seconds.set(eval_seconds.get() + t0.elapsed().as_secs_f64());
        report
    };
    let loop_cfg = LoopConfig {
        iters: cfg.train.iters,
        eval_interval: cfg.train.eval_interval,
        checkpoint_interval: cfg.train.checkpoint_interval,
        debug_interval: cfg.train.debug_interval,
    };
    let fitted = fit(
        &mut method,
        &mut loader,
        loop_cfg,
        &mut |m: &dyn UdaMethod| evaluate_target(m, selection),
        &mut observer,
    );
    observer.finish();
    if let Err(e) = fitted {
        return Err(observer.fail(e));
    }
    let train_seconds = observer.train_seconds();

    observer.save(&final_dir, &method, &loader, false)?;
    let selected = evaluate_target(&method, selection)?;
    // A resume from a checkpoint written after the final evaluation already holds it.
    observer.curve.retain(|(i, _)| *i != cfg.train.iters);
    observer.curve.push((cfg.train.iters, selected.miou));
    observer.log_eval(cfg.train.iters, &selected)?;
    observer.update_best(cfg.train.iters, &selected, &method, &loader)?;
    let (dev, target) = match selection {
        TargetSplit::Dev => (selected, evaluate_target(&method, TargetSplit::Test)?),
        TargetSplit::Test => (evaluate_target(&method, TargetSplit::Dev)?, selected),
    };
    let source = omuda::run::evaluate_source_val(&cfg, device, &|x| Ok(method.predict(x)?))?;
    println!(
        "\n{name}: target-test ({} images), {:.0} s of training",
        target.num_images, train_seconds
    );
    print!("{}", target.table());
    println!(
        "{name}: target-dev mIoU {} ({} images)",
        fmt_pct(dev.miou),
        dev.num_images
    );
    println!("{name}: source-val mIoU {}", fmt_pct(source.miou));
    let metrics = RunMetrics {
        method: name,
        seed: cfg.seed,
        iters: cfg.train.iters,
        train_seconds,
        target_curve: &observer.curve,
        target_test: &target,
        target_dev: &dev,
        source_val: &source,
        best: observer.best,
        nonfinite_skipped: method.skipped_steps(),
    };
    write_json(&metrics_path, &metrics)?;
    Ok(Outcome {
        name: name.into(),
        target,
        source,
        checkpoint: final_dir,
    })
}

/// Keep the lines of `log.jsonl` up to iteration `iter` (a resumed run
/// rewrites what came after its checkpoint). A torn last line is dropped.
fn truncate_log(path: &Path, iter: usize) -> Result<()> {
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

/// Progress (bar on a terminal, lines otherwise), `log.jsonl`, TensorBoard,
/// checkpoints, best model and debug images of one method's run.
struct RunObserver {
    bar: Option<ProgressBar>,
    name: String,
    out: PathBuf,
    cfg: RunConfig,
    iters: usize,
    log_interval: usize,
    start: Instant,
    start_iter: usize,
    train_seconds_before: f64,
    eval_seconds: Rc<Cell<f64>>,
    curve: Vec<(usize, Option<f64>)>,
    best: Option<Best>,
    last_good: Option<(usize, PathBuf)>,
    log: Option<(PathBuf, File)>,
    tb: Option<EventWriter>,
    pause_at: Option<usize>,
    stop_mid_checkpoint: Option<usize>,
}

impl RunObserver {
    fn new(name: &str, out: &Path, cfg: &RunConfig) -> Result<Self> {
        let iters = cfg.train.iters;
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(iters as u64);
            if let Ok(style) =
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_prefix(name.to_string());
            b
        });
        Ok(Self {
            bar,
            name: name.into(),
            out: out.to_path_buf(),
            cfg: cfg.clone(),
            iters,
            log_interval: cfg.train.log_interval.max(1),
            start: Instant::now(),
            start_iter: 0,
            train_seconds_before: 0.0,
            eval_seconds: Rc::new(Cell::new(0.0)),
            curve: Vec::new(),
            best: None,
            last_good: None,
            log: None,
            tb: None,
            pause_at: env_usize("OMUDA_TEST_PAUSE_AT_ITER")?,
            stop_mid_checkpoint: env_usize("OMUDA_TEST_STOP_MID_CHECKPOINT")?,
        })
    }

    fn open_logs(&mut self, log_path: &Path, tb_dir: &Path) -> Result<()> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(|e| Error::io(log_path, e))?;
        self.log = Some((log_path.to_path_buf(), f));
        if self.cfg.train.tensorboard {
            self.tb = Some(EventWriter::create(tb_dir)?);
        }
        self.start = Instant::now();
        Ok(())
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }

    /// Training time so far, evaluations excluded, across resumptions.
    fn train_seconds(&self) -> f64 {
        self.train_seconds_before + self.start.elapsed().as_secs_f64() - self.eval_seconds.get()
    }

    fn println(&self, line: String) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
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

    fn log_eval(&mut self, iter: usize, report: &MiouReport) -> Result<()> {
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
        match selection_split(&self.cfg) {
            TargetSplit::Dev => "dev",
            TargetSplit::Test => "test",
        }
    }

    fn sidecar(&self, method: &dyn UdaMethod, data: &dyn BatchSource) -> Result<RunSidecar> {
        let it = method.iteration();
        Ok(RunSidecar {
            format: SIDECAR_FORMAT,
            code_version: checkpoint::code_version(),
            method: self.name.clone(),
            iteration: it,
            next_lr: self.cfg.schedule.poly(self.cfg.train.iters).lr(it),
            data_order: data.order_state()?,
            target_curve: self.curve.clone(),
            best: self.best,
            train_seconds: self.train_seconds(),
            config: self.cfg.to_toml()?,
        })
    }

    /// Write a checkpoint of the current state into `dir` (`periodic`: one of
    /// `checkpoints/`, where the mid-checkpoint test hook applies).
    fn save(
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
        let stop = periodic && self.stop_mid_checkpoint == Some(method.iteration());
        let hook = |_: &Path| {
            wait_to_be_killed(&format!(
                "stopped mid-checkpoint at iteration {}",
                sidecar.iteration
            ))
        };
        let t0 = Instant::now();
        checkpoint::save_checkpoint(dir, method, &sidecar, if stop { Some(&hook) } else { None })?;
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

    fn update_best(
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
    fn fail(&mut self, e: Error) -> Error {
        let Error::NonFinite { iter, message } = &e else {
            return e;
        };
        let _ = self.log_json(json!({ "type": "error", "iter": iter, "message": message }));
        let kept = match &self.last_good {
            Some((i, dir)) => format!(
                "the last good checkpoint is {} (iteration {i}); continue from it with `omuda train --resume {}`, or train with train.nonfinite = \"skip\"",
                dir.display(),
                self.cfg.out.display()
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

impl TrainObserver for RunObserver {
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
            self.log_json(json!({
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
            }))?;
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
            match &self.bar {
                Some(b) => b.set_message(loss_summary(log)),
                None => eprintln!(
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
        if self.pause_at == Some(done) {
            wait_to_be_killed(&format!("paused after iteration {done}"));
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
        checkpoint::prune_periodic(&self.out, self.cfg.train.keep_last)
    }

    fn on_debug(&mut self, iter: usize, debug: &StepDebug) -> Result<()> {
        let path = self
            .out
            .join("debug")
            .join(format!("iter_{:08}.png", iter + 1));
        omuda::visual::debug_grid(&path, debug)
    }
}
