//! `omuda bench --memory`: the peak resident memory of each phase of a run,
//! each phase in a fresh process (this binary, started again with a hidden
//! `--memory-phase`), so that no phase inherits what another left in the
//! allocator. A phase builds its networks, notes the resident memory, runs
//! twice, and reports the process's peak (Linux `VmHWM`). The forward phases
//! hold the same networks (a source-only method; the forward runs on views
//! of its weights), so their peaks compare directly:
//!
//! - the forward on graph-free weights (detached views: what evaluation,
//!   prediction, the teacher and frozen encoders run);
//! - `predict` (what `omuda eval` and `omuda predict` run per batch: the
//!   graph-free forward plus the logits at input size);
//! - the same forward on the trainable weights, which records a graph and
//!   holds every intermediate until the output is dropped (what evaluation
//!   ran before it moved to detached weights);
//! - a supervised training step, and one iteration of the UDA method.

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use omuda::core::data::batch::UdaBatch;
use omuda::core::nn::detached::detached_model;
use omuda::core::nn::{build_segmentor, ForwardCtx};
use omuda::core::train::ChaCha8Rng;
use omuda::{build_method, Error, Result, RunConfig, UdaMethod};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// The phases, in the order they are reported.
pub const PHASES: [(&str, &str); 5] = [
    ("graph-free", "forward, graph-free weights"),
    ("predict", "predict (omuda eval / predict)"),
    ("graph", "forward, trainable weights (records a graph)"),
    ("train-step", "supervised training step"),
    ("uda", "UDA iteration"),
];

/// The line prefix a phase process reports its row with.
const ROW_PREFIX: &str = "omuda-bench-memory-row ";

/// One measured phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryRow {
    pub phase: String,
    /// Resident memory with the phase's networks built, before it ran, MiB.
    pub before_mib: f64,
    /// Peak resident memory during the phase, MiB.
    pub peak_mib: f64,
}

impl MemoryRow {
    /// What the phase added on top of what was resident when it started.
    pub fn added_mib(&self) -> f64 {
        self.peak_mib - self.before_mib
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    pub model: String,
    pub crop: [usize; 2],
    pub batch: usize,
    pub method: String,
    pub rows: Vec<MemoryRow>,
    /// Peak of `predict` over the peak of the graph-free forward.
    pub ratio_predict_to_graph_free: f64,
    /// Peak of the graph-recording forward over the graph-free forward.
    pub ratio_graph_to_graph_free: f64,
}

fn status_mib(key: &str) -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| {
        Error::msg(format!(
            "omuda bench --memory: /proc/self/status (Linux only): {e}"
        ))
    })?;
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .ok_or_else(|| {
            Error::msg(format!(
                "omuda bench --memory: no {key} in /proc/self/status"
            ))
        })
}

/// Runs one phase in this process (the child side) and prints its row.
pub fn run_phase(
    phase: &str,
    cfg: &RunConfig,
    method: &str,
    batch: &UdaBatch,
    device: &Device,
) -> Result<()> {
    let label = PHASES
        .iter()
        .find(|p| p.0 == phase)
        .map(|p| p.1)
        .ok_or_else(|| Error::msg(format!("omuda bench: unknown memory phase {phase:?}")))?;
    let x = &batch.source_image;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let row = |before_mib: f64| -> Result<MemoryRow> {
        Ok(MemoryRow {
            phase: if phase == "uda" {
                format!("{method} iteration")
            } else {
                label.into()
            },
            before_mib,
            peak_mib: status_mib("VmHWM:")?,
        })
    };
    let row = match phase {
        "uda" => {
            let mut uda = build_method(method, cfg, device)?;
            let before = status_mib("VmRSS:")?;
            for _ in 0..2 {
                uda.train_step(batch)?;
            }
            row(before)?
        }
        _ => {
            let mut supervised = build_method("source_only", cfg, device)?;
            let vars = supervised.student_vars().clone();
            let graph_free = detached_model(&cfg.model, &vars, device)?;
            let trainable = build_segmentor(
                &cfg.model,
                VarBuilder::from_varmap(&vars, DType::F32, device),
            )?;
            let before = status_mib("VmRSS:")?;
            for _ in 0..2 {
                match phase {
                    "graph-free" => drop(graph_free.forward(x, &mut ForwardCtx::eval(&mut rng))?),
                    "graph" => drop(trainable.forward(x, &mut ForwardCtx::eval(&mut rng))?),
                    "predict" => drop(supervised.predict(x)?),
                    _ => drop(supervised.train_step(batch)?),
                }
            }
            row(before)?
        }
    };
    let json = serde_json::to_string(&row).map_err(|e| Error::msg(e.to_string()))?;
    println!("{ROW_PREFIX}{json}");
    Ok(())
}

/// Runs every phase in its own process (the parent side).
pub fn run(cfg: &RunConfig, method: &str, crop: [usize; 2], batch: usize) -> Result<MemoryReport> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::msg(format!("omuda bench: cannot find its own binary: {e}")))?;
    let mut rows = Vec::new();
    for (phase, label) in PHASES {
        let out = std::process::Command::new(&exe)
            .args(std::env::args_os().skip(1))
            .args(["--memory-phase", phase])
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| Error::msg(format!("omuda bench --memory: cannot start {label}: {e}")))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix(ROW_PREFIX))
            .filter(|_| out.status.success())
            .ok_or_else(|| {
                Error::msg(format!(
                    "omuda bench --memory: the {label} phase failed ({})",
                    out.status
                ))
            })?;
        let row: MemoryRow = serde_json::from_str(line)
            .map_err(|e| Error::msg(format!("omuda bench --memory: {label}: {e}")))?;
        eprintln!(
            "bench --memory: {}: peak {:.0} MiB (+{:.0})",
            row.phase,
            row.peak_mib,
            row.added_mib()
        );
        rows.push(row);
    }
    let peak = |i: usize| rows[i].peak_mib;
    Ok(MemoryReport {
        model: cfg.model.name.clone(),
        crop,
        batch,
        method: method.into(),
        ratio_predict_to_graph_free: peak(1) / peak(0),
        ratio_graph_to_graph_free: peak(2) / peak(0),
        rows,
    })
}

pub fn print(r: &MemoryReport) {
    println!(
        "peak resident memory: {}, {}x{}, batch {} (MiB; added = peak − resident with the phase's networks built)",
        r.model, r.crop[0], r.crop[1], r.batch
    );
    println!("{:<48} {:>10} {:>10}", "phase", "peak", "added");
    for row in &r.rows {
        println!(
            "{:<48} {:>10.0} {:>10.0}",
            row.phase,
            row.peak_mib,
            row.added_mib()
        );
    }
    println!(
        "predict / graph-free forward: {:.2}x; graph-recording / graph-free forward: {:.2}x (peaks)",
        r.ratio_predict_to_graph_free, r.ratio_graph_to_graph_free
    );
}
