//! `omuda weights inspect`: the tensors of a safetensors checkpoint, their
//! shapes, and what a chosen model would do with each (load, under which name;
//! ignore; reject), plus the model tensors the file lacks.

use std::path::PathBuf;

use omuda::core::nn::segmentor::SEGMENTOR_NAMES;
use omuda::core::nn::weights::{map_checkpoint, model_tensor_shapes, plan_load, WeightSource};
use omuda::core::nn::ModelConfig;
use omuda::{Error, Result};

#[derive(clap::Args)]
pub struct WeightsArgs {
    #[command(subcommand)]
    pub command: WeightsCommand,
}

#[derive(clap::Subcommand)]
pub enum WeightsCommand {
    /// List the tensors of a checkpoint and which ones a model would use.
    /// Exits non-zero, after listing every problem, when a strict load would fail.
    Inspect(InspectArgs),
}

#[derive(clap::Args)]
pub struct InspectArgs {
    /// A `.safetensors` file, a checkpoint folder of `omuda train` (its
    /// `student.safetensors`; the model and class count come from its
    /// `config.toml` unless given), `hf:org/name[/file][@revision]` or `builtin:NAME`.
    pub weights: String,
    /// Model to match against (default: `model.name` of --config, else the default model).
    #[arg(long)]
    pub model: Option<String>,
    /// Number of classes of the model (default: `model.num_classes` of --config).
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// Run configuration whose `[model]` section is used.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn run(args: WeightsArgs) -> Result<()> {
    match args.command {
        WeightsCommand::Inspect(a) => inspect(a),
    }
}

fn inspect(mut args: InspectArgs) -> Result<()> {
    let dir = PathBuf::from(&args.weights);
    if dir.is_dir() {
        let student = dir.join("student.safetensors");
        if !student.is_file() {
            return Err(Error::msg(format!(
                "{}: a folder, but not a checkpoint of `omuda train` (no student.safetensors)",
                dir.display()
            )));
        }
        let config = dir.join("config.toml");
        if args.config.is_none() && config.is_file() {
            args.config = Some(config);
        }
        args.weights = student.display().to_string();
    }
    let mut model_cfg: ModelConfig = super::load_config(args.config.as_ref())?.model;
    if let Some(m) = args.model {
        model_cfg.name = m;
    }
    if let Some(k) = args.num_classes {
        model_cfg.num_classes = k;
    }
    let source = WeightSource::parse(&args.weights)?;
    let tensors = source.read()?;
    let file_info: Vec<(String, String, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), format!("{:?}", t.dtype()), t.dims().to_vec()))
        .collect();
    let total: usize = tensors.iter().map(|(_, t)| t.elem_count()).sum();

    let model_shapes = model_tensor_shapes(&model_cfg).map_err(|e| {
        Error::msg(format!(
            "model {:?}: {e} (valid names: {})",
            model_cfg.name,
            SEGMENTOR_NAMES.join(", ")
        ))
    })?;
    let (mapped, ignored) = map_checkpoint(tensors)?;
    let report = plan_load(&args.weights, &model_shapes, &mapped, ignored.clone());

    println!(
        "{} ({}): {} tensors, {} values",
        args.weights,
        source,
        file_info.len(),
        total
    );
    println!("model {} ({} tensors)", model_cfg.name, model_shapes.len());
    println!();
    for (name, dtype, shape) in &file_info {
        let status = status_of(name, &report, &ignored);
        println!(
            "{name:<70} {dtype:<4} {:<20} {status}",
            format!("{shape:?}")
        );
    }
    if !report.missing.is_empty() {
        println!();
        println!("model tensors not in the file:");
        for (n, shape) in &report.missing {
            println!("  {n} {shape:?}");
        }
    }
    if !report.head_kept.is_empty() {
        println!();
        println!(
            "no decode_head tensors in the file: a backbone checkpoint; the model's {} decode-head tensors keep their initial values",
            report.head_kept.len()
        );
    }
    println!();
    println!("{}", report.summary());
    if report.problem_count() > 0 {
        print!("{}", report.problems());
        let hint = if report.bad_values.is_empty() {
            format!(
                "; `model.strict = false` loads the {} that fit",
                report.loaded.len()
            )
        } else {
            String::new()
        };
        return Err(Error::msg(format!(
            "weights {}: {} problem(s) listed above: a strict load (the default) would fail{hint}",
            args.weights,
            report.problem_count()
        )));
    }
    Ok(())
}

/// What the model does with file tensor `name`.
fn status_of(
    name: &str,
    report: &omuda::core::nn::weights::LoadReport,
    ignored: &[(String, &'static str)],
) -> String {
    if let Some((_, why)) = ignored.iter().find(|(n, _)| n == name) {
        return format!("ignored ({why})");
    }
    let targets: Vec<&str> = report
        .loaded
        .iter()
        .filter(|(_, s)| s == name)
        .map(|(t, _)| t.as_str())
        .collect();
    let mut parts = Vec::new();
    if !targets.is_empty() {
        if targets == [name] {
            parts.push("used".to_string());
        } else {
            parts.push(format!("used as {}", targets.join(" + ")));
        }
    }
    for (t, s, m, _) in &report.mismatched {
        if s == name {
            parts.push(format!("SHAPE MISMATCH with {t} {m:?}"));
        }
    }
    for (s, t, _, why) in &report.unexpected {
        if s == name {
            parts.push(format!("UNEXPECTED as {t}: {why}"));
        }
    }
    if parts.is_empty() {
        "?".into()
    } else {
        parts.join("; ")
    }
}
