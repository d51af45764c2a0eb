//! The built-in synthetic pair written to disk in the layouts and label
//! encodings of the real datasets, so that `omuda prepare` and the files
//! loader can be tried without a download:
//!
//! - `gta` (the source domain's train split): `images/NNNNN.png` and
//!   `labels/NNNNN.png`, palette PNGs of Cityscapes label ids with the
//!   Cityscapes colours, as GTA5 ships them;
//! - `synthia` (the source domain's train split): `RGB/NNNNNNN.png` and
//!   `GT/LABELS/NNNNNNN.png`, 16-bit RGB with the SYNTHIA class id in the
//!   first channel and the instance id (0) in the second. SYNTHIA has no
//!   terrain, truck or train: those pixels are written as void (0), which
//!   reads back as ignore, as in the real dataset;
//! - `cityscapes` (the target domain): `leftImg8bit/<split>/synth/` and
//!   `gtFine/<split>/synth/` with `_gtFine_labelIds.png`,
//!   `_gtFine_labelTrainIds.png` and `_gtFine_color.png`. Split `train` is the
//!   target train split, `dev` the dev split, `val` the test split (the
//!   reported one, as Cityscapes val is in the UDA literature).
//!
//! Images and trainIds read back from the export equal the generated ones
//! byte for byte (except SYNTHIA's three missing classes).

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::classes::{CITYSCAPES_PALETTE, IGNORE_INDEX};
use super::labels::{CITYSCAPES_ID_TO_TRAIN_ID, SYNTHIA_ID_TO_TRAIN_ID};
use super::png_io::{write_gray8, write_indexed8, write_rgb8, write_u16};
use super::synth::{generate, Domain, Split, SynthConfig};
use crate::{Error, Result};

/// The dataset layout of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportLayout {
    Gta,
    Synthia,
    Cityscapes,
}

impl ExportLayout {
    pub const NAMES: [&'static str; 3] = ["gta", "synthia", "cityscapes"];

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "gta" => Ok(Self::Gta),
            "synthia" => Ok(Self::Synthia),
            "cityscapes" => Ok(Self::Cityscapes),
            other => Err(Error::msg(format!(
                "unknown layout {other:?}: expected one of {}",
                Self::NAMES.join(", ")
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Gta => "gta",
            Self::Synthia => "synthia",
            Self::Cityscapes => "cityscapes",
        }
    }

    /// The synthetic splits written, with the split folder each goes to
    /// (`""` for the layouts without split folders).
    pub fn splits(self) -> Vec<(Domain, Split, &'static str)> {
        match self {
            Self::Gta | Self::Synthia => vec![(Domain::Source, Split::Train, "")],
            Self::Cityscapes => vec![
                (Domain::Target, Split::Train, "train"),
                (Domain::Target, Split::Dev, "dev"),
                (Domain::Target, Split::Test, "val"),
            ],
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportReport {
    pub dir: PathBuf,
    /// (split folder, frames) in the order written.
    pub splits: Vec<(String, usize)>,
    /// SYNTHIA only: labelled pixels of a class SYNTHIA lacks (terrain,
    /// truck, train), written as void.
    pub void_pixels: u64,
}

impl ExportReport {
    pub fn frames(&self) -> usize {
        self.splits.iter().map(|(_, n)| n).sum()
    }
}

/// Cityscapes' colours of label ids 0–33 (cityscapesScripts `labels.py`):
/// the 19 evaluated ids get their trainId's colour, the others their own.
pub fn label_id_palette() -> Vec<[u8; 3]> {
    let mut pal = vec![[0u8; 3]; 34];
    for (id, rgb) in [
        (5, [111, 74, 0]),
        (6, [81, 0, 81]),
        (9, [250, 170, 160]),
        (10, [230, 150, 140]),
        (14, [180, 165, 180]),
        (15, [150, 100, 100]),
        (16, [150, 120, 90]),
        (18, [153, 153, 153]),
        (29, [0, 0, 90]),
        (30, [0, 0, 110]),
    ] {
        pal[id] = rgb;
    }
    for &(id, train) in &CITYSCAPES_ID_TO_TRAIN_ID {
        pal[usize::from(id)] = CITYSCAPES_PALETTE[usize::from(train)];
    }
    pal
}

/// trainId → stored id through the inverse of `pairs`; ignore and trainIds
/// the map lacks become `void`.
fn inverse_table(pairs: &[(u16, u8)], void: u16) -> [Option<u16>; 256] {
    let mut t = [None; 256];
    for &(id, train) in pairs {
        t[usize::from(train)] = Some(id);
    }
    t[usize::from(IGNORE_INDEX)] = Some(void);
    t
}

/// Writes the pair's splits for `layout` into `out`, which must not exist or
/// be an empty folder. Files are written to a sibling staging folder that is
/// renamed to `out` at the end, so a failed export leaves no partial dataset.
/// `on_frame` is called once per frame written (from worker threads).
pub fn export_synth(
    cfg: &SynthConfig,
    dataset_seed: u64,
    layout: ExportLayout,
    out: &Path,
    on_frame: &(dyn Fn() + Sync),
) -> Result<ExportReport> {
    cfg.validate()?;
    if out.exists() {
        let empty = out.is_dir()
            && std::fs::read_dir(out)
                .map_err(|e| Error::io(out, e))?
                .next()
                .is_none();
        if !empty {
            return Err(Error::file(
                out,
                "already exists and is not an empty folder; export into a new folder",
            ));
        }
    }
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::file(out, "expected a folder path that ends in a name"))?;
    let staging = out.with_file_name(format!(".{name}.partial"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    }
    let result = write_layout(cfg, dataset_seed, layout, &staging, on_frame).and_then(|r| {
        if out.exists() {
            std::fs::remove_dir(out).map_err(|e| Error::io(out, e))?;
        }
        std::fs::rename(&staging, out).map_err(|e| Error::io(out, e))?;
        Ok(r)
    });
    match result {
        Ok((splits, void_pixels)) => Ok(ExportReport {
            dir: out.to_path_buf(),
            splits,
            void_pixels,
        }),
        Err(e) => {
            // Best effort: the error that stopped the export is the one to report.
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

type Written = (Vec<(String, usize)>, u64);

fn write_layout(
    cfg: &SynthConfig,
    seed: u64,
    layout: ExportLayout,
    dir: &Path,
    on_frame: &(dyn Fn() + Sync),
) -> Result<Written> {
    let label_ids = inverse_table(&CITYSCAPES_ID_TO_TRAIN_ID, 0);
    let synthia_ids = inverse_table(&SYNTHIA_ID_TO_TRAIN_ID, 0);
    let palette = label_id_palette();
    let (w, h) = (cfg.width, cfg.height);
    let mut splits = Vec::new();
    let mut void_pixels = 0u64;
    for (domain, split, folder) in layout.splits() {
        let n = cfg.split_size(split);
        let voids = (0..n)
            .into_par_iter()
            .map(|i| -> Result<u64> {
                let s = generate(cfg, seed, domain, split, i);
                let mut voids = 0u64;
                match layout {
                    ExportLayout::Gta => {
                        let stem = format!("{:05}", i + 1);
                        let ids: Vec<u8> = s
                            .label
                            .iter()
                            .map(|&t| map_id(&label_ids, t, &mut voids) as u8)
                            .collect();
                        write_rgb8(&dir.join(format!("images/{stem}.png")), w, h, &s.image)?;
                        write_indexed8(
                            &dir.join(format!("labels/{stem}.png")),
                            w,
                            h,
                            &ids,
                            &palette,
                        )?;
                    }
                    ExportLayout::Synthia => {
                        let stem = format!("{i:07}");
                        let ids: Vec<u16> = s
                            .label
                            .iter()
                            .flat_map(|&t| [map_id(&synthia_ids, t, &mut voids), 0, 0])
                            .collect();
                        write_rgb8(&dir.join(format!("RGB/{stem}.png")), w, h, &s.image)?;
                        write_u16(&dir.join(format!("GT/LABELS/{stem}.png")), w, h, 3, &ids)?;
                    }
                    ExportLayout::Cityscapes => {
                        let base = format!("synth_{i:06}_000019");
                        let img = dir.join(format!("leftImg8bit/{folder}/synth"));
                        let gt = dir.join(format!("gtFine/{folder}/synth"));
                        let ids: Vec<u8> = s
                            .label
                            .iter()
                            .map(|&t| map_id(&label_ids, t, &mut voids) as u8)
                            .collect();
                        let color: Vec<u8> = s
                            .label
                            .iter()
                            .flat_map(|&t| {
                                CITYSCAPES_PALETTE
                                    .get(usize::from(t))
                                    .copied()
                                    .unwrap_or([0, 0, 0])
                            })
                            .collect();
                        write_rgb8(&img.join(format!("{base}_leftImg8bit.png")), w, h, &s.image)?;
                        write_gray8(&gt.join(format!("{base}_gtFine_labelIds.png")), w, h, &ids)?;
                        write_gray8(
                            &gt.join(format!("{base}_gtFine_labelTrainIds.png")),
                            w,
                            h,
                            &s.label,
                        )?;
                        write_rgb8(&gt.join(format!("{base}_gtFine_color.png")), w, h, &color)?;
                    }
                }
                on_frame();
                Ok(voids)
            })
            .collect::<Result<Vec<u64>>>()?;
        void_pixels += voids.iter().sum::<u64>();
        splits.push((folder.to_string(), n));
    }
    Ok((splits, void_pixels))
}

/// The stored id of trainId `t`; a trainId the layout lacks is counted and
/// written as void (0).
fn map_id(table: &[Option<u16>; 256], t: u8, voids: &mut u64) -> u16 {
    match table[usize::from(t)] {
        Some(id) => id,
        None => {
            *voids += 1;
            0
        }
    }
}

/// The `[data]` tables of a run configuration that trains on an export at
/// its native size (no resize, whole-frame crops).
pub fn data_config_snippet(layout: ExportLayout, dir: &Path, cfg: &SynthConfig) -> String {
    let (w, h) = (cfg.width, cfg.height);
    let root = dir.display().to_string().replace('\\', "/");
    match layout {
        ExportLayout::Gta | ExportLayout::Synthia => format!(
            "[data.source]\nkind = \"{}\"\nroot = \"{root}\"\nscale = [{w}, {h}]\ncrop = [{h}, {w}]\n",
            layout.name()
        ),
        ExportLayout::Cityscapes => format!(
            "[data.target]\nkind = \"cityscapes\"\nroot = \"{root}\"\nsplit = \"train\"\nscale = [{w}, {h}]\ncrop = [{h}, {w}]\n\n\
             [data.dev]\nkind = \"cityscapes\"\nroot = \"{root}\"\nsplit = \"dev\"\nscale = [{w}, {h}]\n\n\
             [data.val]\nkind = \"cityscapes\"\nroot = \"{root}\"\nsplit = \"val\"\nscale = [{w}, {h}]\n"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::datasets::{Dataset, DatasetKind};

    fn tiny() -> SynthConfig {
        SynthConfig {
            height: 32,
            width: 64,
            train_size: 4,
            val_size: 1,
            dev_size: 2,
            test_size: 3,
            ..crate::data::config::benchmark_synth()
        }
    }

    /// Every exported frame reads back through the dataset loader as the
    /// generated image and trainIds (SYNTHIA: its missing classes as ignore).
    #[test]
    fn exports_read_back_as_the_generated_pair() {
        let cfg = tiny();
        let tmp = tempfile::tempdir().unwrap();
        for layout in [
            ExportLayout::Gta,
            ExportLayout::Synthia,
            ExportLayout::Cityscapes,
        ] {
            let dir = tmp.path().join(layout.name());
            let report = export_synth(&cfg, 3, layout, &dir, &|| {}).unwrap();
            let kind = DatasetKind::parse(layout.name()).unwrap();
            for (domain, split, folder) in layout.splits() {
                let split_name = if folder.is_empty() { "train" } else { folder };
                let ds = Dataset::open(kind, &dir, split_name).unwrap();
                assert_eq!(ds.len(), cfg.split_size(split), "{layout:?} {folder}");
                for i in 0..ds.len() {
                    let s = generate(&cfg, 3, domain, split, i);
                    let d = ds.load(i).unwrap();
                    assert_eq!((d.width, d.height), (cfg.width, cfg.height));
                    assert_eq!(d.image, s.image, "{layout:?} {folder} image {i}");
                    let want: Vec<u8> = if layout == ExportLayout::Synthia {
                        s.label
                            .iter()
                            .map(|&t| {
                                if [9, 14, 16].contains(&t) {
                                    IGNORE_INDEX
                                } else {
                                    t
                                }
                            })
                            .collect()
                    } else {
                        s.label.clone()
                    };
                    assert_eq!(d.label, want, "{layout:?} {folder} label {i}");
                }
            }
            assert_eq!(
                report.frames(),
                layout
                    .splits()
                    .iter()
                    .map(|s| cfg.split_size(s.1))
                    .sum::<usize>()
            );
            if layout != ExportLayout::Synthia {
                assert_eq!(report.void_pixels, 0);
            }
        }
    }

    #[test]
    fn gta_labels_are_palette_label_ids() {
        let cfg = tiny();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("g");
        export_synth(&cfg, 1, ExportLayout::Gta, &dir, &|| {}).unwrap();
        let (_, _, ids) = crate::data::png_io::read_label8(&dir.join("labels/00001.png")).unwrap();
        let s = generate(&cfg, 1, Domain::Source, Split::Train, 0);
        for (&id, &t) in ids.iter().zip(&s.label) {
            let expect = CITYSCAPES_ID_TO_TRAIN_ID
                .iter()
                .find(|p| p.1 == t)
                .map_or(0, |p| p.0 as u8);
            assert_eq!(id, expect);
        }
        let decoder = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(dir.join("labels/00001.png")).unwrap(),
        ));
        let reader = decoder.read_info().unwrap();
        assert_eq!(reader.info().color_type, png::ColorType::Indexed);
        assert_eq!(label_id_palette()[26], [0, 0, 142]);
    }

    #[test]
    fn a_non_empty_target_is_refused_and_nothing_is_left_behind() {
        let cfg = tiny();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("x");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("keep.txt"), "mine").unwrap();
        let err = export_synth(&cfg, 1, ExportLayout::Cityscapes, &dir, &|| {}).unwrap_err();
        assert!(err.to_string().contains("not an empty folder"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.join("keep.txt")).unwrap(),
            "mine"
        );
        // An empty folder is accepted; no staging folder remains.
        let empty = tmp.path().join("e");
        std::fs::create_dir(&empty).unwrap();
        export_synth(&cfg, 1, ExportLayout::Gta, &empty, &|| {}).unwrap();
        assert!(empty.join("images/00004.png").is_file());
        assert!(!tmp.path().join(".e.partial").exists());
    }
}
