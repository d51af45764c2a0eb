//! `omuda prepare`: validate a dataset on disk, optionally convert its labels
//! to trainId PNGs, and write the RCS statistics files.

use std::io::IsTerminal;
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use omuda::core::data::datasets::DatasetKind;
use omuda::core::data::prepare::{prepare, PrepareOptions};
use omuda::{Error, Result};

#[derive(clap::Args)]
pub struct PrepareArgs {
    /// Dataset root (for --kind folder: the dataset's TOML spec file).
    pub root: PathBuf,
    /// Dataset layout: gta, synthia, cityscapes or folder.
    #[arg(long)]
    pub kind: String,
    /// Write `*_labelTrainIds.png` next to every label that holds raw ids
    /// (GTA and Cityscapes label ids, SYNTHIA 16-bit labels).
    #[arg(long)]
    pub convert: bool,
    /// Read only the image headers (sizes) instead of decoding every image.
    #[arg(long)]
    pub quick: bool,
    /// Cityscapes splits to check, comma-separated (statistics come from train).
    #[arg(long, value_delimiter = ',', default_value = "train,val")]
    pub splits: Vec<String>,
    /// Folder for the statistics files (default: the dataset root).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Leave the frames with a problem out instead of failing: list them in
    /// `excluded_frames.json` in the dataset root (training and evaluation
    /// then skip them, and say so) and write the statistics of the others.
    #[arg(long)]
    pub skip_bad: bool,
}

pub fn run(args: PrepareArgs) -> Result<()> {
    let kind = DatasetKind::parse(&args.kind)?;
    let opts = PrepareOptions {
        convert: args.convert,
        check_images: !args.quick,
        splits: args.splits,
        out_dir: args.out,
        skip_bad: args.skip_bad,
    };
    let bar = ProgressBar::hidden();
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(format!("checking {}", kind.name()));
    }
    let report = prepare(
        kind,
        &args.root,
        &opts,
        &|n| bar.set_length(n as u64),
        &|| bar.inc(1),
    )?;
    bar.finish_and_clear();
    eprintln!(
        "{} frames checked at {}{}",
        report.frames,
        args.root.display(),
        if report.converted > 0 {
            format!(", {} labels converted to trainIds", report.converted)
        } else {
            String::new()
        }
    );
    if let Some(old) = &report.removed_exclusions {
        eprintln!(
            "no problem found: removed {}, written by an earlier --skip-bad",
            old.display()
        );
    }
    for (path, problem) in &report.problems {
        eprintln!("{}: {problem}", path.display());
    }
    if let Some((list, frames)) = &report.excluded {
        eprintln!(
            "--skip-bad: {} problem(s); {frames} frame(s) left out, listed in {}",
            report.problems.len(),
            list.display()
        );
    } else if !report.problems.is_empty() {
        let whole = report
            .problems
            .iter()
            .filter(|(p, _)| !omuda::core::data::prepare::is_frame_problem(p))
            .count();
        if args.skip_bad && whole > 0 {
            eprintln!(
                "--skip-bad leaves out frames only; {whole} problem(s) above concern the dataset as a whole"
            );
        }
        return Err(Error::msg(format!(
            "{} problem(s) found in the {} dataset at {}; statistics not written",
            report.problems.len(),
            kind.name(),
            args.root.display()
        )));
    }
    if let Some(dir) = &report.stats_dir {
        eprintln!(
            "wrote sample_class_stats.json, sample_class_stats_dict.json, samples_with_class.json ({} files) to {}",
            report.stats.len(),
            dir.display()
        );
    }
    Ok(())
}
