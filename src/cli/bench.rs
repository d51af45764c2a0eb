//! `omuda bench`: time the network and the training step at a given size.
//!
//! Reports the median over `--iters` timed runs (after `--warmup` untimed
//! ones) of: the evaluation forward pass, one supervised step (forward,
//! cross-entropy, backward, AdamW), and one full UDA iteration of DACS
//! (student on source, teacher on target, ClassMix step, EMA). Inputs are
//! random images and labels of the crop size, so only the arithmetic is
//! measured, not data loading.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use omuda::core::io::write_atomic;
use omuda::core::train::UdaBatch;
use omuda::{build_method, Error, Result, UdaMethod};
use serde::Serialize;

use super::load_config;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Network (see docs/models.md).
    #[arg(long, default_value = "segformer_mitb0")]
    pub model: String,
    /// Crop size: N (square) or HxW.
    #[arg(long, default_value = "256")]
    pub crop: String,
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Timed repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Untimed repetitions first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Skip the full UDA iteration.
    #[arg(long)]
    pub no_uda: bool,
}

#[derive(Debug, Serialize)]
struct BenchReport {
    model: String,
    device: String,
    crop: [usize; 2],
    batch: usize,
    iters: usize,
    parameters: usize,
    eval_forward_s: f64,
    train_step_s: f64,
    uda_iteration_s: Option<f64>,
    /// Peak resident memory of the process (Linux VmHWM), MiB.
    peak_rss_mib: Option<f64>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let [h, w] = parse_crop(&args.crop)?;
    if args.batch == 0 || args.iters == 0 {
        return Err(Error::Config { origin: "omuda bench".into(), message: "--batch and --iters must be at least 1".into() });
    }
    let mut cfg = load_config(None)?;
    cfg.model.name = args.model.clone();
    cfg.train.batch_size = args.batch;
    cfg.train.iters = args.warmup + args.iters + 1;
    let device = cfg.open_device()?;
    let batch = random_batch(args.batch, h, w, cfg.model.num_classes, &device)?;

    let mut supervised = build_method("source_only", &cfg, &device)?;
    let parameters = supervised.student_vars().all_vars().iter().map(|v| v.elem_count()).sum();
    eprintln!("bench: {} ({parameters} parameters), {h}x{w}, batch {}, device {}", args.model, args.batch, cfg.device);

    let eval_forward_s = median_time(args.warmup, args.iters, &device, || {
        supervised.predict(&batch.source_image)?;
        Ok(())
    })?;
    let train_step_s = median_time(args.warmup, args.iters, &device, || {
        supervised.train_step(&batch)?;
        Ok(())
    })?;
    drop(supervised);
    let uda_iteration_s = if args.no_uda {
        None
    } else {
        let mut dacs = build_method("dacs", &cfg, &device)?;
        Some(median_time(args.warmup, args.iters, &device, || {
            dacs.train_step(&batch)?;
            Ok(())
        })?)
    };
    let report = BenchReport {
        model: args.model,
        device: cfg.device.clone(),
        crop: [h, w],
        batch: args.batch,
        iters: args.iters,
        parameters,
        eval_forward_s,
        train_step_s,
        uda_iteration_s,
        peak_rss_mib: peak_rss_mib(),
    };
    println!("| measurement | median s |");
    println!("|---|---|");
    println!("| eval forward | {:.4} |", report.eval_forward_s);
    println!("| supervised train step | {:.4} |", report.train_step_s);
    if let Some(t) = report.uda_iteration_s {
        println!("| DACS iteration | {t:.4} |");
    }
    if let Some(m) = report.peak_rss_mib {
        println!("peak RSS: {m:.0} MiB");
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| Error::file(path, e.to_string()))?;
        write_atomic(path, text.as_bytes())?;
    }
    Ok(())
}

fn parse_crop(text: &str) -> Result<[usize; 2]> {
    let bad = || Error::Config { origin: "--crop".into(), message: format!("{text:?}: expected N or HxW, e.g. 512 or 512x1024") };
    let parts: Vec<&str> = text.split(['x', 'X']).collect();
    let nums: Vec<usize> = parts.iter().map(|p| p.trim().parse::<usize>().map_err(|_| bad())).collect::<Result<_>>()?;
    match nums.as_slice() {
        [n] if *n > 0 => Ok([*n, *n]),
        [h, w] if *h > 0 && *w > 0 => Ok([*h, *w]),
        _ => Err(bad()),
    }
}

fn random_batch(b: usize, h: usize, w: usize, classes: usize, device: &Device) -> Result<UdaBatch> {
    let source_image = Tensor::randn(0f32, 1.0, (b, 3, h, w), device)?;
    let target_image = Tensor::randn(0f32, 1.0, (b, 3, h, w), device)?;
    // Labels in blocks of 32 px, so ClassMix sees several classes per image.
    let blocks = Tensor::rand(0f32, classes as f32, (b, 1, h.div_ceil(32), w.div_ceil(32)), device)?.floor()?;
    let source_label = blocks
        .upsample_nearest2d(h.div_ceil(32) * 32, w.div_ceil(32) * 32)?
        .narrow(2, 0, h)?
        .narrow(3, 0, w)?
        .squeeze(1)?
        .to_dtype(DType::U32)?;
    Ok(UdaBatch { source_image, source_label, target_image, target_valid: None })
}

/// Median wall time of `f` over `iters` runs after `warmup` runs; waits for
/// the device to finish before reading the clock.
fn median_time(warmup: usize, iters: usize, device: &Device, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        device.synchronize()?;
        let t0 = Instant::now();
        f()?;
        device.synchronize()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
