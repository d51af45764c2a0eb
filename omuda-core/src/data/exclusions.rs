//! Frames left out of a dataset by `omuda prepare --skip-bad`: the list
//! `excluded_frames.json` in the dataset root names every file that had a
//! problem (relative to the root) and the problem. Opening the dataset
//! ([`Dataset::open`](super::datasets::Dataset::open), [`Scan::exclude`](super::datasets::Scan::exclude)) then drops each frame
//! whose image or label is listed, ignores the listed scan problems, and says
//! how many frames it left out. `prepare` without problems removes the list.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::io::write_atomic;
use crate::{Error, Result};

/// File name of the list, in the dataset root.
pub const EXCLUDED_FILE: &str = "excluded_frames.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exclusions {
    /// What wrote the list and how to undo it.
    pub note: String,
    pub files: Vec<ExcludedFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExcludedFile {
    /// Path relative to the dataset root.
    pub file: String,
    pub problem: String,
}

/// `path` relative to `root` when it lies under it, else as given.
pub fn relative(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

/// Writes the list of `problems` (files under `root`) to
/// `root/excluded_frames.json`; returns its path and the list.
pub fn write(root: &Path, problems: &[(PathBuf, String)]) -> Result<(PathBuf, Exclusions)> {
    let list = Exclusions {
        note: "written by `omuda prepare --skip-bad`: frames whose image or label is listed are \
               left out of training and evaluation; fix the files and run `omuda prepare` again \
               to remove this list"
            .into(),
        files: problems
            .iter()
            .map(|(p, problem)| ExcludedFile {
                file: relative(p, root),
                problem: problem.clone(),
            })
            .collect(),
    };
    let path = root.join(EXCLUDED_FILE);
    let text =
        serde_json::to_string_pretty(&list).map_err(|e| Error::file(&path, e.to_string()))?;
    write_atomic(&path, text.as_bytes())?;
    Ok((path, list))
}

/// Removes a list left by an earlier `--skip-bad`; true if there was one.
pub fn remove(root: &Path) -> Result<bool> {
    let path = root.join(EXCLUDED_FILE);
    if !path.is_file() {
        return Ok(false);
    }
    std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
    Ok(true)
}

/// The list in `root`, if there is one.
pub fn read(root: &Path) -> Result<Option<Exclusions>> {
    let path = root.join(EXCLUDED_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::file(&path, format!("not a list of excluded frames: {e}")))
}

/// The listed files (paths relative to the dataset root).
impl Exclusions {
    pub fn listed(&self) -> HashSet<&str> {
        self.files.iter().map(|f| f.file.as_str()).collect()
    }
}
