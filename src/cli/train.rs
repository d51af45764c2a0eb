//! `omuda train`: train each configured method, evaluate, write results.

use std::io::IsTerminal;
use std::time::Instant;

use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use omuda::core::data::loader::SynthPairLoader;
use omuda::core::data::synth::Domain;
use omuda::core::eval::evaluate_synth;
use omuda::core::eval::miou::MiouReport;
use omuda::core::io::write_atomic;
use omuda::core::train::trainer::{fit, LoopConfig, StepTiming, TrainObserver};
use omuda::core::train::StepLog;
use omuda::{build_method, Result, RunConfig, UdaMethod};

use super::report::{fmt_pct, write_json, RunMetrics};
use super::{load_config, TrainArgs};

pub fn run(args: TrainArgs) -> Result<()> {
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
    let device = Device::Cpu;
    // Fail on an unknown method before any training starts.
    for m in &cfg.methods {
        if !omuda::baselines::METHOD_NAMES.contains(&m.as_str()) {
            return Err(omuda::Error::Config {
                origin: "--method".into(),
                message: format!("unknown method {m:?}; available: {}", omuda::baselines::METHOD_NAMES.join(", ")),
            });
        }
    }

    let mut summary = Vec::new();
    for name in cfg.methods.clone() {
        let (target, source) = train_one(&name, &cfg, &device)?;
        summary.push((name, target, source));
    }
    println!("\nsummary (seed {}, {} iterations, mIoU %):", cfg.seed, cfg.train.iters);
    println!("{:<14} {:>11} {:>11}", "method", "target-val", "source-val");
    for (name, t, s) in &summary {
        println!("{:<14} {:>11} {:>11}", name, fmt_pct(t.miou), fmt_pct(s.miou));
    }
    Ok(())
}

fn train_one(name: &str, cfg: &RunConfig, device: &Device) -> Result<(MiouReport, MiouReport)> {
    let out = cfg.out.join(name);
    std::fs::create_dir_all(&out).map_err(|e| omuda::Error::io(&out, e))?;
    write_atomic(&out.join("config.toml"), cfg.to_toml()?.as_bytes())?;
    let mut method = build_method(name, cfg, device)?;
    let source_domain = if name == "oracle" { Domain::Target } else { Domain::Source };
    let mut loader = SynthPairLoader::new(
        cfg.data.synth.clone(),
        cfg.data.dataset_seed,
        source_domain,
        cfg.train.batch_size,
        cfg.seed,
        device,
    );
    eprintln!("training {name}: {} iterations, seed {}, model {}", cfg.train.iters, cfg.seed, cfg.model.name);
    let mut observer = Progress::new(name, cfg.train.iters, cfg.train.log_interval);
    // Time spent evaluating, kept out of the reported training time.
    let eval_seconds = std::cell::Cell::new(0.0);
    let evaluate_target = |m: &dyn UdaMethod| -> Result<MiouReport> {
        let t0 = Instant::now();
        let report = evaluate_synth(&cfg.data.synth, cfg.data.dataset_seed, Domain::Target, &cfg.eval, device, &|x| {
            Ok(m.predict(x)?)
        });
        eval_seconds.set(eval_seconds.get() + t0.elapsed().as_secs_f64());
        report
    };
    let start = Instant::now();
    fit(
        &mut method,
        &mut loader,
        LoopConfig { iters: cfg.train.iters, eval_interval: cfg.train.eval_interval },
        &mut |m: &dyn UdaMethod| evaluate_target(m),
        &mut observer,
    )?;
    let train_seconds = start.elapsed().as_secs_f64() - eval_seconds.get();
    observer.finish();
    let mut curve = observer.curve.clone();

    method.save_state(&out.join("checkpoint"))?;
    write_atomic(&out.join("checkpoint").join("config.toml"), cfg.to_toml()?.as_bytes())?;

    let target = evaluate_target(&method)?;
    curve.push((cfg.train.iters, target.miou));
    let source = evaluate_synth(&cfg.data.synth, cfg.data.dataset_seed, Domain::Source, &cfg.eval, device, &|x| {
        Ok(method.predict(x)?)
    })?;
    println!("\n{name}: target-val ({} images), {:.0} s of training", target.num_images, train_seconds);
    print!("{}", target.table());
    println!("{name}: source-val mIoU {}", fmt_pct(source.miou));
    let metrics = RunMetrics {
        method: name,
        seed: cfg.seed,
        iters: cfg.train.iters,
        train_seconds,
        target_curve: &curve,
        target_val: &target,
        source_val: &source,
    };
    write_json(&out.join("metrics.json"), &metrics)?;
    Ok((target, source))
}

/// Progress bar on a terminal, plain log lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    name: String,
    iters: usize,
    log_interval: usize,
    start: Instant,
    curve: Vec<(usize, Option<f64>)>,
}

impl Progress {
    fn new(name: &str, iters: usize, log_interval: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(iters as u64);
            if let Ok(style) = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}") {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_prefix(name.to_string());
            b
        });
        Self { bar, name: name.into(), iters, log_interval: log_interval.max(1), start: Instant::now(), curve: Vec::new() }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}

fn loss_summary(log: &StepLog) -> String {
    log.losses.iter().map(|(k, v)| format!("{k} {v:.4}")).collect::<Vec<_>>().join(", ")
}

impl TrainObserver for Progress {
    fn on_step(&mut self, log: &StepLog, timing: StepTiming) -> Result<()> {
        let done = log.iter + 1;
        if let Some(b) = &self.bar {
            b.set_position(done as u64);
            if done.is_multiple_of(self.log_interval) || done == 1 {
                b.set_message(loss_summary(log));
            }
        } else if done.is_multiple_of(self.log_interval) || done == self.iters {
            let elapsed = self.start.elapsed().as_secs_f64();
            let eta = elapsed / done as f64 * (self.iters - done) as f64;
            eprintln!(
                "{} iter {done}/{} lr {:.3e} {} | {:.3} s/it (data {:.3}) | ETA {:.0} s",
                self.name,
                self.iters,
                log.lr,
                loss_summary(log),
                timing.step,
                timing.data,
                eta
            );
        }
        Ok(())
    }

    fn on_eval(&mut self, iter: usize, report: &MiouReport) -> Result<()> {
        self.curve.push((iter, report.miou));
        let line = format!("{} iter {iter}: target-val mIoU {}", self.name, fmt_pct(report.miou));
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
        Ok(())
    }
}

