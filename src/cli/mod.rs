//! Command-line parsing and the commands.

mod eval;
mod report;
mod train;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use omuda::{Result, RunConfig};

#[derive(Parser)]
#[command(name = "omuda", version, about = "Unsupervised domain adaptation for semantic segmentation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train one or more methods and evaluate them on the target (and source) val split.
    /// With no arguments: source-only then DACS on the built-in synthetic pair.
    Train(TrainArgs),
    /// Evaluate a saved checkpoint.
    Eval(EvalArgs),
    /// Print the fully resolved configuration.
    Config(ConfigArgs),
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// TOML run configuration (default: the built-in synthetic benchmark).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Methods to train, comma-separated (source_only, dacs, oracle).
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
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Checkpoint folder written by `omuda train` (`<out>/<method>/checkpoint`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Configuration (default: the `config.toml` saved in the checkpoint).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where to write `metrics.json` (default: beside the checkpoint).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct ConfigArgs {
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn load_config(path: Option<&PathBuf>) -> Result<RunConfig> {
    match path {
        Some(p) => RunConfig::from_file(p),
        None => Ok(RunConfig::default()),
    }
}

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Config(args) => {
            print!("{}", load_config(args.config.as_ref())?.to_toml()?);
            Ok(())
        }
    }
}
