//! Command-line parsing and the commands.

mod bench;
mod bench_memory;
mod compare;
mod eval;
#[cfg(feature = "test-faults")]
mod faults;
mod info;
mod plot;
mod predict;
mod prepare;
mod pretrain;
mod report;
mod synth;
mod train;
mod weights;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use omuda::{Result, RunConfig};

#[derive(Parser)]
#[command(
    name = "omuda",
    version,
    about = "Unsupervised domain adaptation for semantic segmentation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Compute device for every command: cpu, cuda or cuda:N (overrides `device` in the config).
    #[arg(long, global = true)]
    device: Option<String>,
    /// Override one configuration key, e.g. `--set train.iters=200` or
    /// `--set "plugins=[\"cam\"]"` (repeatable; the value is TOML, else a string).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    set: Vec<String>,
    /// Print only results and errors (no progress, no notes).
    #[arg(long, global = true)]
    quiet: bool,
    /// Progress output: `auto` (a bar on a terminal, lines elsewhere or with
    /// TERM=dumb), `plain` (one line per log interval) or `json` (one JSON
    /// object per line).
    #[arg(long, value_enum, default_value = "auto", global = true)]
    log_format: LogFormatArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Auto,
    Plain,
    Json,
}

static LOG_FORMAT: std::sync::OnceLock<omuda::core::train::observers::LogFormat> =
    std::sync::OnceLock::new();

/// The `--log-format` of this command line.
pub fn log_format() -> omuda::core::train::observers::LogFormat {
    LOG_FORMAT.get().copied().unwrap_or_default()
}

/// `eprintln!` unless `--quiet`: progress notes, never results or errors.
macro_rules! note {
    ($($arg:tt)*) => {
        if !omuda::core::io::quiet() {
            eprintln!($($arg)*);
        }
    };
}
pub(crate) use note;

/// The `--device` flag, applied by [`load_config`] to every configuration a command loads.
static DEVICE_FLAG: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// The `--set` overrides, applied by [`load_config`] after the files.
static SET_FLAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// The `--set` overrides of this command line.
pub fn set_flags() -> &'static [String] {
    SET_FLAGS.get().map(Vec::as_slice).unwrap_or(&[])
}

#[derive(Subcommand)]
enum Command {
    /// Train one or more methods and evaluate them on the target (and source) val split.
    /// With no arguments: source-only then DACS on the built-in synthetic pair.
    Train(TrainArgs),
    /// Evaluate a saved checkpoint.
    Eval(EvalArgs),
    /// Draw training curves (losses, lr, target mIoU) of a run folder as PNG.
    Plot(plot::PlotArgs),
    /// Segment images with a saved checkpoint: colourised and trainId PNGs.
    Predict(predict::PredictArgs),
    /// Print the fully resolved configuration.
    Config(ConfigArgs),
    /// Check a dataset on disk (every image and label), optionally convert its
    /// labels to trainIds, and write the RCS statistics files.
    Prepare(prepare::PrepareArgs),
    /// Show how this binary was built (CUDA or CPU only) and open the chosen device.
    Info,
    /// Time the evaluation forward, a supervised step and a DACS iteration.
    Bench(bench::BenchArgs),
    /// Train a method alone and with plugin sets over several seeds; write
    /// compare.md / compare.json and charts (reuses finished runs).
    Compare(compare::CompareArgs),
    /// Pretrain the encoder of the `synth-*` presets on the built-in pretraining set
    /// (image-level multi-label classification; the role ImageNet plays).
    Pretrain(pretrain::PretrainArgs),
    /// Pretrained weights: `inspect` lists a checkpoint's tensors and which ones a model uses.
    Weights(weights::WeightsArgs),
    /// The built-in synthetic pair: `export` writes it in the GTA5, SYNTHIA or
    /// Cityscapes layout, for `omuda prepare` and the files loader.
    Synth(synth::SynthArgs),
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// A preset name (`omuda config list`) or a TOML run configuration
    /// (default: the built-in synthetic benchmark).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Methods to train, comma-separated (source_only, dacs, oracle, daformer,
    /// mic_dacs, mic_daformer, mic_hrda, …; see `omuda::METHOD_NAMES`).
    #[arg(long, value_delimiter = ',')]
    pub method: Option<Vec<String>>,
    /// Training iterations.
    #[arg(long)]
    pub iters: Option<usize>,
    /// Run seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Train once per seed (comma-separated) into `<out>/seed_<s>/` and write
    /// `<out>/summary.json` (mean ± std, median-seed checkpoint).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<u64>>,
    /// Continue the run in this output folder from its latest checkpoints,
    /// with its saved configuration.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Checkpoint folder written by `omuda train` (`<out>/<method>/checkpoint`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Configuration (default: the `config.toml` saved in the checkpoint).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where to write the scores as JSON (default: `eval.json` in the checkpoint folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write the target-test predictions here, one PNG per image in the
    /// dataset's colours (`<frame>.png` on disk, `test_<index>.png` on the
    /// built-in pair), like mmseg's `--show-dir`.
    #[arg(long, value_name = "DIR")]
    pub save_predictions: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct ConfigArgs {
    /// A preset name or TOML file (default: the built-in configuration).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub action: Option<ConfigAction>,
}

#[derive(Subcommand)]
pub enum ConfigAction {
    /// Print the fully resolved configuration of a preset or a TOML file.
    Show {
        /// A preset name (`omuda config list`) or a TOML configuration file.
        preset: String,
        /// Print only what differs from the preset's `base` (or from the
        /// built-in configuration when it has none).
        #[arg(long)]
        diff: bool,
    },
    /// List the presets shipped with the binary.
    List,
}

/// The configuration of `--config` (a preset name or a TOML file; default:
/// the built-in one), with the global `--device` flag applied.
pub fn load_config(path: Option<&PathBuf>) -> Result<RunConfig> {
    load_config_as(
        path.map(|p| p.to_string_lossy().into_owned()).as_deref(),
        "--config",
    )
}

/// [`load_config`] for a preset or file named by option `key`.
pub fn load_config_as(name_or_path: Option<&str>, key: &str) -> Result<RunConfig> {
    let mut cfg = omuda::layers::resolve(name_or_path, set_flags(), key)?;
    if let Some(Some(d)) = DEVICE_FLAG.get() {
        omuda::core::device::DeviceSpec::parse(d, "--device")?;
        cfg.device = d.clone();
    }
    Ok(cfg)
}

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    let _ = DEVICE_FLAG.set(cli.device.clone());
    let _ = SET_FLAGS.set(cli.set.clone());
    omuda::core::io::set_quiet(cli.quiet);
    let _ = LOG_FORMAT.set(match cli.log_format {
        LogFormatArg::Auto => omuda::core::train::observers::LogFormat::Auto,
        LogFormatArg::Plain => omuda::core::train::observers::LogFormat::Plain,
        LogFormatArg::Json => omuda::core::train::observers::LogFormat::Json,
    });
    match cli.command {
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Plot(args) => plot::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Info => info::run(cli.device.as_deref()),
        Command::Bench(args) => bench::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Weights(args) => weights::run(args),
        Command::Pretrain(args) => pretrain::run(args),
        Command::Prepare(args) => prepare::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Config(args) => match args.action {
            None => {
                print!("{}", load_config(args.config.as_ref())?.to_toml()?);
                Ok(())
            }
            Some(ConfigAction::Show {
                preset,
                diff: false,
            }) => {
                print!("{}", load_config(Some(&PathBuf::from(preset)))?.to_toml()?);
                Ok(())
            }
            Some(ConfigAction::Show { preset, diff: true }) => {
                let (own, base) = omuda::layers::with_base_tables(&preset)?;
                let d = omuda::layers::diff(&own, &base);
                print!(
                    "{}",
                    toml::to_string(&d)
                        .map_err(|e| omuda::Error::msg(format!("config to TOML: {e}")))?
                );
                Ok(())
            }
            Some(ConfigAction::List) => {
                for name in omuda::presets::preset_names() {
                    println!("{name}");
                }
                Ok(())
            }
        },
    }
}
