//! Label id → trainId maps and label-file decoding.
//!
//! A [`LabelCodec`] says how a label PNG is read (8-bit ids, or one channel
//! of a 16-bit PNG) and how its stored ids become trainIds. Ids outside the
//! map's known range are an error that lists each unknown id and its pixel
//! count, so a wrong dataset kind or a damaged file is caught rather than
//! silently trained on as "ignore".

use std::path::Path;

use super::classes::IGNORE_INDEX;
use super::png_io;
use crate::{Error, Result};

/// Sentinel in [`IdMap::table`] for an id that is not known.
const UNKNOWN: u16 = u16::MAX;

/// A map from stored label ids to trainIds. Ids in `0..table.len()` are
/// known (mapped to a trainId or to ignore); larger ids, and entries marked
/// unknown, are errors.
#[derive(Debug, Clone, PartialEq)]
pub struct IdMap {
    /// What the ids are, for error messages (e.g. "Cityscapes label ids").
    pub name: String,
    table: Vec<u16>,
}

impl IdMap {
    /// Ids `0..=max_id` are known; those in `pairs` map to their trainId, the
    /// others to `ignore`. `extra_ignore` are further known ids mapped to ignore.
    pub fn from_pairs(
        name: &str,
        max_id: u16,
        pairs: &[(u16, u8)],
        extra_ignore: &[u16],
        ignore: u8,
    ) -> Self {
        let mut table = vec![u16::from(ignore); usize::from(max_id) + 1];
        for &(id, train) in pairs {
            let id = usize::from(id);
            if id >= table.len() {
                table.resize(id + 1, UNKNOWN);
            }
            table[id] = u16::from(train);
        }
        for &id in extra_ignore {
            let id = usize::from(id);
            if id >= table.len() {
                table.resize(id + 1, UNKNOWN);
            }
            table[id] = u16::from(ignore);
        }
        Self {
            name: name.into(),
            table,
        }
    }

    /// Labels that already hold trainIds: `0..num_classes` and `ignore` are
    /// known; `ignore` is read as [`IGNORE_INDEX`] (the in-memory ignore value).
    pub fn train_ids(num_classes: usize, ignore: u8) -> Self {
        let mut table = vec![UNKNOWN; 256];
        for (c, slot) in table.iter_mut().enumerate().take(num_classes.min(256)) {
            *slot = c as u16;
        }
        table[usize::from(ignore)] = u16::from(IGNORE_INDEX);
        let len = table
            .iter()
            .rposition(|&v| v != UNKNOWN)
            .map_or(0, |p| p + 1);
        table.truncate(len);
        Self {
            name: format!(
                "trainIds (0–{} and {ignore})",
                num_classes.saturating_sub(1)
            ),
            table,
        }
    }

    /// The trainId of `id`, `None` if the id is unknown.
    pub fn get(&self, id: u16) -> Option<u8> {
        match self.table.get(usize::from(id)) {
            Some(&v) if v != UNKNOWN => Some(v as u8),
            _ => None,
        }
    }

    /// A 256-entry table for 8-bit ids, `None` where unknown.
    fn table8(&self) -> [Option<u8>; 256] {
        let mut t = [None; 256];
        for (id, slot) in t.iter_mut().enumerate() {
            *slot = self.get(id as u16);
        }
        t
    }

    /// Map ids to trainIds; unknown ids are an error naming `path`, each
    /// unknown id and how many pixels hold it.
    pub fn apply8(&self, path: &Path, ids: &[u8]) -> Result<Vec<u8>> {
        let t = self.table8();
        let mut out = Vec::with_capacity(ids.len());
        let mut bad = false;
        for &id in ids {
            match t[usize::from(id)] {
                Some(v) => out.push(v),
                None => {
                    bad = true;
                    out.push(IGNORE_INDEX);
                }
            }
        }
        if bad {
            return Err(self.unknown_error(path, ids.iter().map(|&v| u16::from(v))));
        }
        Ok(out)
    }

    pub fn apply16(&self, path: &Path, ids: &[u16]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(ids.len());
        let mut bad = false;
        for &id in ids {
            match self.get(id) {
                Some(v) => out.push(v),
                None => {
                    bad = true;
                    out.push(IGNORE_INDEX);
                }
            }
        }
        if bad {
            return Err(self.unknown_error(path, ids.iter().copied()));
        }
        Ok(out)
    }

    fn unknown_error(&self, path: &Path, ids: impl Iterator<Item = u16>) -> Error {
        let mut counts = std::collections::BTreeMap::<u16, usize>::new();
        for id in ids {
            if self.get(id).is_none() {
                *counts.entry(id).or_default() += 1;
            }
        }
        let list: Vec<String> = counts
            .iter()
            .take(12)
            .map(|(id, n)| format!("{id} ({n} px)"))
            .collect();
        let more = if counts.len() > 12 {
            format!(" and {} more", counts.len() - 12)
        } else {
            String::new()
        };
        Error::file(
            path,
            format!(
                "unknown label id {}{more}: not among the {} (the dataset kind may be wrong)",
                list.join(", "),
                self.name
            ),
        )
    }
}

/// GTA5 and Cityscapes label ids → trainIds (`lhoyer/MIC
/// seg/tools/convert_datasets/gta.py::convert_to_train_id`). Ids 0–33 are
/// known, the 19 listed map to their trainId and the rest to ignore; 255 is
/// also accepted as ignore (where Cityscapes' id −1, the licence plate, ends up
/// in an 8-bit file).
pub const CITYSCAPES_ID_TO_TRAIN_ID: [(u16, u8); 19] = [
    (7, 0),
    (8, 1),
    (11, 2),
    (12, 3),
    (13, 4),
    (17, 5),
    (19, 6),
    (20, 7),
    (21, 8),
    (22, 9),
    (23, 10),
    (24, 11),
    (25, 12),
    (26, 13),
    (27, 14),
    (28, 15),
    (31, 16),
    (32, 17),
    (33, 18),
];

/// SYNTHIA RAND_CITYSCAPES class ids → trainIds (`lhoyer/MIC
/// seg/tools/convert_datasets/synthia.py::convert_to_train_id`). SYNTHIA
/// ids run 0–22; terrain (9), truck (14) and train (16) have no SYNTHIA id.
pub const SYNTHIA_ID_TO_TRAIN_ID: [(u16, u8); 16] = [
    (3, 0),
    (4, 1),
    (2, 2),
    (21, 3),
    (5, 4),
    (7, 5),
    (15, 6),
    (9, 7),
    (6, 8),
    (1, 10),
    (10, 11),
    (17, 12),
    (8, 13),
    (19, 15),
    (12, 17),
    (11, 18),
];

/// The highest SYNTHIA RAND_CITYSCAPES class id (lane marking).
pub const SYNTHIA_MAX_ID: u16 = 22;

pub fn cityscapes_id_map() -> IdMap {
    IdMap::from_pairs(
        "Cityscapes label ids (0–33, 255)",
        33,
        &CITYSCAPES_ID_TO_TRAIN_ID,
        &[255],
        IGNORE_INDEX,
    )
}

pub fn synthia_id_map() -> IdMap {
    IdMap::from_pairs(
        "SYNTHIA class ids (0–22)",
        SYNTHIA_MAX_ID,
        &SYNTHIA_ID_TO_TRAIN_ID,
        &[],
        IGNORE_INDEX,
    )
}

/// How the ids of a label PNG are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelStorage {
    /// One 8-bit channel: grey levels or palette indices.
    Gray8,
    /// One channel of a 16-bit (or 8-bit) PNG, in PNG channel order (R = 0).
    ///
    /// SYNTHIA: the reference reads `cv2.imread(f, IMREAD_UNCHANGED)[:, :, -1]`;
    /// OpenCV returns channels as BGR, so its last channel is the PNG's first
    /// (R), which holds the class id (the second holds the instance id).
    Channel16(usize),
    /// The SYNTHIA layout ([`png_io::read_synthia_label`]): 16 bits, class id
    /// in the first of at least two channels; other formats are errors.
    Synthia16,
}

/// How to read one kind of label file and turn it into trainIds.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelCodec {
    pub storage: LabelStorage,
    pub map: IdMap,
}

impl LabelCodec {
    pub fn train_ids(num_classes: usize, ignore: u8) -> Self {
        Self {
            storage: LabelStorage::Gray8,
            map: IdMap::train_ids(num_classes, ignore),
        }
    }

    /// Decode `path` into `(width, height, trainIds)`.
    pub fn read(&self, path: &Path) -> Result<(usize, usize, Vec<u8>)> {
        match self.storage {
            LabelStorage::Gray8 => {
                let (w, h, ids) = png_io::read_label8(path)?;
                Ok((w, h, self.map.apply8(path, &ids)?))
            }
            LabelStorage::Channel16(ch) => {
                let (w, h, ids) = png_io::read_label16(path, ch)?;
                Ok((w, h, self.map.apply16(path, &ids)?))
            }
            LabelStorage::Synthia16 => {
                let (w, h, ids) = png_io::read_synthia_label(path)?;
                Ok((w, h, self.map.apply16(path, &ids)?))
            }
        }
    }
}

/// Pixel count of each trainId `< num_classes` (ignore and others not counted).
pub fn class_counts(label: &[u8], num_classes: usize) -> Vec<u64> {
    let mut hist = [0u64; 256];
    for &l in label {
        hist[usize::from(l)] += 1;
    }
    hist[..num_classes.min(256)].to_vec()
}
