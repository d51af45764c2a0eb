//! `omuda prepare`: validate every frame of a dataset, optionally convert its
//! labels to trainId PNGs, and write the RCS statistics files (as
//! `save_class_stats` in `lhoyer/MIC seg/tools/convert_datasets/gta.py`,
//! `synthia.py` and `cityscapes.py`). All problems are collected and returned,
//! never only the first.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::datasets::{Dataset, DatasetKind, Frame};
use super::labels::class_counts;
use super::png_io;
use super::stats::{write_stats, FrameStats};
use crate::{Error, Result};

/// One frame's check: its statistics (if labels were read) and whether a
/// converted label was written, or every (file, problem) found.
type FrameCheck = std::result::Result<(Option<FrameStats>, bool), Vec<(PathBuf, String)>>;

#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Write `*_labelTrainIds.png` next to each label that holds raw ids.
    pub convert: bool,
    /// Decode every image fully (finds corrupt or truncated image data);
    /// otherwise only the image header is read for its size.
    pub check_images: bool,
    /// Cityscapes splits to validate; statistics come from `train` only (as
    /// in the reference converter). Ignored for the other kinds.
    pub splits: Vec<String>,
    /// Where to write the statistics (default: the dataset root).
    pub out_dir: Option<PathBuf>,
    /// Leave the frames with a problem out instead of failing: list them in
    /// the dataset root ([`super::exclusions`]) and write the statistics of
    /// the others. Problems that are not about one frame's file (a missing
    /// folder, no images at all) still fail.
    pub skip_bad: bool,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self {
            convert: false,
            check_images: true,
            splits: vec!["train".into(), "val".into()],
            out_dir: None,
            skip_bad: false,
        }
    }
}

#[derive(Debug, Default)]
pub struct PrepareReport {
    pub frames: usize,
    pub converted: usize,
    /// Every problem found: `(file, what is wrong)`.
    pub problems: Vec<(PathBuf, String)>,
    /// Per-file statistics of the frames that passed, in frame order.
    pub stats: Vec<FrameStats>,
    /// Folder the statistics were written to (none when there were problems).
    pub stats_dir: Option<PathBuf>,
    /// With `skip_bad`: the list of excluded files written, and how many
    /// frames it leaves out.
    pub excluded: Option<(PathBuf, usize)>,
    /// A list of an earlier `--skip-bad` run that was removed (nothing is wrong now).
    pub removed_exclusions: Option<PathBuf>,
}

/// Whether a problem concerns one frame's file (an image or label), which
/// `--skip-bad` may leave out, rather than the dataset as a whole.
pub fn is_frame_problem(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["png", "jpg", "jpeg"].contains(&e.to_ascii_lowercase().as_str()))
}

/// Path of the converted trainId label of a raw label file.
pub fn converted_label_path(label: &Path) -> PathBuf {
    let name = label.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let new = match name.strip_suffix("_gtFine_labelIds.png") {
        Some(base) => format!("{base}_gtFine_labelTrainIds.png"),
        None => format!("{}_labelTrainIds.png", name.trim_end_matches(".png")),
    };
    label.with_file_name(new)
}

/// Scan the dataset(s) of `kind` at `root`, check every frame, and write the
/// statistics if nothing is wrong. `progress(total)` is called once with the
/// number of frames, then `tick()` once per checked frame (from worker threads).
pub fn prepare(
    kind: DatasetKind,
    root: &Path,
    opts: &PrepareOptions,
    on_total: &dyn Fn(usize),
    tick: &(dyn Fn() + Sync),
) -> Result<PrepareReport> {
    if opts.convert && kind == DatasetKind::Folder {
        return Err(Error::msg("prepare --convert is for gta, synthia and cityscapes; a folder dataset maps its ids on the fly"));
    }
    let mut report = PrepareReport::default();
    let splits: Vec<&str> = match kind {
        DatasetKind::Cityscapes => opts.splits.iter().map(String::as_str).collect(),
        _ => vec![""],
    };
    let mut datasets = Vec::new();
    for split in &splits {
        let scan = match Dataset::scan(kind, root, split) {
            Ok(s) => s,
            Err(e) => {
                report.problems.push((root.join(split), e.to_string()));
                continue;
            }
        };
        report.problems.extend(scan.problems);
        datasets.push((split.to_string(), scan.dataset));
    }
    let total: usize = datasets.iter().map(|(_, d)| d.len()).sum();
    on_total(total);
    report.frames = total;
    for (split, ds) in &datasets {
        let results: Vec<FrameCheck> = ds
            .frames
            .par_iter()
            .map(|f| {
                let r = check_frame(f, ds.num_classes(), opts);
                tick();
                r
            })
            .collect();
        let keep_stats = kind != DatasetKind::Cityscapes || split == "train";
        for r in results {
            match r {
                Ok((st, converted)) => {
                    report.converted += usize::from(converted);
                    if let (Some(st), true) = (st, keep_stats) {
                        report.stats.push(st);
                    }
                }
                Err(p) => report.problems.extend(p),
            }
        }
    }
    let data_root = datasets
        .first()
        .map(|(_, d)| d.root.clone())
        .unwrap_or_else(|| root.to_path_buf());
    let skippable = report.problems.iter().all(|(p, _)| is_frame_problem(p));
    if report.problems.is_empty() {
        if super::exclusions::remove(&data_root)? {
            report.removed_exclusions = Some(data_root.join(super::exclusions::EXCLUDED_FILE));
        }
    } else if opts.skip_bad && skippable {
        let (path, list) = super::exclusions::write(&data_root, &report.problems)?;
        let mut left_out = 0;
        for (_, ds) in &datasets {
            let mut scan = super::datasets::Scan {
                dataset: ds.clone(),
                problems: Vec::new(),
            };
            left_out += scan.exclude(&list);
        }
        report.excluded = Some((path, left_out));
    }
    if report.problems.is_empty() || report.excluded.is_some() {
        let dir = match &opts.out_dir {
            Some(d) => d.clone(),
            None => match kind {
                DatasetKind::Folder => datasets
                    .first()
                    .map(|(_, d)| d.root.clone())
                    .unwrap_or_else(|| root.to_path_buf()),
                _ => root.to_path_buf(),
            },
        };
        write_stats(&dir, &report.stats)?;
        report.stats_dir = Some(dir);
    }
    Ok(report)
}

/// Check one frame; on success its statistics (none for an unlabelled frame)
/// and whether a converted label was written.
fn check_frame(f: &Frame, num_classes: usize, opts: &PrepareOptions) -> FrameCheck {
    let mut problems = Vec::new();
    let size = if opts.check_images {
        png_io::read_rgb(&f.image).map(|(w, h, _)| (w, h))
    } else {
        png_io::png_size(&f.image)
    };
    let size = match size {
        Ok(s) => Some(s),
        Err(e) => {
            problems.push((f.image.clone(), strip_path(&e, &f.image)));
            None
        }
    };
    let Some(l) = &f.label else {
        return if problems.is_empty() {
            Ok((None, false))
        } else {
            Err(problems)
        };
    };
    let label = match l.codec.read(&l.path) {
        Ok(v) => Some(v),
        Err(e) => {
            problems.push((l.path.clone(), strip_path(&e, &l.path)));
            None
        }
    };
    let (Some((iw, ih)), Some((lw, lh, label))) = (size, label) else {
        return Err(problems);
    };
    if (lw, lh) != (iw, ih) {
        problems.push((
            l.path.clone(),
            format!(
                "label is {lw}×{lh} but its image {} is {iw}×{ih}",
                f.image.display()
            ),
        ));
        return Err(problems);
    }
    let mut file = l.path.clone();
    let mut converted = false;
    if opts.convert && !l.is_train_ids {
        file = converted_label_path(&l.path);
        if let Err(e) = png_io::write_gray8(&file, lw, lh, &label) {
            let msg = strip_path(&e, &file);
            return Err(vec![(file, msg)]);
        }
        converted = true;
    }
    let hist = class_counts(&label, num_classes);
    Ok((
        Some(FrameStats::from_hist(file.display().to_string(), &hist)),
        converted,
    ))
}

/// The message of an error without a leading "<path>: " (the report names the file).
fn strip_path(e: &Error, path: &Path) -> String {
    let s = e.to_string();
    let prefix = format!("{}: ", path.display());
    s.strip_prefix(&prefix).map(str::to_string).unwrap_or(s)
}
