//! `omuda train`: train each configured method (for one seed or several),
//! with periodic checkpoints, logs, debug images and exact resume (the
//! library's `RunRecorder`); evaluate and write results.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use omuda::core::data::batch::BatchSource;
use omuda::core::data::config::TargetSplit;
use omuda::core::eval::miou::MiouReport;
use omuda::core::io::write_atomic;
use omuda::core::train::checkpoint::{self, RunSidecar, FINAL_DIR};
use omuda::core::train::observers::recorder::clear_outputs;
use omuda::core::train::observers::{RecorderSettings, RunRecorder};
use omuda::core::train::trainer::{fit, LoopConfig, NonFinite};
use omuda::run::{evaluate_target, recorder_settings, selection_split};
use omuda::{build_method, Error, Result, RunConfig, UdaMethod};
use serde_json::json;

use super::report::{fmt_pct, mean, std, write_json, RunMetrics};
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
    if args.seed.is_some() && args.seeds.is_some() {
        return Err(Error::Config {
            origin: "--seed".into(),
            message:
                "give either --seed S (one run) or --seeds S1,S2,… (one run per seed), not both"
                    .into(),
        });
    }
    let mut cfg = load_config(args.config.as_ref())?;
    if let Some(m) = args.method {
        cfg.methods = m;
    }
    if let Some(n) = args.iters {
        if let Some(line) = cfg.scale_to_iters(n) {
            super::note!("{line}");
        }
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
        // One batch: its frames decode and fit the configured crops.
        omuda::run::build_batch_source(cfg, name, device)?.next_batch()?;
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
        let (mean, std) = (mean(&values), std(&values));
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
        super::note!("{name}: finished earlier ({})", metrics_path.display());
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
        let replaced = clear_outputs(&out, &["metrics.json", "plots"])?;
        if !replaced.is_empty() {
            super::note!(
                "{name}: starting afresh in {} (replaced {})",
                out.display(),
                replaced.join(", ")
            );
        }
    }
    write_atomic(&out.join("config.toml"), cfg.to_toml()?.as_bytes())?;

    #[allow(unused_mut)]
    let mut method = omuda::attach_plugins(build_method(name, &cfg, device)?, &cfg)?;
    #[cfg(feature = "test-faults")]
    super::faults::attach_step_faults(&mut method, cfg.seed)?;
    method.set_skip_nonfinite(cfg.train.nonfinite == NonFinite::Skip);
    let mut loader = omuda::run::build_batch_source(&cfg, name, device)?;

    let observer = RunRecorder::new(RecorderSettings {
        log_format: super::log_format(),
        ..recorder_settings(name, name, &out, &cfg)?
    })?
    .with_debug_images(Box::new(omuda::visual::debug_grid));
    #[cfg(feature = "test-faults")]
    let observer = observer.with_interruption(super::faults::interruption()?);
    let mut observer = observer;
    match &from {
        Some((dir, _)) => {
            let sidecar = checkpoint::load_checkpoint(dir, &mut method, &mut loader)?;
            observer.resume_from(dir, &sidecar)?;
            super::note!(
                "{name}: resuming from {} (iteration {}/{})",
                dir.display(),
                sidecar.iteration,
                cfg.train.iters
            );
        }
        None => super::note!(
            "training {name}: {} iterations, seed {}, model {}",
            cfg.train.iters,
            cfg.seed,
            cfg.model.name
        ),
    }
    observer.open_logs()?;

    let eval_seconds = observer.eval_seconds.clone();
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
