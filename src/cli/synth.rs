//! `omuda synth export`: the built-in synthetic pair written to disk in the
//! GTA5, SYNTHIA or Cityscapes layout (`omuda_core::data::synth_export`).

use std::path::PathBuf;
use std::time::Instant;

use omuda::core::data::synth_export::{data_config_snippet, export_synth, ExportLayout};
use omuda::Result;

#[derive(clap::Args)]
pub struct SynthArgs {
    #[command(subcommand)]
    pub command: SynthCommand,
}

#[derive(clap::Subcommand)]
pub enum SynthCommand {
    /// Write the built-in pair in a real dataset's layout and label encoding:
    /// `gta` or `synthia` (the source train split), `cityscapes` (the target's
    /// train, dev and test splits as `train`, `dev`, `val`). Prints the
    /// `[data]` tables that train on it.
    Export(ExportArgs),
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Folder to create (it must not exist, or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// gta, synthia or cityscapes.
    #[arg(long)]
    pub layout: String,
    /// A preset or TOML run configuration whose `[data.synth]` and
    /// `data.dataset_seed` are exported (default: the built-in benchmark).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn run(args: SynthArgs) -> Result<()> {
    match args.command {
        SynthCommand::Export(a) => export(a),
    }
}

fn export(args: ExportArgs) -> Result<()> {
    let layout = ExportLayout::parse(&args.layout)?;
    let cfg = super::load_config(args.config.as_ref())?;
    let start = Instant::now();
    super::note!(
        "writing the built-in pair ({}x{}, dataset seed {}) in the {} layout to {}",
        cfg.data.synth.width,
        cfg.data.synth.height,
        cfg.data.dataset_seed,
        layout.name(),
        args.out.display()
    );
    let report = export_synth(
        &cfg.data.synth,
        cfg.data.dataset_seed,
        layout,
        &args.out,
        &|| {},
    )?;
    let splits: Vec<String> = report
        .splits
        .iter()
        .map(|(s, n)| {
            if s.is_empty() {
                format!("{n} frames")
            } else {
                format!("{s}: {n}")
            }
        })
        .collect();
    println!(
        "wrote {} ({}) in {:.1} s",
        report.dir.display(),
        splits.join(", "),
        start.elapsed().as_secs_f64()
    );
    if report.void_pixels > 0 {
        println!(
            "{} labelled pixels of terrain, truck or train (classes SYNTHIA lacks) were written as void (ignore)",
            report.void_pixels
        );
    }
    println!(
        "\n# the [data] tables that train on it (with data.dataset = \"files\"):\n{}",
        data_config_snippet(layout, &report.dir, &cfg.data.synth)
    );
    Ok(())
}
