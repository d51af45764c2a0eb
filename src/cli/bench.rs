//! `omuda bench`: time the network and the training step at a given size.
//!
//! Reports the median over `--iters` timed runs (after `--warmup` untimed
//! ones) of: the evaluation forward pass, one supervised step (forward,
//! cross-entropy, backward, AdamW), and one full UDA iteration of DACS
//! (student on source, teacher on target, ClassMix step, EMA). Inputs are
//! random images and labels of the crop size, so only the arithmetic is
//! measured, not data loading. Each row also gives the counted FLOPs
//! (`bench_flops`) and the achieved GFLOP/s. The parameter updates (AdamW step,
//! EMA update) are also timed alone, fused kernels against composed Candle ops. `--compare-pytorch` then runs
//! `bench/pytorch_reference.py` on the same network, step and thread count
//! (`bench_compare`) and prints the omuda/PyTorch ratios.

#[path = "bench_compare.rs"]
mod compare;
#[path = "bench_flops.rs"]
mod flops;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use omuda::core::data::batch::UdaBatch;
use omuda::core::io::write_atomic;
use omuda::core::nn::autocast::Autocast;
use omuda::core::nn::is_buffer;
use omuda::core::train::ema::{ema_update, ema_update_composed};
use omuda::core::train::optimizer::{AdamW, AdamWConfig};
use omuda::{build_method, Error, Result, SelfTraining, UdaMethod};
use serde::Serialize;

use super::load_config;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Network (see docs/models.md).
    #[arg(long, default_value = "daformer_mitb0")]
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
    /// Time the UDA iteration only (no evaluation forward, no supervised
    /// step): for profiling it, e.g. under `perf record`.
    #[arg(long, conflicts_with_all = ["no_uda", "compare_pytorch"])]
    pub uda_only: bool,
    /// Time the evaluation forward only: for profiling it, e.g. under
    /// `perf record`.
    #[arg(long, conflicts_with_all = ["uda_only", "no_uda", "compare_pytorch"])]
    pub eval_only: bool,
    /// Measure the peak resident memory of each phase instead of timing:
    /// the forward on graph-free weights, `predict`, the forward on
    /// trainable weights (with a graph), a supervised step and one
    /// iteration of `--method` (Linux).
    #[arg(long, conflicts_with_all = ["uda_only", "no_uda", "compare_pytorch"])]
    pub memory: bool,
    /// One phase of `--memory`, in a process of its own (internal).
    #[arg(long, hide = true, requires = "memory")]
    pub memory_phase: Option<String>,
    /// The UDA method of the third measurement (dacs, daformer, hrda,
    /// mic_hrda, …) with its default settings; the crop is its training crop
    /// (HRDA: context at half size plus a detail crop of `hrda.hr_crop`).
    #[arg(long, default_value = "dacs")]
    pub method: String,
    /// Compute precision of the student's training forward (f32, bf16, f16;
    /// see `model.autocast` in docs/cuda.md).
    #[arg(long, default_value = "f32")]
    pub autocast: String,
    /// Then run bench/pytorch_reference.py (same network, step and threads) and
    /// print the omuda/PyTorch ratios. Python: $OMUDA_TORCH_PYTHON, else
    /// `.bench-venv/` in the repository (created, with torch, if missing).
    #[arg(long)]
    pub compare_pytorch: bool,
    /// Threads of both sides (rayon / gemm and candle's element-wise pool;
    /// `torch.set_num_threads`). Default: candle's default (physical cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Serialize)]
struct BenchReport {
    model: String,
    /// The UDA method timed in `uda_iteration_s`.
    method: String,
    /// Compute precision of the student's training forward.
    autocast: String,
    #[serde(skip)]
    uda_label: String,
    device: String,
    crop: [usize; 2],
    batch: usize,
    iters: usize,
    parameters: usize,
    /// Threads of the CPU kernels (rayon / gemm).
    threads: usize,
    /// Counted FLOPs of each measurement (see `bench_flops`), when known for the model.
    flops: Option<Flops>,
    /// `None` with `--uda-only`.
    eval_forward_s: Option<f64>,
    /// `None` with `--uda-only`.
    train_step_s: Option<f64>,
    uda_iteration_s: Option<f64>,
    /// Median process CPU time (user + system, all threads) of the same runs:
    /// less sensitive to other load on the machine than the wall time.
    cpu_s: CpuTimes,
    /// Peak resident memory of the process (Linux VmHWM), MiB.
    peak_rss_mib: Option<f64>,
    /// The parameter updates alone, fused CPU kernels against the composed
    /// Candle ops (`None` with `--uda-only`).
    updates: Option<UpdateTimes>,
    /// The PyTorch reference and the ratios, with `--compare-pytorch`.
    pytorch: Option<Comparison>,
}

/// Median wall times of one AdamW step (DAFormer parameter groups) and one EMA
/// update over every parameter of the network.
#[derive(Debug, Serialize)]
struct UpdateTimes {
    adamw_fused_s: f64,
    adamw_composed_s: f64,
    ema_fused_s: f64,
    ema_composed_s: f64,
}

#[derive(Debug, Serialize)]
struct CpuTimes {
    eval_forward: Option<f64>,
    train_step: Option<f64>,
    uda_iteration: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Flops {
    eval_forward: f64,
    train_step: f64,
    /// Counted for DACS only (other methods run the network at other sizes).
    uda_iteration: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Comparison {
    framework: String,
    parameters: usize,
    eval_forward_s: f64,
    train_step_s: f64,
    uda_iteration_s: Option<f64>,
    peak_rss_mib: f64,
    cpu_s: compare::TorchCpu,
    /// omuda time (or memory) / PyTorch's: below 1 is faster (smaller).
    ratio_eval_forward: f64,
    ratio_train_step: f64,
    ratio_uda_iteration: Option<f64>,
    ratio_peak_rss: Option<f64>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    // The thread count is read from the environment when the pools start: run
    // again with it set. (`main` has already set the glibc malloc tunables; the
    // PyTorch reference inherits the same environment.)
    let want_threads = args.threads.map(|n| n.to_string());
    let threads_differ = want_threads
        .as_ref()
        .is_some_and(|n| std::env::var("RAYON_NUM_THREADS").ok().as_ref() != Some(n));
    if threads_differ {
        if args.threads == Some(0) {
            return Err(Error::Config {
                origin: "--threads".into(),
                message: "must be at least 1".into(),
            });
        }
        let exe = std::env::current_exe()
            .map_err(|e| Error::msg(format!("omuda bench: cannot find its own binary: {e}")))?;
        let mut cmd = std::process::Command::new(exe);
        cmd.args(std::env::args_os().skip(1));
        if let Some(n) = &want_threads {
            cmd.env("RAYON_NUM_THREADS", n).env("CANDLE_NUM_THREADS", n);
        }
        let status = cmd.status().map_err(|e| {
            Error::msg(format!(
                "omuda bench: cannot restart with --threads {}: {e}",
                args.threads.unwrap_or(0)
            ))
        })?;
        std::process::exit(status.code().unwrap_or(1));
    }
    let [h, w] = parse_crop(&args.crop)?;
    if args.batch == 0 || args.iters == 0 {
        return Err(Error::Config {
            origin: "omuda bench".into(),
            message: "--batch and --iters must be at least 1".into(),
        });
    }
    if args.compare_pytorch && (args.method != "dacs" || args.autocast != "f32") {
        return Err(Error::Config {
            origin: "--compare-pytorch".into(),
            message: "the PyTorch reference times DACS in f32: use it without --method/--autocast"
                .into(),
        });
    }
    let mut cfg = load_config(None)?;
    cfg.model.name = args.model.clone();
    // Times and memory do not depend on the weights' values: every network
    // starts from its seeded initialisation (the built-in configuration's
    // pretrained weights fit only its own network).
    cfg.model.weights = None;
    cfg.model.autocast = match args.autocast.as_str() {
        "f32" => Autocast::F32,
        "bf16" => Autocast::Bf16,
        "f16" => Autocast::F16,
        other => {
            return Err(Error::Config {
                origin: "--autocast".into(),
                message: format!("{other:?}: expected f32, bf16 or f16"),
            })
        }
    };
    cfg.train.batch_size = args.batch;
    cfg.train.iters = args.warmup + args.iters + 1;
    // HRDA at the published proportions: the detail crop is half the
    // training crop (512 of 1024), the test window the training crop.
    cfg.hrda.hr_crop = [h / 2, w / 2];
    cfg.hrda.test_crop = [h, w];
    cfg.hrda.test_stride = [h / 2, w / 2];
    let device = cfg.open_device()?;
    let batch = random_batch(args.batch, h, w, cfg.model.num_classes, &device)?;

    if let Some(phase) = &args.memory_phase {
        return super::bench_memory::run_phase(phase, &cfg, &args.method, &batch, &device);
    }
    if args.memory {
        let report = super::bench_memory::run(&cfg, &args.method, [h, w], args.batch)?;
        super::bench_memory::print(&report);
        if let Some(path) = &args.json {
            super::report::write_json(path, &report)?;
        }
        return Ok(());
    }
    let threads = candle_core::utils::get_num_threads();
    let announce = |parameters: usize| {
        eprintln!(
            "bench: {} ({parameters} parameters), {h}x{w}, batch {}, device {}, {threads} threads",
            args.model, args.batch, cfg.device
        )
    };
    // Without `--uda-only`: the evaluation forward, the supervised step and the
    // parameter updates, on one source-only network.
    let mut parameters = None;
    let supervised_rows = if args.uda_only {
        None
    } else {
        let mut supervised = build_method("source_only", &cfg, &device)?;
        let n = trainable_parameters(&supervised)?;
        announce(n);
        parameters = Some(n);
        let (eval_s, eval_cpu) = median_time(args.warmup, args.iters, &device, || {
            supervised.predict(&batch.source_image)?;
            Ok(())
        })?;
        if args.eval_only {
            Some(((eval_s, eval_cpu), None, None))
        } else {
            let train = median_time(args.warmup, args.iters, &device, || {
                supervised.train_step(&batch)?;
                Ok(())
            })?;
            let updates =
                time_updates(supervised.student_vars(), args.warmup, args.iters, &device)?;
            Some(((eval_s, eval_cpu), Some(train), Some(updates)))
        }
    };
    let (uda_iteration_s, uda_cpu) = if args.no_uda || args.eval_only {
        (None, None)
    } else {
        let mut uda = build_method(&args.method, &cfg, &device)?;
        if parameters.is_none() {
            let n = trainable_parameters(&uda)?;
            announce(n);
            parameters = Some(n);
        }
        let (wall, cpu) = median_time(args.warmup, args.iters, &device, || {
            uda.train_step(&batch)?;
            Ok(())
        })?;
        (Some(wall), Some(cpu))
    };
    // `--uda-only` conflicts with `--no-uda`: one of the two branches ran.
    let parameters = parameters.ok_or_else(|| Error::msg("omuda bench: nothing was timed"))?;
    let (eval, train, updates) = match supervised_rows {
        Some((eval, train, updates)) => (Some(eval), train, updates),
        None => (None, None, None),
    };
    let (eval_forward_s, eval_cpu) = (eval.map(|e| e.0), eval.map(|e| e.1));
    let (train_step_s, train_cpu) = (train.map(|t| t.0), train.map(|t| t.1));
    let cpu_s = CpuTimes {
        eval_forward: eval_cpu,
        train_step: train_cpu,
        uda_iteration: uda_cpu,
    };
    let flops =
        flops::forward_flops(&args.model, args.batch, h, w, cfg.model.num_classes).map(|f| Flops {
            eval_forward: f,
            train_step: 3.0 * f,
            uda_iteration: (args.method == "dacs").then_some(7.0 * f),
        });
    let peak_rss_mib = peak_rss_mib();
    let pytorch = if args.compare_pytorch {
        let repo = compare::repo_root()?;
        let python = compare::torch_python(&repo)?;
        let json =
            std::env::temp_dir().join(format!("omuda-bench-pytorch-{}.json", std::process::id()));
        let run = compare::TorchRun {
            model: &args.model,
            crop: [h, w],
            batch: args.batch,
            iters: args.iters,
            warmup: args.warmup,
            threads,
            classes: cfg.model.num_classes,
            no_uda: args.no_uda,
        };
        let t = compare::run_reference(&python, &repo, &run, &json)?;
        let _ = std::fs::remove_file(&json);
        // `--uda-only` conflicts with `--compare-pytorch`: both rows were timed.
        let (Some(eval_s), Some(train_s)) = (eval_forward_s, train_step_s) else {
            return Err(Error::msg(
                "omuda bench: --compare-pytorch needs the evaluation and training rows",
            ));
        };
        Some(Comparison {
            ratio_eval_forward: eval_s / t.eval_forward_s,
            ratio_train_step: train_s / t.train_step_s,
            ratio_uda_iteration: uda_iteration_s.zip(t.uda_iteration_s).map(|(a, b)| a / b),
            ratio_peak_rss: peak_rss_mib.map(|m| m / t.peak_rss_mib),
            framework: format!("{} ({} threads)", t.framework, t.threads),
            parameters: t.parameters,
            eval_forward_s: t.eval_forward_s,
            train_step_s: t.train_step_s,
            uda_iteration_s: t.uda_iteration_s,
            peak_rss_mib: t.peak_rss_mib,
            cpu_s: t.cpu_s,
        })
    } else {
        None
    };
    let report = BenchReport {
        uda_label: format!("{} iteration", args.method),
        method: args.method.clone(),
        autocast: args.autocast.clone(),
        model: args.model,
        device: cfg.device.clone(),
        crop: [h, w],
        batch: args.batch,
        iters: args.iters,
        parameters,
        threads,
        flops,
        eval_forward_s,
        train_step_s,
        uda_iteration_s,
        cpu_s,
        peak_rss_mib,
        updates,
        pytorch,
    };
    print_table(&report);
    if let Some(path) = &args.json {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| Error::file(path, e.to_string()))?;
        write_atomic(path, text.as_bytes())?;
    }
    Ok(())
}

fn print_table(r: &BenchReport) {
    let rows = [
        (
            "eval forward",
            r.eval_forward_s,
            r.flops.as_ref().map(|f| f.eval_forward),
            r.pytorch.as_ref().map(|p| p.eval_forward_s),
        ),
        (
            "supervised train step",
            r.train_step_s,
            r.flops.as_ref().map(|f| f.train_step),
            r.pytorch.as_ref().map(|p| p.train_step_s),
        ),
        (
            r.uda_label.as_str(),
            r.uda_iteration_s,
            r.flops.as_ref().and_then(|f| f.uda_iteration),
            r.pytorch.as_ref().and_then(|p| p.uda_iteration_s),
        ),
    ];
    let gflops =
        |f: Option<f64>, t: f64| f.map_or("-".to_string(), |f| format!("{:.1}", f / t / 1e9));
    println!(
        "{} {}x{} batch {}, {} threads, {} parameters",
        r.model, r.crop[0], r.crop[1], r.batch, r.threads, r.parameters
    );
    if let Some(p) = &r.pytorch {
        println!("PyTorch: {}, {} parameters", p.framework, p.parameters);
        println!("| measurement | GFLOP | omuda s | omuda GFLOP/s | PyTorch s | PyTorch GFLOP/s | omuda/PyTorch |");
        println!("|---|---|---|---|---|---|---|");
    } else {
        println!("| measurement | GFLOP | median s | GFLOP/s |");
        println!("|---|---|---|---|");
    }
    for (name, t, f, pt) in rows {
        let Some(t) = t else { continue };
        let g = f.map_or("-".to_string(), |f| format!("{:.2}", f / 1e9));
        match (&r.pytorch, pt) {
            (Some(_), Some(pt)) => {
                println!(
                    "| {name} | {g} | {t:.4} | {} | {pt:.4} | {} | {:.2} |",
                    gflops(f, t),
                    gflops(f, pt),
                    t / pt
                )
            }
            _ => println!("| {name} | {g} | {t:.4} | {} |", gflops(f, t)),
        }
    }
    let cpu_rows = [
        (
            "eval forward",
            r.cpu_s.eval_forward,
            r.pytorch.as_ref().map(|p| p.cpu_s.eval_forward),
        ),
        (
            "supervised train step",
            r.cpu_s.train_step,
            r.pytorch.as_ref().map(|p| p.cpu_s.train_step),
        ),
        (
            r.uda_label.as_str(),
            r.cpu_s.uda_iteration,
            r.pytorch.as_ref().and_then(|p| p.cpu_s.uda_iteration),
        ),
    ];
    println!("CPU time (user + system, median), s:");
    for (name, t, pt) in cpu_rows {
        match (t, pt) {
            (Some(t), Some(pt)) => println!(
                "| {name} | omuda {t:.3} | PyTorch {pt:.3} | {:.2} |",
                t / pt
            ),
            (Some(t), None) => println!("| {name} | {t:.3} |"),
            _ => {}
        }
    }
    if let Some(u) = &r.updates {
        println!("parameter updates, s (fused kernel / composed Candle ops):");
        println!(
            "| AdamW step | {:.4} | {:.4} | {:.2} |",
            u.adamw_fused_s,
            u.adamw_composed_s,
            u.adamw_fused_s / u.adamw_composed_s
        );
        println!(
            "| EMA update | {:.4} | {:.4} | {:.2} |",
            u.ema_fused_s,
            u.ema_composed_s,
            u.ema_fused_s / u.ema_composed_s
        );
    }
    match (r.peak_rss_mib, &r.pytorch) {
        (Some(m), Some(p)) => println!(
            "peak RSS: omuda {m:.0} MiB, PyTorch {:.0} MiB, ratio {:.2}",
            p.peak_rss_mib,
            m / p.peak_rss_mib
        ),
        (Some(m), None) => println!("peak RSS: {m:.0} MiB"),
        _ => {}
    }
}

fn parse_crop(text: &str) -> Result<[usize; 2]> {
    let bad = || Error::Config {
        origin: "--crop".into(),
        message: format!("{text:?}: expected N or HxW, e.g. 512 or 512x1024"),
    };
    let parts: Vec<&str> = text.split(['x', 'X']).collect();
    let nums: Vec<usize> = parts
        .iter()
        .map(|p| p.trim().parse::<usize>().map_err(|_| bad()))
        .collect::<Result<_>>()?;
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
    let blocks = Tensor::rand(
        0f32,
        classes as f32,
        (b, 1, h.div_ceil(32), w.div_ceil(32)),
        device,
    )?
    .floor()?;
    let source_label = blocks
        .upsample_nearest2d(h.div_ceil(32) * 32, w.div_ceil(32) * 32)?
        .narrow(2, 0, h)?
        .narrow(3, 0, w)?
        .squeeze(1)?
        .to_dtype(DType::U32)?;
    Ok(UdaBatch {
        source_image,
        source_label,
        target_image,
        target_valid: None,
    })
}

/// Trainable parameters of the method's student (BatchNorm running
/// statistics live in the VarMap too and are not counted).
fn trainable_parameters(method: &SelfTraining) -> Result<usize> {
    let data = method
        .student_vars()
        .data()
        .lock()
        .map_err(|_| Error::msg("student VarMap lock poisoned"))?;
    Ok(data
        .iter()
        .filter(|(name, _)| !is_buffer(name))
        .map(|(_, v)| v.elem_count())
        .sum())
}

/// Times one AdamW step and one EMA update over the parameters of `student`,
/// each with the fused kernels and with the composed Candle ops.
fn time_updates(
    student: &VarMap,
    warmup: usize,
    iters: usize,
    device: &Device,
) -> Result<UpdateTimes> {
    // A gradient for every parameter (d/dp Σp = 1) and a teacher with the same names.
    let teacher = VarMap::new();
    let mut loss: Option<Tensor> = None;
    {
        let data = student
            .data()
            .lock()
            .map_err(|_| Error::msg("student VarMap lock poisoned"))?;
        for (name, var) in data.iter().filter(|(name, _)| !is_buffer(name)) {
            teacher.get(
                var.shape(),
                name,
                candle_nn::Init::Const(0.0),
                var.dtype(),
                device,
            )?;
            let s = var.as_tensor().sum_all()?;
            loss = Some(match loss {
                Some(l) => l.add(&s)?,
                None => s,
            });
        }
    }
    let loss = loss.ok_or_else(|| Error::msg("omuda bench: the network has no parameters"))?;
    let grads = loss.backward()?;
    let lr = 6e-5;
    let mut fused = AdamW::new(student, AdamWConfig::default())?;
    let mut composed = AdamW::new_composed(student, AdamWConfig::default())?;
    let (adamw_fused_s, _) = median_time(warmup, iters, device, || fused.step(&grads, lr))?;
    let (adamw_composed_s, _) = median_time(warmup, iters, device, || composed.step(&grads, lr))?;
    let (ema_fused_s, _) = median_time(warmup, iters, device, || {
        Ok(ema_update(&teacher, student, 0.99)?)
    })?;
    let (ema_composed_s, _) = median_time(warmup, iters, device, || {
        Ok(ema_update_composed(&teacher, student, 0.99)?)
    })?;
    Ok(UpdateTimes {
        adamw_fused_s,
        adamw_composed_s,
        ema_fused_s,
        ema_composed_s,
    })
}

/// Median wall time and median process CPU time of `f` over `iters` runs
/// after `warmup` runs; waits for the device to finish before reading the clocks.
fn median_time(
    warmup: usize,
    iters: usize,
    device: &Device,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, f64)> {
    for _ in 0..warmup {
        f()?;
    }
    let mut times = Vec::with_capacity(iters);
    let mut cpu = Vec::with_capacity(iters);
    for _ in 0..iters {
        device.synchronize()?;
        let (t0, c0) = (Instant::now(), process_cpu_s());
        f()?;
        device.synchronize()?;
        times.push(t0.elapsed().as_secs_f64());
        cpu.push(process_cpu_s() - c0);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    Ok((median(times), median(cpu)))
}

/// User + system CPU time of this process so far, seconds (Linux
/// `/proc/self/stat`, in clock ticks of 1/100 s; 0 elsewhere).
fn process_cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / 100.0
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
