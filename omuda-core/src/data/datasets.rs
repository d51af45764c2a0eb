//! Datasets on disk in their standard layouts (those of `lhoyer/MIC
//! seg/tools/convert_datasets/` and `seg/mmseg/datasets/`): GTA5, SYNTHIA
//! RAND_CITYSCAPES, Cityscapes, and a generic folder dataset described by a
//! TOML file.
//!
//! Opening a dataset lists its frames (image and label paths) without
//! decoding anything; [`Dataset::load`] decodes one frame into RGB bytes and
//! trainIds. Layout problems (no images, a label missing for an image) are
//! collected by [`Dataset::scan`] so that `omuda prepare` can report all of
//! them; [`Dataset::open`] fails on the first scan with problems, listing them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::classes::{CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, IGNORE_INDEX, NUM_CLASSES};
use super::glob::Glob;
use super::labels::{cityscapes_id_map, synthia_id_map, IdMap, LabelCodec, LabelStorage};
use super::png_io;
use super::synth::Sample;
use crate::{Error, Result};

/// The dataset layouts omuda reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    Gta,
    Synthia,
    Cityscapes,
    /// A folder dataset described by a TOML file ([`FolderSpec`]).
    Folder,
}

impl DatasetKind {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "gta" | "gta5" => Ok(Self::Gta),
            "synthia" => Ok(Self::Synthia),
            "cityscapes" => Ok(Self::Cityscapes),
            "folder" => Ok(Self::Folder),
            other => Err(Error::msg(format!(
                "unknown dataset kind {other:?}: expected gta, synthia, cityscapes or folder"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Gta => "gta",
            Self::Synthia => "synthia",
            Self::Cityscapes => "cityscapes",
            Self::Folder => "folder",
        }
    }
}

/// The label file of a frame and how to decode it.
#[derive(Debug, Clone)]
pub struct LabelFile {
    pub path: PathBuf,
    pub codec: Arc<LabelCodec>,
    /// True when the file already holds trainIds (no mapping but validation).
    pub is_train_ids: bool,
}

/// One image and its label.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Frame id: the file name without its layout suffix (GTA `00001`,
    /// Cityscapes `aachen_000000_000019`, folder: the glob key). Used to
    /// match the RCS statistics files to frames.
    pub key: String,
    pub image: PathBuf,
    pub label: Option<LabelFile>,
}

/// A listed dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub kind: DatasetKind,
    pub root: PathBuf,
    pub frames: Vec<Frame>,
    pub class_names: Vec<String>,
    pub palette: Vec<[u8; 3]>,
    /// Ignore value of the decoded labels: always [`IGNORE_INDEX`] (a folder
    /// dataset's own `ignore_index` is translated when its labels are read).
    pub ignore_index: u8,
}

/// The listing of a dataset with every layout problem found.
#[derive(Debug)]
pub struct Scan {
    pub dataset: Dataset,
    /// `(file, problem)`, one per problem.
    pub problems: Vec<(PathBuf, String)>,
}

impl Scan {
    /// Drops the frames whose image or label is on `list` (paths relative to
    /// the dataset root), and the listed problems. Returns how many frames
    /// were dropped.
    pub fn exclude(&mut self, list: &super::exclusions::Exclusions) -> usize {
        use super::exclusions::relative;
        let root = self.dataset.root.clone();
        let listed = list.listed();
        let before = self.dataset.frames.len();
        self.dataset.frames.retain(|f| {
            let image_listed = listed.contains(relative(&f.image, &root).as_str());
            let label_listed = f
                .label
                .as_ref()
                .is_some_and(|l| listed.contains(relative(&l.path, &root).as_str()));
            !(image_listed || label_listed)
        });
        self.problems
            .retain(|(p, _)| !listed.contains(relative(p, &root).as_str()));
        before - self.dataset.frames.len()
    }
}

/// Frames of a dataset after decoding: RGB bytes and trainIds at the file's
/// resolution.
pub type Decoded = Sample;

impl Dataset {
    /// List `root` as `kind`. `split` selects the Cityscapes split (`train`,
    /// `val`); for a folder dataset `root` is the TOML spec file.
    pub fn scan(kind: DatasetKind, root: &Path, split: &str) -> Result<Scan> {
        // A folder dataset's root is its spec file; every other root is a directory.
        if kind != DatasetKind::Folder && !root.is_dir() {
            return Err(Error::file(
                root,
                format!(
                    "the {} dataset root should be a directory, but it {}",
                    kind.name(),
                    what_is_at(root)
                ),
            ));
        }
        match kind {
            DatasetKind::Gta => scan_gta(root),
            DatasetKind::Synthia => scan_synthia(root),
            DatasetKind::Cityscapes => scan_cityscapes(root, split),
            DatasetKind::Folder => FolderSpec::from_file(root)?.scan(),
        }
    }

    /// Like [`Dataset::scan`], but any problem is an error listing them all.
    /// Frames listed by `omuda prepare --skip-bad` in the dataset root
    /// ([`super::exclusions`]) are left out, and their problems with them;
    /// a note says how many.
    pub fn open(kind: DatasetKind, root: &Path, split: &str) -> Result<Self> {
        let mut scan = Self::scan(kind, root, split)?;
        if let Some(list) = super::exclusions::read(&scan.dataset.root)? {
            let dropped = scan.exclude(&list);
            if dropped > 0 && !crate::io::quiet() {
                eprintln!(
                    "{} dataset at {}: {dropped} frame(s) left out, as listed in {}",
                    kind.name(),
                    root.display(),
                    scan.dataset
                        .root
                        .join(super::exclusions::EXCLUDED_FILE)
                        .display()
                );
            }
        }
        if scan.problems.is_empty() {
            return Ok(scan.dataset);
        }
        Err(problems_error(
            &format!("{} dataset at {}", kind.name(), root.display()),
            &scan.problems,
        ))
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Decode frame `i`: its RGB image, and its trainIds (or all-ignore when
    /// the frame has no label). The label must have the image's size.
    pub fn load(&self, i: usize) -> Result<Decoded> {
        let f = self.frame(i)?;
        let (w, h, image) = png_io::read_rgb(&f.image)?;
        let label = match &f.label {
            Some(l) => read_label_checked(l, (w, h), &f.image)?,
            None => vec![self.ignore_index; w * h],
        };
        Ok(Sample {
            image,
            label,
            height: h,
            width: w,
        })
    }

    /// Decode only the image of frame `i`.
    pub fn load_image(&self, i: usize) -> Result<(usize, usize, Vec<u8>)> {
        png_io::read_rgb(&self.frame(i)?.image)
    }

    fn frame(&self, i: usize) -> Result<&Frame> {
        self.frames.get(i).ok_or_else(|| {
            Error::msg(format!(
                "{} dataset: frame {i} out of range ({} frames)",
                self.name,
                self.frames.len()
            ))
        })
    }

    /// Index of each frame key.
    pub fn key_index(&self) -> BTreeMap<&str, usize> {
        self.frames
            .iter()
            .enumerate()
            .map(|(i, f)| (f.key.as_str(), i))
            .collect()
    }
}

/// Decode a label and check it has the image's size `(w, h)`.
pub fn read_label_checked(l: &LabelFile, size: (usize, usize), image: &Path) -> Result<Vec<u8>> {
    let (lw, lh, label) = l.codec.read(&l.path)?;
    if (lw, lh) != size {
        return Err(Error::file(
            &l.path,
            format!(
                "label is {lw}×{lh} but its image {} is {}×{}",
                image.display(),
                size.0,
                size.1
            ),
        ));
    }
    Ok(label)
}

/// One error listing problems, one per line (at most 50, then a count).
pub fn problems_error(what: &str, problems: &[(PathBuf, String)]) -> Error {
    let mut s = format!("{what}: {} problem(s)", problems.len());
    for (p, m) in problems.iter().take(50) {
        s.push_str(&format!("\n  {}: {m}", p.display()));
    }
    if problems.len() > 50 {
        s.push_str(&format!(
            "\n  … and {} more (run `omuda prepare` to list all)",
            problems.len() - 50
        ));
    }
    Error::msg(s)
}

fn cityscapes_classes() -> (Vec<String>, Vec<[u8; 3]>) {
    (
        CITYSCAPES_CLASSES.iter().map(|s| s.to_string()).collect(),
        CITYSCAPES_PALETTE.to_vec(),
    )
}

/// What stands at `path`, for error messages about a file or folder that is
/// not what was expected: "does not exist", "is a directory", "is a FIFO",
/// "is a symlink loop", "is a broken symlink", "is a regular file", ….
pub fn what_is_at(path: &Path) -> &'static str {
    #[cfg(unix)]
    use std::os::unix::fs::FileTypeExt;
    let link = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(_) => return "does not exist",
    };
    let meta = if link.file_type().is_symlink() {
        match std::fs::metadata(path) {
            Ok(m) => m,
            // ELOOP (40 on Linux): the link leads back to itself.
            Err(e) if e.raw_os_error() == Some(40) => return "is a symlink loop",
            Err(_) => return "is a broken symlink",
        }
    } else {
        link
    };
    let t = meta.file_type();
    if t.is_dir() {
        return "is a directory";
    }
    if t.is_file() {
        return "is a regular file";
    }
    #[cfg(unix)]
    {
        if t.is_fifo() {
            return "is a FIFO";
        }
        if t.is_socket() {
            return "is a socket";
        }
        if t.is_block_device() || t.is_char_device() {
            return "is a device";
        }
    }
    "is not a regular file"
}

/// `path`, and what stands there when it is not a regular file.
fn path_and_kind(path: &Path) -> String {
    match what_is_at(path) {
        "is a regular file" => path.display().to_string(),
        kind => format!("{} ({})", path.display(), kind.trim_start_matches("is ")),
    }
}

/// PNG files directly in `dir` (sorted) whose names satisfy `keep`. A
/// matching name that is not a readable regular file (a directory, a FIFO,
/// a symlink loop) is added to `problems`, not skipped without a word.
fn list_pngs(
    dir: &Path,
    keep: impl Fn(&str) -> bool,
    problems: &mut Vec<(PathBuf, String)>,
) -> Result<Vec<(String, PathBuf)>> {
    if !dir.is_dir() {
        return Err(Error::file(
            dir,
            format!("expected a directory, but it {}", what_is_at(dir)),
        ));
    }
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut out = Vec::new();
    for e in rd {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        if !(name.ends_with(".png") && keep(&name)) {
            continue;
        }
        if p.is_file() {
            out.push((name, p));
        } else {
            problems.push((
                p.clone(),
                format!("expected a PNG file, but it {}", what_is_at(&p)),
            ));
        }
    }
    out.sort();
    Ok(out)
}

/// GTA5: `images/XXXXX.png`, labels `labels/XXXXX_labelTrainIds.png`
/// (trainIds) or else `labels/XXXXX.png` (Cityscapes label ids, usually a
/// palette PNG) mapped on the fly.
fn scan_gta(root: &Path) -> Result<Scan> {
    let raw = LabelCodec {
        storage: LabelStorage::Gray8,
        map: cityscapes_id_map(),
    };
    scan_image_label_dirs(
        "gta",
        DatasetKind::Gta,
        root,
        &root.join("images"),
        &root.join("labels"),
        raw,
    )
}

/// SYNTHIA RAND_CITYSCAPES: `RGB/XXXXXXX.png`, labels
/// `GT/LABELS/XXXXXXX_labelTrainIds.png` (trainIds) or else
/// `GT/LABELS/XXXXXXX.png` (16-bit, class id in the first PNG channel).
fn scan_synthia(root: &Path) -> Result<Scan> {
    let raw = LabelCodec {
        storage: LabelStorage::Synthia16,
        map: synthia_id_map(),
    };
    scan_image_label_dirs(
        "synthia",
        DatasetKind::Synthia,
        root,
        &root.join("RGB"),
        &root.join("GT").join("LABELS"),
        raw,
    )
}

/// A dataset of `image_dir/NAME.png` with labels `label_dir/NAME_labelTrainIds.png`
/// (preferred) or `label_dir/NAME.png` decoded by `raw`. A frame without a
/// label is a problem, reported with the image's path.
fn scan_image_label_dirs(
    name: &str,
    kind: DatasetKind,
    root: &Path,
    image_dir: &Path,
    label_dir: &Path,
    raw: LabelCodec,
) -> Result<Scan> {
    let mut problems = Vec::new();
    let images = list_pngs(image_dir, |_| true, &mut problems)?;
    let raw = Arc::new(raw);
    let tid = Arc::new(LabelCodec::train_ids(NUM_CLASSES, IGNORE_INDEX));
    let mut frames = Vec::new();
    // Labels without an image are reported, never left out silently.
    if label_dir.is_dir() {
        let stems: std::collections::HashSet<String> = images
            .iter()
            .map(|(f, _)| f.trim_end_matches(".png").to_string())
            .collect();
        let mut label_problems = Vec::new();
        for (file, label) in list_pngs(label_dir, |_| true, &mut label_problems)? {
            let stem = file
                .trim_end_matches(".png")
                .trim_end_matches("_labelTrainIds");
            if !stems.contains(stem) {
                problems.push((
                    label,
                    format!(
                        "orphan label: no image {}",
                        image_dir.join(format!("{stem}.png")).display()
                    ),
                ));
            }
        }
        problems.extend(label_problems);
    }
    if images.is_empty() {
        problems.push((image_dir.to_path_buf(), "no PNG images found".to_string()));
    }
    for (file, image) in images {
        let stem = file.trim_end_matches(".png").to_string();
        let conv = label_dir.join(format!("{stem}_labelTrainIds.png"));
        let orig = label_dir.join(&file);
        let label = if conv.is_file() {
            LabelFile {
                path: conv,
                codec: tid.clone(),
                is_train_ids: true,
            }
        } else if orig.is_file() {
            LabelFile {
                path: orig,
                codec: raw.clone(),
                is_train_ids: false,
            }
        } else {
            problems.push((
                image.clone(),
                format!(
                    "missing label: neither {} nor {}",
                    path_and_kind(&orig),
                    path_and_kind(&conv)
                ),
            ));
            continue;
        };
        frames.push(Frame {
            key: stem,
            image,
            label: Some(label),
        });
    }
    let (class_names, palette) = cityscapes_classes();
    let dataset = Dataset {
        name: name.into(),
        kind,
        root: root.into(),
        frames,
        class_names,
        palette,
        ignore_index: IGNORE_INDEX,
    };
    Ok(Scan { dataset, problems })
}

/// Cityscapes: `leftImg8bit/<split>/<city>/<base>_leftImg8bit.png`, labels
/// `gtFine/<split>/<city>/<base>_gtFine_labelTrainIds.png` or else
/// `<base>_gtFine_labelIds.png` mapped on the fly. The `test` split has no
/// usable labels; its frames are listed without label.
fn scan_cityscapes(root: &Path, split: &str) -> Result<Scan> {
    let img_dir = root.join("leftImg8bit").join(split);
    if !img_dir.is_dir() {
        return Err(Error::file(
            &img_dir,
            format!(
                "expected a directory (leftImg8bit/<split>/<city>/), but it {}",
                what_is_at(&img_dir)
            ),
        ));
    }
    let raw = Arc::new(LabelCodec {
        storage: LabelStorage::Gray8,
        map: cityscapes_id_map(),
    });
    let tid = Arc::new(LabelCodec::train_ids(NUM_CLASSES, IGNORE_INDEX));
    let mut cities: Vec<PathBuf> = std::fs::read_dir(&img_dir)
        .map_err(|e| Error::io(&img_dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    cities.sort();
    let mut frames = Vec::new();
    let mut problems = Vec::new();
    let labelled = split != "test";
    for city in &cities {
        let Some(city_name) = city.file_name() else {
            continue;
        };
        let gt_dir = root.join("gtFine").join(split).join(city_name);
        for (name, image) in list_pngs(city, |n| n.ends_with("_leftImg8bit.png"), &mut problems)? {
            let base = name.trim_end_matches("_leftImg8bit.png").to_string();
            let label = if labelled {
                let conv = gt_dir.join(format!("{base}_gtFine_labelTrainIds.png"));
                let orig = gt_dir.join(format!("{base}_gtFine_labelIds.png"));
                if conv.is_file() {
                    Some(LabelFile {
                        path: conv,
                        codec: tid.clone(),
                        is_train_ids: true,
                    })
                } else if orig.is_file() {
                    Some(LabelFile {
                        path: orig,
                        codec: raw.clone(),
                        is_train_ids: false,
                    })
                } else {
                    problems.push((
                        image.clone(),
                        format!(
                            "missing label: neither {} nor {}",
                            path_and_kind(&conv),
                            path_and_kind(&orig)
                        ),
                    ));
                    continue;
                }
            } else {
                None
            };
            frames.push(Frame {
                key: base,
                image,
                label,
            });
        }
    }
    if frames.is_empty() && problems.is_empty() {
        problems.push((
            img_dir.clone(),
            "no *_leftImg8bit.png images found in any city folder".into(),
        ));
    }
    let (class_names, palette) = cityscapes_classes();
    let dataset = Dataset {
        name: format!("cityscapes-{split}"),
        kind: DatasetKind::Cityscapes,
        root: root.into(),
        frames,
        class_names,
        palette,
        ignore_index: IGNORE_INDEX,
    };
    Ok(Scan { dataset, problems })
}

/// A dataset described by a TOML file: image and label globs (relative to
/// `root`, itself relative to the TOML file's folder), the classes, their
/// palette, and how stored label ids become trainIds.
///
/// ```toml
/// name = "my-streets"
/// root = "."                      # relative to this file
/// images = "images/*.png"
/// labels = "labels/*_mask.png"    # optional: omit for an unlabelled target
/// classes = ["road", "car", "sky"]
/// palette = [[128, 64, 128], [0, 0, 142], [70, 130, 180]]
/// ignore_index = 255
/// [id_to_train_id]                # optional: omit when labels hold trainIds
/// 1 = 0
/// 7 = 1
/// 9 = 2
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderSpec {
    pub name: String,
    #[serde(default)]
    pub root: Option<PathBuf>,
    pub images: String,
    #[serde(default)]
    pub labels: Option<String>,
    /// Default: the 19 Cityscapes classes.
    #[serde(default)]
    pub classes: Option<Vec<String>>,
    /// One RGB colour per class. Default: the Cityscapes palette (19 classes only).
    #[serde(default)]
    pub palette: Option<Vec<[u8; 3]>>,
    #[serde(default = "default_ignore")]
    pub ignore_index: u8,
    /// Stored id → trainId. Stored ids up to `max_id` that are not listed map
    /// to `ignore_index`. Absent: the labels already hold trainIds.
    #[serde(default)]
    pub id_to_train_id: Option<BTreeMap<String, u8>>,
    /// Highest stored id (default: the largest key of `id_to_train_id`);
    /// larger ids are reported as unknown.
    #[serde(default)]
    pub max_id: Option<u16>,
    /// Label storage: `"gray8"` (default: 8-bit grey or palette indices) or
    /// `"channel16"` (first channel of a 16-bit PNG).
    #[serde(default)]
    pub label_storage: Option<String>,
    /// Where the spec was read from (set by [`FolderSpec::from_file`]).
    #[serde(skip)]
    pub spec_path: PathBuf,
}

fn default_ignore() -> u8 {
    IGNORE_INDEX
}

impl FolderSpec {
    pub fn from_file(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Err(Error::file(
                path,
                "a folder dataset is given by its TOML spec file, not a directory",
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut spec: FolderSpec = toml::from_str(&text)
            .map_err(|e| Error::file(path, format!("invalid dataset spec: {e}")))?;
        spec.spec_path = path.to_path_buf();
        spec.validate()?;
        Ok(spec)
    }

    fn err(&self, m: String) -> Error {
        Error::file(&self.spec_path, m)
    }

    pub fn validate(&self) -> Result<()> {
        let names = self.class_names();
        if names.is_empty() || names.len() > 255 {
            return Err(self.err(format!(
                "classes: {} classes, expected 1 to 255",
                names.len()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        let twice: Vec<&str> = names
            .iter()
            .filter(|n| !seen.insert(n.as_str()))
            .map(|n| n.as_str())
            .collect();
        if !twice.is_empty() {
            return Err(self.err(format!(
                "classes: {} listed more than once; class names must be unique",
                twice.join(", ")
            )));
        }
        if usize::from(self.ignore_index) < names.len() {
            return Err(self.err(format!(
                "ignore_index {} is a class index (there are {} classes)",
                self.ignore_index,
                names.len()
            )));
        }
        match (&self.palette, &self.classes) {
            (Some(p), _) if p.len() != names.len() => {
                return Err(self.err(format!(
                    "palette has {} colours for {} classes",
                    p.len(),
                    names.len()
                )));
            }
            (None, Some(c)) if c.len() != NUM_CLASSES => {
                return Err(self.err(
                    "palette is required when classes are not the 19 Cityscapes classes".into(),
                ));
            }
            _ => {}
        }
        if let Some(s) = &self.label_storage {
            if !matches!(s.as_str(), "gray8" | "channel16") {
                return Err(self.err(format!(
                    "label_storage = {s:?}: expected \"gray8\" or \"channel16\""
                )));
            }
        }
        self.id_map()?;
        Glob::parse(
            &self.images,
            &format!("{}: images", self.spec_path.display()),
        )?;
        if let Some(l) = &self.labels {
            Glob::parse(l, &format!("{}: labels", self.spec_path.display()))?;
        }
        Ok(())
    }

    pub fn class_names(&self) -> Vec<String> {
        match &self.classes {
            Some(c) => c.clone(),
            None => CITYSCAPES_CLASSES.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn id_map(&self) -> Result<IdMap> {
        let k = self.class_names().len();
        let Some(m) = &self.id_to_train_id else {
            return Ok(IdMap::train_ids(k, self.ignore_index));
        };
        let mut pairs = Vec::new();
        for (key, &v) in m {
            let id: u16 = key.trim().parse().map_err(|_| {
                self.err(format!(
                    "id_to_train_id: key {key:?} is not an id (0–65535)"
                ))
            })?;
            if usize::from(v) >= k && v != self.ignore_index {
                return Err(self.err(format!(
                    "id_to_train_id: {id} → {v}, which is neither a class (< {k}) nor ignore_index"
                )));
            }
            pairs.push((
                id,
                if v == self.ignore_index {
                    IGNORE_INDEX
                } else {
                    v
                },
            ));
        }
        let max_key = pairs.iter().map(|p| p.0).max().unwrap_or(0);
        let max_id = self.max_id.unwrap_or(max_key).max(max_key);
        Ok(IdMap::from_pairs(
            &format!("ids of {} (0–{max_id})", self.spec_path.display()),
            max_id,
            &pairs,
            &[],
            IGNORE_INDEX,
        ))
    }

    pub fn root_dir(&self) -> PathBuf {
        let base = self
            .spec_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        match &self.root {
            Some(r) if r.is_absolute() => r.clone(),
            Some(r) => base.join(r),
            None => base,
        }
    }

    pub fn scan(&self) -> Result<Scan> {
        let root = self.root_dir();
        let spec = self.spec_path.display().to_string();
        let ig = Glob::parse(&self.images, &format!("{spec}: images"))?;
        let images = ig.matches(&root)?;
        let mut problems = Vec::new();
        if images.is_empty() {
            problems.push((
                ig.fixed_dir(&root),
                format!("images glob {:?} matches no file", self.images),
            ));
        }
        let storage = match self.label_storage.as_deref() {
            Some("channel16") => LabelStorage::Channel16(0),
            _ => LabelStorage::Gray8,
        };
        let codec = Arc::new(LabelCodec {
            storage,
            map: self.id_map()?,
        });
        let is_train_ids = self.id_to_train_id.is_none();
        let mut frames = Vec::new();
        match &self.labels {
            None => frames.extend(images.into_iter().map(|m| Frame {
                key: m.key,
                image: m.path,
                label: None,
            })),
            Some(lg) => {
                let lg = Glob::parse(lg, &format!("{spec}: labels"))?;
                let labels = lg.matches(&root)?;
                if labels.is_empty() {
                    problems.push((
                        lg.fixed_dir(&root),
                        format!("labels glob {:?} matches no file", lg.as_str()),
                    ));
                }
                let mut by_key: BTreeMap<String, PathBuf> = BTreeMap::new();
                for m in labels {
                    if let Some(prev) = by_key.insert(m.key.clone(), m.path.clone()) {
                        problems.push((
                            m.path,
                            format!(
                                "label key {:?} is also the key of {}",
                                m.key,
                                prev.display()
                            ),
                        ));
                    }
                }
                for m in images {
                    match by_key.remove(&m.key) {
                        Some(path) => frames.push(Frame {
                            key: m.key,
                            image: m.path,
                            label: Some(LabelFile {
                                path,
                                codec: codec.clone(),
                                is_train_ids,
                            }),
                        }),
                        None => problems.push((
                            m.path,
                            format!(
                                "missing label: no file of glob {:?} has key {:?}",
                                lg.as_str(),
                                m.key
                            ),
                        )),
                    }
                }
                for (key, path) in by_key {
                    problems.push((
                        path,
                        format!(
                            "label without image: no file of glob {:?} has key {key:?}",
                            self.images
                        ),
                    ));
                }
            }
        }
        let class_names = self.class_names();
        let palette = match &self.palette {
            Some(p) => p.clone(),
            None => CITYSCAPES_PALETTE.to_vec(),
        };
        let dataset = Dataset {
            name: self.name.clone(),
            kind: DatasetKind::Folder,
            root,
            frames,
            class_names,
            palette,
            ignore_index: IGNORE_INDEX,
        };
        Ok(Scan { dataset, problems })
    }
}
