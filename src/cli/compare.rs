//! `omuda compare`: a host method alone and with each plugin set, over several
//! seeds, with identical data order and seeds per seed; writes `compare.md`,
//! `compare.json` and two PNG charts. Finished runs in the output folder are
//! reused, so an interrupted comparison continues where it stopped.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use omuda::core::data::config::TargetSplit;
use omuda::core::eval::miou::MiouReport;
use omuda::core::io::write_atomic;
use omuda::core::train::checkpoint::{self, RunSidecar, FINAL_DIR};
use omuda::core::train::observers::recorder::clear_outputs;
use omuda::core::train::observers::RunRecorder;
use omuda::core::train::trainer::{fit, LoopConfig, NonFinite};
use omuda::run::{evaluate_target, recorder_settings, selection_split};
use omuda::{build_method, Error, Result, RunConfig, UdaMethod};
use serde::{Deserialize, Serialize};

use super::report::{mean, std, write_json};

#[derive(clap::Args)]
pub struct CompareArgs {
    /// A preset name (`omuda config list`) or a TOML configuration file.
    #[arg(long, default_value = "synth-dacs")]
    pub preset: String,
    /// Plugin sets, comma-separated: `none` is the host alone, `+` joins
    /// plugins (e.g. none,cam,fdm,cdm,cam+fdm+cdm).
    #[arg(long, value_delimiter = ',', default_value = "none,cam+fdm+cdm")]
    pub plugins: Vec<String>,
    /// Seeds, comma-separated; every plugin set runs with each.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub seeds: Vec<u64>,
    /// Training iterations (default: the preset's).
    #[arg(long)]
    pub iters: Option<usize>,
    /// Output folder (default: runs/compare-<preset>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the grid (one run per line: index, host, plugin set, seed,
    /// folder, state) and exit.
    #[arg(long)]
    pub list: bool,
    /// Run only the runs with these indices (see --list), comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "shard")]
    pub only: Option<Vec<usize>>,
    /// Run only shard K of N (the runs whose index is K modulo N), e.g. 0/4.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
    /// Train nothing: write the tables and charts from the finished runs and
    /// list the missing ones.
    #[arg(long, conflicts_with_all = ["only", "shard", "list"])]
    pub collect: bool,
}

/// One run of a comparison grid.
struct Cell {
    index: usize,
    host: String,
    label: String,
    seed: u64,
    cfg: RunConfig,
}

impl Cell {
    fn display(&self) -> String {
        format!("{} [{}] seed {}", self.host, self.label, self.seed)
    }
}

/// Which runs of the grid this process trains.
fn selected(args: &CompareArgs, index: usize) -> Result<bool> {
    if let Some(only) = &args.only {
        return Ok(only.contains(&index));
    }
    if let Some(shard) = &args.shard {
        let bad = || Error::Config {
            origin: "--shard".into(),
            message: format!("{shard:?}: expected K/N with 0 <= K < N, e.g. 0/4"),
        };
        let (k, n) = shard.split_once('/').ok_or_else(bad)?;
        let (k, n): (usize, usize) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if n == 0 || k >= n {
            return Err(bad());
        }
        return Ok(index % n == k);
    }
    Ok(true)
}

/// An exclusive claim on a run folder, so that processes sharing one output
/// folder never train the same run: the file `claim` is created only if
/// absent (`O_EXCL`), and removed when the run is done. A claim left by a
/// process of this machine that no longer exists is taken over.
struct Claim(PathBuf);

impl Claim {
    fn take(dir: &Path) -> Result<Option<Claim>> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join("claim");
        let me = format!("{} {}", hostname(), std::process::id());
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(me.as_bytes())
                        .map_err(|e| Error::io(&path, e))?;
                    return Ok(Some(Claim(path)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(&path).unwrap_or_default();
                    let stale = match owner.split_once(' ') {
                        Some((host, pid)) if host == hostname() => {
                            !Path::new(&format!("/proc/{}", pid.trim())).exists()
                        }
                        _ => false,
                    };
                    if !stale {
                        return Ok(None);
                    }
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        Ok(None)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Resolve a preset name or a TOML path into a configuration.
pub fn preset_config(preset: &str) -> Result<RunConfig> {
    super::load_config_as(Some(preset), "--preset")
}

/// Parse `cam+fdm` into plugin names; `none` is the empty set.
pub fn parse_set(set: &str) -> Result<Vec<String>> {
    if set == "none" {
        return Ok(Vec::new());
    }
    let names: Vec<String> = set.split('+').map(|s| s.trim().to_string()).collect();
    for n in &names {
        if !omuda::plugins::PLUGIN_NAMES.contains(&n.as_str()) {
            return Err(Error::Config {
                origin: "--plugins".into(),
                message: format!(
                    "unknown plugin {n:?} in {set:?}; available: none, {}",
                    omuda::plugins::PLUGIN_NAMES.join(", ")
                ),
            });
        }
    }
    Ok(names)
}

/// What one finished run of a comparison stores (`run.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub host: String,
    pub plugins: String,
    pub seed: u64,
    pub iters: usize,
    /// Training loop wall time, evaluations excluded.
    pub train_seconds: f64,
    /// (iteration, target-dev mIoU) over training, the final one included.
    pub target_curve: Vec<(usize, Option<f64>)>,
    /// The target test split: the compared score.
    pub target_test: MiouReport,
    /// The target dev split (for choosing hyperparameters, never reported).
    pub target_dev: MiouReport,
    /// The full configuration of the run, to decide whether it can be reused.
    pub config: String,
}

/// One row of the comparison (a plugin set over all seeds).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub plugins: String,
    pub seeds: Vec<u64>,
    pub miou: Vec<f64>,
    pub mean: f64,
    pub std: f64,
    /// Mean over seeds of each class's IoU (null where undefined in a seed).
    pub per_class_iou: Vec<Option<f64>>,
    /// Paired gain over the baseline row: mean and std of the per-seed differences.
    pub gain: Option<PairedGain>,
    pub train_seconds_mean: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PairedGain {
    pub mean: f64,
    pub std: f64,
    /// Per-seed differences (row − baseline).
    pub diffs: Vec<f64>,
    /// Seeds where the row beats the baseline.
    pub wins: usize,
    /// Paired t statistic, None with fewer than 2 seeds or zero spread.
    pub t: Option<f64>,
    pub note: String,
    /// Mean per-class gain (null where a class is undefined).
    pub per_class: Vec<Option<f64>>,
}

#[derive(Serialize)]
struct CompareJson<'a> {
    host: &'a str,
    preset: &'a str,
    iters: usize,
    seeds: &'a [u64],
    class_names: &'a [String],
    baseline: &'a str,
    rows: &'a [Row],
}

pub fn run(args: CompareArgs) -> Result<()> {
    let mut cfg = preset_config(&args.preset)?;
    if let Some(Some(d)) = super::DEVICE_FLAG.get() {
        cfg.device = d.clone();
    }
    if let Some(n) = args.iters {
        if let Some(line) = cfg.scale_to_iters(n) {
            super::note!("{line}");
        }
    }
    cfg.plugins.clear();
    cfg.validate("command line")?;
    if args.seeds.is_empty() || args.plugins.is_empty() {
        return Err(Error::Config {
            origin: "command line".into(),
            message: "--seeds and --plugins need at least one value".into(),
        });
    }
    let sets: Vec<(String, Vec<String>)> = args
        .plugins
        .iter()
        .map(|s| Ok((s.clone(), parse_set(s)?)))
        .collect::<Result<_>>()?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "runs/compare-{}",
            args.preset.replace(['/', '.'], "_")
        ))
    });
    // The grid: hosts × plugin sets × seeds, in that order.
    let mut grid = Vec::new();
    for host in &cfg.methods {
        if !omuda::METHOD_NAMES.contains(&host.as_str()) {
            return Err(Error::Config {
                origin: "methods".into(),
                message: format!(
                    "unknown method {host:?}; available: {}",
                    omuda::METHOD_NAMES.join(", ")
                ),
            });
        }
        if matches!(host.as_str(), "source_only" | "oracle") {
            if let Some((label, _)) = sets.iter().find(|(_, n)| !n.is_empty()) {
                return Err(Error::Config {
                    origin: "--plugins".into(),
                    message: format!(
                        "plugin set {label:?} cannot attach to {host:?}: the plugins act on the \
                         target side of self-training, which {host} does not have"
                    ),
                });
            }
        }
        for (label, names) in &sets {
            for &seed in &args.seeds {
                let mut run_cfg = cfg.clone();
                run_cfg.seed = seed;
                run_cfg.methods = vec![host.clone()];
                run_cfg.plugins = names.clone();
                run_cfg.out = out.join(host).join(label).join(format!("seed_{seed}"));
                grid.push(Cell {
                    index: grid.len(),
                    host: host.clone(),
                    label: label.clone(),
                    seed,
                    cfg: run_cfg,
                });
            }
        }
    }
    if args.list {
        for c in &grid {
            let state = if finished_record(&c.cfg)?.is_some() {
                "done"
            } else if c.cfg.out.join("claim").exists() {
                "claimed"
            } else {
                "to do"
            };
            println!(
                "{}\t{}\t{}\t{}\t{}\t{state}",
                c.index,
                c.host,
                c.label,
                c.seed,
                c.cfg.out.display()
            );
        }
        return Ok(());
    }
    let device = omuda::core::device::device_from_str(&cfg.device, "device")?;
    if !args.collect {
        for c in &grid {
            if !selected(&args, c.index)? {
                continue;
            }
            if finished_record(&c.cfg)?.is_some() {
                super::note!(
                    "{}: reusing {}",
                    c.display(),
                    c.cfg.out.join("run.json").display()
                );
                continue;
            }
            let Some(_claim) = Claim::take(&c.cfg.out)? else {
                super::note!("{}: claimed by another process, skipped", c.display());
                continue;
            };
            // Another process may have finished it between the check and the claim.
            if finished_record(&c.cfg)?.is_some() {
                continue;
            }
            if c.cfg.out.join("run.json").is_file() {
                super::note!(
                    "{}: {} has another configuration; the run is trained again",
                    c.display(),
                    c.cfg.out.join("run.json").display()
                );
            }
            run_one(&c.host, &c.label, &c.cfg, &device)?;
        }
    }
    for host in cfg.methods.clone() {
        let start = Instant::now();
        let cells: Vec<&Cell> = grid.iter().filter(|c| c.host == host).collect();
        let mut missing = Vec::new();
        let mut records: Vec<Vec<RunRecord>> = Vec::new();
        for (label, _) in &sets {
            let mut per_seed = Vec::new();
            for c in cells.iter().filter(|c| &c.label == label) {
                match finished_record(&c.cfg)? {
                    Some(r) => per_seed.push(r),
                    None => missing.push(format!("{} ({})", c.index, c.display())),
                }
            }
            records.push(per_seed);
        }
        if !missing.is_empty() {
            println!(
                "{host}: {} of {} runs finished; missing: {}. Tables are written when all have finished (`--collect`).",
                cells.len() - missing.len(),
                cells.len(),
                missing.join(", ")
            );
            continue;
        }
        let rows = summarise(&sets, &records, &args.seeds)?;
        let class_names = records[0][0].target_test.class_names.clone();
        let dir = out.join(&host);
        let md = markdown(
            &host,
            &args.preset,
            cfg.train.iters,
            &args.seeds,
            &class_names,
            &rows,
        );
        write_atomic(&dir.join("compare.md"), md.as_bytes())?;
        write_json(
            &dir.join("compare.json"),
            &CompareJson {
                host: &host,
                preset: &args.preset,
                iters: cfg.train.iters,
                seeds: &args.seeds,
                class_names: &class_names,
                baseline: &rows[0].plugins,
                rows: &rows,
            },
        )?;
        charts(&dir, &host, &class_names, &rows, &records)?;
        println!("{md}");
        println!(
            "written: {}/compare.md, compare.json, compare_gains.png, compare_curves.png ({:.0} s)",
            dir.display(),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The record of a finished run in `cfg.out`, if it was written with the
/// same configuration (silent: `--list` and the collect step call it too).
fn finished_record(cfg: &RunConfig) -> Result<Option<RunRecord>> {
    let record_path = cfg.out.join("run.json");
    if !record_path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&record_path).map_err(|e| Error::io(&record_path, e))?;
    let rec: RunRecord =
        serde_json::from_str(&text).map_err(|e| Error::file(&record_path, e.to_string()))?;
    Ok(same_run(&rec.config, cfg)?.then_some(rec))
}

/// Whether a run stored with configuration `stored` (TOML) is the run `cfg`
/// asks for: the same configuration once the settings of plugins the run
/// does not attach ([`RunConfig::without_unused_plugin_settings`]) and the
/// record of `--set` overrides (how the values were given, not what they
/// are) are set aside.
fn same_run(stored: &str, cfg: &RunConfig) -> Result<bool> {
    let Ok(stored) = RunConfig::from_toml_str(stored, "run.json") else {
        return Ok(false);
    };
    let identity = |c: &RunConfig| -> Result<String> {
        let mut c = c.without_unused_plugin_settings();
        c.overrides.clear();
        c.to_toml()
    };
    Ok(identity(&stored)? == identity(cfg)?)
}

/// Train and evaluate one (plugin set, seed) into `cfg.out`.
fn run_one(host: &str, label: &str, cfg: &RunConfig, device: &Device) -> Result<RunRecord> {
    let dir = cfg.out.clone();
    let record_path = dir.join("run.json");
    let config = cfg.to_toml()?;
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let method = build_method(host, cfg, device)?;
    #[allow(unused_mut)]
    let mut method = omuda::attach_plugins(method, cfg)?;
    #[cfg(feature = "test-faults")]
    super::faults::attach_step_faults(&mut method, cfg.seed)?;
    method.set_skip_nonfinite(cfg.train.nonfinite == NonFinite::Skip);
    let mut loader = omuda::run::build_batch_source(cfg, host, device)?;
    let display = format!("{host} [{label}] seed {}", cfg.seed);
    // An interrupted earlier run of this cell continues from its latest
    // checkpoint when that was written with this configuration (exactly, as
    // `omuda train --resume`); otherwise what it left is replaced.
    checkpoint::clean_temporaries(&dir)?;
    let from = match checkpoint::latest(&dir)? {
        Some((_, ck)) => {
            let sidecar = RunSidecar::read(&ck)?;
            same_run(&sidecar.config, cfg)?.then_some(ck)
        }
        None => None,
    };
    if from.is_none() {
        clear_outputs(&dir, &[])?;
    }
    let mut settings = recorder_settings(host, &display, &dir, cfg)?;
    settings.log_format = super::log_format();
    settings.resume_command = "the same `omuda compare` command (finished runs are reused)".into();
    let obs = RunRecorder::new(settings)?.with_debug_images(Box::new(|path, debug| {
        omuda::visual::debug_grid(path, debug)
    }));
    #[cfg(feature = "test-faults")]
    let obs = obs.with_interruption(super::faults::interruption()?);
    let mut obs = obs;
    match &from {
        Some(ck) => {
            let sidecar = checkpoint::load_checkpoint(ck, &mut method, &mut loader)?;
            obs.resume_from(ck, &sidecar)?;
            super::note!(
                "{display}: resuming from {} (iteration {}/{})",
                ck.display(),
                sidecar.iteration,
                cfg.train.iters
            );
        }
        None => super::note!("{display}: training {} iterations", cfg.train.iters),
    }
    obs.open_logs()?;
    let eval_seconds = obs.eval_seconds.clone();
    let selection = selection_split(cfg);
    let evaluate = |m: &dyn UdaMethod, split: TargetSplit| -> Result<MiouReport> {
        let t0 = Instant::now();
        let r = evaluate_target(cfg, split, device, &|x| Ok(m.predict(x)?));
        eval_seconds.set(eval_seconds.get() + t0.elapsed().as_secs_f64());
        r
    };
    // The loop of `omuda train`: one batch per step in loader order, a dev
    // evaluation, checkpoint and debug image at the configured intervals.
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
        &mut |m: &dyn UdaMethod| evaluate(m, selection),
        &mut obs,
    );
    obs.finish();
    if let Err(e) = fitted {
        return Err(obs.fail(e));
    }
    let train_seconds = obs.train_seconds();
    obs.save(&dir.join(FINAL_DIR), &method, &loader, false)?;
    let target = evaluate(&method, TargetSplit::Test)?;
    let dev = evaluate(&method, TargetSplit::Dev)?;
    let selected = match selection {
        TargetSplit::Dev => &dev,
        TargetSplit::Test => &target,
    };
    // A resume from a checkpoint written after the final evaluation already holds it.
    obs.curve.retain(|(i, _)| *i != cfg.train.iters);
    obs.curve.push((cfg.train.iters, selected.miou));
    obs.log_eval(cfg.train.iters, selected)?;
    obs.update_best(cfg.train.iters, selected, &method, &loader)?;
    let curve = obs.curve.clone();
    super::note!(
        "{display}: target-test mIoU {:.2}, target-dev {:.2} ({train_seconds:.0} s of training)",
        target.miou.unwrap_or(f64::NAN),
        dev.miou.unwrap_or(f64::NAN)
    );
    let rec = RunRecord {
        host: host.into(),
        plugins: label.into(),
        seed: cfg.seed,
        iters: cfg.train.iters,
        train_seconds,
        target_curve: curve,
        target_test: target,
        target_dev: dev,
        config,
    };
    write_json(&record_path, &rec)?;
    Ok(rec)
}

/// Two-sided 5 % critical value of Student's t with `df` degrees of freedom.
pub fn t_critical_05(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        d if d <= 30 => T[d - 1],
        _ => 1.96,
    }
}

/// Paired comparison of `row` against `base` (same seeds, same order).
pub fn paired_gain(row: &[f64], base: &[f64]) -> PairedGain {
    let diffs: Vec<f64> = row.iter().zip(base).map(|(a, b)| a - b).collect();
    let n = diffs.len();
    let (m, s) = (mean(&diffs), std(&diffs));
    let wins = diffs.iter().filter(|&&d| d > 0.0).count();
    let t = (n >= 2 && s > 0.0).then(|| m / (s / (n as f64).sqrt()));
    let signs: String = diffs
        .iter()
        .map(|d| {
            if *d > 0.0 {
                "+"
            } else if *d < 0.0 {
                "−"
            } else {
                "0"
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let note = match t {
        None if n < 2 => "n/a (1 seed)".to_string(),
        None => {
            format!("paired t-test undefined: the same difference on every seed; signs {signs}")
        }
        Some(t) => {
            let crit = t_critical_05(n - 1);
            let verdict = if t.abs() > crit {
                "significant"
            } else {
                "not significant"
            };
            let per_seed = if n >= 3 {
                format!("; signs {signs}")
            } else {
                String::new()
            };
            format!(
                "{verdict} at 5 % (paired t-test: t = {t:.2}, df = {}, critical {crit:.2}); better on {wins}/{n} seeds{per_seed}",
                n - 1
            )
        }
    };
    PairedGain {
        mean: m,
        std: s,
        diffs,
        wins,
        t,
        note,
        per_class: Vec::new(),
    }
}

fn summarise(
    sets: &[(String, Vec<String>)],
    records: &[Vec<RunRecord>],
    seeds: &[u64],
) -> Result<Vec<Row>> {
    let miou = |r: &RunRecord| -> Result<f64> {
        r.target_test
            .miou
            .ok_or_else(|| Error::msg(format!("run {} seed {}: no target mIoU", r.plugins, r.seed)))
    };
    let k = records[0][0].target_test.per_class_iou.len();
    let class_mean = |recs: &[RunRecord]| -> Vec<Option<f64>> {
        (0..k)
            .map(|c| {
                let v: Vec<f64> = recs
                    .iter()
                    .filter_map(|r| r.target_test.per_class_iou.get(c).copied().flatten())
                    .collect();
                (v.len() == recs.len()).then(|| mean(&v))
            })
            .collect()
    };
    let base: Vec<f64> = records[0].iter().map(miou).collect::<Result<_>>()?;
    let base_class = class_mean(&records[0]);
    let mut rows = Vec::new();
    for (i, ((label, _), recs)) in sets.iter().zip(records).enumerate() {
        let m: Vec<f64> = recs.iter().map(miou).collect::<Result<_>>()?;
        let per_class = class_mean(recs);
        let gain = (i > 0).then(|| {
            let mut g = paired_gain(&m, &base);
            g.per_class = per_class
                .iter()
                .zip(&base_class)
                .map(|(a, b)| Some((*a)? - (*b)?))
                .collect();
            g
        });
        rows.push(Row {
            plugins: label.clone(),
            seeds: seeds.to_vec(),
            mean: mean(&m),
            std: std(&m),
            miou: m,
            per_class_iou: per_class,
            gain,
            train_seconds_mean: mean(&recs.iter().map(|r| r.train_seconds).collect::<Vec<_>>()),
        });
    }
    Ok(rows)
}

fn markdown(
    host: &str,
    preset: &str,
    iters: usize,
    seeds: &[u64],
    class_names: &[String],
    rows: &[Row],
) -> String {
    let mut s = format!(
        "# {host}: plugin comparison\n\npreset `{preset}`, {iters} iterations, seeds {:?}; target-test mIoU (%). \
         Gains are paired over seeds against the first row (`{}`).\n\n",
        seeds, rows[0].plugins
    );
    let seed_cols: Vec<String> = seeds.iter().map(|s| format!("seed {s}")).collect();
    s += &format!(
        "| plugins | {} | mean ± std | gain ± std | significance | train time (s/run) |\n",
        seed_cols.join(" | ")
    );
    s += &format!("|---|{}---|---|---|---:|\n", "---:|".repeat(seeds.len()));
    // A spread of one seed is not measured.
    let spread = |v: f64| {
        if seeds.len() < 2 {
            "n/a".to_string()
        } else {
            format!("{v:.2}")
        }
    };
    for r in rows {
        let per: Vec<String> = r.miou.iter().map(|v| format!("{v:.2}")).collect();
        let (gain, note) = match &r.gain {
            Some(g) => (
                format!("{:+.2} ± {}", g.mean, spread(g.std)),
                g.note.clone(),
            ),
            None => ("baseline".into(), String::new()),
        };
        s += &format!(
            "| {} | {} | {:.2} ± {} | {gain} | {note} | {:.0} |\n",
            r.plugins,
            per.join(" | "),
            r.mean,
            spread(r.std),
            r.train_seconds_mean
        );
    }
    s += "\nPer-class IoU (%), mean over seeds:\n\n";
    s += &format!(
        "| plugins | {} |\n|---|{}\n",
        class_names.join(" | "),
        "---:|".repeat(class_names.len())
    );
    let cell = |v: &Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "n/a".into());
    for r in rows {
        s += &format!(
            "| {} | {} |\n",
            r.plugins,
            r.per_class_iou
                .iter()
                .map(cell)
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    // Per-class paired gains, one column per plugin set: which classes each
    // set helps or hurts.
    let gained: Vec<&Row> = rows.iter().filter(|r| r.gain.is_some()).collect();
    if !gained.is_empty() {
        s += &format!(
            "\nPer-class IoU gain over `{}` (points, mean over seeds of the paired differences):\n\n",
            rows[0].plugins
        );
        s += &format!(
            "| class | {} |\n|---|{}\n",
            gained
                .iter()
                .map(|r| r.plugins.as_str())
                .collect::<Vec<_>>()
                .join(" | "),
            "---:|".repeat(gained.len())
        );
        for (c, name) in class_names.iter().enumerate() {
            let cells: Vec<String> = gained
                .iter()
                .map(|r| {
                    r.gain
                        .as_ref()
                        .and_then(|g| g.per_class.get(c).copied().flatten())
                        .map(|v| format!("{v:+.1}"))
                        .unwrap_or_else(|| "n/a".into())
                })
                .collect();
            s += &format!("| {name} | {} |\n", cells.join(" | "));
        }
    }
    s
}

fn charts(
    dir: &Path,
    host: &str,
    class_names: &[String],
    rows: &[Row],
    records: &[Vec<RunRecord>],
) -> Result<()> {
    // Per-class gains of the last row over the baseline.
    if let Some(last) = rows.iter().skip(1).last() {
        if let Some(g) = &last.gain {
            let (labels, values): (Vec<String>, Vec<f64>) = class_names
                .iter()
                .zip(&g.per_class)
                .filter_map(|(n, v)| v.map(|v| (n.clone(), v)))
                .unzip();
            if !labels.is_empty() {
                let title = format!(
                    "{host}: per-class IoU gain of {} over {} (points)",
                    last.plugins, rows[0].plugins
                );
                omuda::plot::sorted_hbar_chart(
                    &dir.join("compare_gains.png"),
                    &title,
                    &format!(
                        "IoU gain (points, mean over {} seed{})",
                        g.diffs.len(),
                        if g.diffs.len() == 1 { "" } else { "s" }
                    ),
                    &labels,
                    &values,
                )?;
            }
        }
    }
    // Target-dev mIoU over iterations: mean over seeds at each evaluated
    // iteration, with a band of ± one standard deviation (with 2+ seeds).
    let series: Vec<omuda::plot::BandSeries> = rows
        .iter()
        .zip(records)
        .map(|(r, recs)| {
            let pts: Vec<(f64, f64, f64)> = recs[0]
                .target_curve
                .iter()
                .filter_map(|&(it, _)| {
                    let v: Vec<f64> = recs
                        .iter()
                        .filter_map(|rec| {
                            rec.target_curve
                                .iter()
                                .find(|p| p.0 == it)
                                .and_then(|p| p.1)
                        })
                        .collect();
                    let spread = std(&v);
                    (v.len() == recs.len()).then(|| (it as f64, mean(&v), spread))
                })
                .collect();
            (r.plugins.clone(), pts)
        })
        .collect();
    let seeds = records.first().map_or(0, Vec::len);
    let band = if seeds > 1 {
        format!(", band ± std over {seeds} seeds")
    } else {
        String::new()
    };
    omuda::plot::line_chart_band(
        &dir.join("compare_curves.png"),
        &format!("{host}: target-dev mIoU over training{band}"),
        "iteration",
        "mIoU (%)",
        &series,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_gain_and_t_test() {
        let g = paired_gain(&[22.0, 23.0, 24.5], &[20.0, 21.5, 22.0]);
        assert_eq!(g.diffs, [2.0, 1.5, 2.5]);
        assert!((g.mean - 2.0).abs() < 1e-12);
        assert!((g.std - 0.5).abs() < 1e-12);
        // t = 2 / (0.5 / √3) = 6.93 > 4.303 (df 2).
        assert!((g.t.unwrap() - 6.928203).abs() < 1e-5);
        assert!(g.note.starts_with("significant"), "{}", g.note);
        assert_eq!(g.wins, 3);
        let g = paired_gain(&[21.0, 20.0, 22.5], &[20.0, 21.5, 22.0]);
        assert!(g.note.starts_with("not significant"), "{}", g.note);
        let g = paired_gain(&[21.0], &[20.0]);
        assert!(g.t.is_none() && g.note.contains("1 seed"));
        assert_eq!(t_critical_05(2), 4.303);
        assert_eq!(t_critical_05(100), 1.96);
    }

    #[test]
    fn plugin_sets_and_presets() {
        assert!(parse_set("none").unwrap().is_empty());
        assert_eq!(parse_set("cam+fdm+cdm").unwrap(), ["cam", "fdm", "cdm"]);
        assert!(parse_set("cam+mixup")
            .unwrap_err()
            .to_string()
            .contains("mixup"));
        let cfg = preset_config("synth-dacs").unwrap();
        assert_eq!(cfg.methods, ["dacs"]);
        assert_eq!(cfg.train.iters, RunConfig::default().train.iters);
    }
}
