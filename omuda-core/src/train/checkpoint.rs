//! Resumable run checkpoints: the method's state (student, teacher, optimizer
//! moments and step, hook state, iteration, step RNG; see
//! [`UdaMethod::save_state`]) plus a JSON sidecar `run.json` with what the run
//! around the method needs (data-order state, evaluation history, best mIoU so
//! far, resolved configuration, code version).
//!
//! Layout of a method's output folder:
//!
//! ```text
//! <method>/checkpoints/iter_00000200/   periodic, the newest `keep_last` kept
//! <method>/best/                        the checkpoint with the best target mIoU
//! <method>/checkpoint/                  the final state (written when training ends)
//! ```
//!
//! Every checkpoint folder is written into a temporary sibling (`.<name>.tmp<pid>`)
//! whose files are flushed to disk before it is renamed into place, so a crash
//! at any point leaves either the previous folder set or the new one, never a
//! partial checkpoint. Temporaries left by a crash are removed by
//! [`clean_temporaries`] (called on resume).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::batch::BatchSource;
use crate::io::{replace_dir_atomic, write_atomic};
use crate::train::method::UdaMethod;
use crate::{Error, Result};

/// Version of the sidecar layout.
pub const SIDECAR_FORMAT: u32 = 1;
pub const SIDECAR_FILE: &str = "run.json";
pub const PERIODIC_DIR: &str = "checkpoints";
pub const BEST_DIR: &str = "best";
pub const FINAL_DIR: &str = "checkpoint";

/// The best evaluation so far.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub iteration: usize,
    pub miou: f64,
}

/// `run.json`: everything besides the method's own state that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSidecar {
    pub format: u32,
    /// `omuda <version>` plus the source commit when the build recorded one.
    pub code_version: String,
    pub method: String,
    /// Iterations done; the learning-rate schedule position is this iteration.
    pub iteration: usize,
    /// Learning rate of the next iteration (informative; recomputed from the schedule).
    pub next_lr: f64,
    /// The batch source's data-order state ([`BatchSource::order_state`]).
    pub data_order: serde_json::Value,
    /// Target-val mIoU of each evaluation during training, (iteration, mIoU).
    pub target_curve: Vec<(usize, Option<f64>)>,
    pub best: Option<Best>,
    /// Seconds of training (evaluations excluded) up to this checkpoint.
    pub train_seconds: f64,
    /// The resolved run configuration, TOML.
    pub config: String,
}

impl RunSidecar {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(SIDECAR_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let s: RunSidecar =
            serde_json::from_str(&text).map_err(|e| Error::file(&path, e.to_string()))?;
        if s.format != SIDECAR_FORMAT {
            return Err(Error::file(
                &path,
                format!(
                    "sidecar format {}, this build reads {SIDECAR_FORMAT}",
                    s.format
                ),
            ));
        }
        Ok(s)
    }
}

/// The version string recorded in checkpoints.
pub fn code_version() -> String {
    match option_env!("OMUDA_GIT_COMMIT") {
        Some(c) if !c.is_empty() => format!("omuda {} ({c})", env!("CARGO_PKG_VERSION")),
        _ => format!("omuda {}", env!("CARGO_PKG_VERSION")),
    }
}

/// Write a checkpoint of `method` and `data` with `sidecar` into `dir`,
/// replacing it atomically. `mid_write`, when given, runs after the method's
/// files are written and before the sidecar (a test hook to interrupt a write).
pub fn save_checkpoint(
    dir: &Path,
    method: &dyn UdaMethod,
    sidecar: &RunSidecar,
    mid_write: Option<&dyn Fn(&Path)>,
) -> Result<()> {
    if sidecar.iteration != method.iteration() {
        return Err(Error::msg(format!(
            "checkpoint {}: sidecar says iteration {}, the method is at {}",
            dir.display(),
            sidecar.iteration,
            method.iteration()
        )));
    }
    replace_dir_atomic(dir, |tmp| {
        method.save_state(tmp)?;
        if let Some(hook) = mid_write {
            hook(tmp);
        }
        std::fs::write(tmp.join("config.toml"), &sidecar.config)
            .map_err(|e| Error::io(tmp.join("config.toml"), e))?;
        let path = tmp.join(SIDECAR_FILE);
        let json =
            serde_json::to_string_pretty(sidecar).map_err(|e| Error::file(&path, e.to_string()))?;
        std::fs::write(&path, json).map_err(|e| Error::io(&path, e))
    })
}

/// Restore `method` and `data` from a checkpoint folder; returns its sidecar.
pub fn load_checkpoint(
    dir: &Path,
    method: &mut dyn UdaMethod,
    data: &mut dyn BatchSource,
) -> Result<RunSidecar> {
    let sidecar = RunSidecar::read(dir)?;
    method.load_state(dir)?;
    if method.iteration() != sidecar.iteration {
        return Err(Error::file(
            dir,
            format!(
                "state.json is at iteration {}, run.json at {}",
                method.iteration(),
                sidecar.iteration
            ),
        ));
    }
    data.restore_order_state(&sidecar.data_order)
        .map_err(|e| Error::file(dir.join(SIDECAR_FILE), format!("data_order: {e}")))?;
    Ok(sidecar)
}

/// Folder of the periodic checkpoint at `iteration`.
pub fn periodic_dir(method_dir: &Path, iteration: usize) -> PathBuf {
    method_dir
        .join(PERIODIC_DIR)
        .join(format!("iter_{iteration:08}"))
}

/// Complete periodic checkpoints (with `state.json` and the sidecar), by iteration.
pub fn list_periodic(method_dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let root = method_dir.join(PERIODIC_DIR);
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&root).map_err(|e| Error::io(&root, e))? {
        let path = entry.map_err(|e| Error::io(&root, e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(iter) = name
            .strip_prefix("iter_")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if path.join("state.json").is_file() && path.join(SIDECAR_FILE).is_file() {
            found.push((iter, path));
        }
    }
    found.sort();
    Ok(found)
}

/// The checkpoint a resumed run continues from: the newest complete periodic,
/// best or final checkpoint (by iteration; periodic wins a tie).
pub fn latest(method_dir: &Path) -> Result<Option<(usize, PathBuf)>> {
    let mut candidates = list_periodic(method_dir)?;
    for extra in [BEST_DIR, FINAL_DIR] {
        let dir = method_dir.join(extra);
        if dir.join("state.json").is_file() && dir.join(SIDECAR_FILE).is_file() {
            let s = RunSidecar::read(&dir)?;
            candidates.insert(0, (s.iteration, dir));
        }
    }
    Ok(candidates.into_iter().max_by_key(|(i, _)| *i))
}

/// Remove all but the newest `keep` periodic checkpoints.
pub fn prune_periodic(method_dir: &Path, keep: usize) -> Result<()> {
    let all = list_periodic(method_dir)?;
    let n = all.len().saturating_sub(keep);
    for (_, dir) in all.into_iter().take(n) {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    Ok(())
}

/// Remove temporaries a crash left beside checkpoint folders, and put back a
/// folder whose replacement was interrupted between its two renames
/// (`.<name>.old<pid>` with no `<name>`).
pub fn clean_temporaries(method_dir: &Path) -> Result<()> {
    for dir in [method_dir.to_path_buf(), method_dir.join(PERIODIC_DIR)] {
        if !dir.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let path = entry.map_err(|e| Error::io(&dir, e))?.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            let Some(rest) = name.strip_prefix('.') else {
                continue;
            };
            if let Some((base, pid)) = rest.rsplit_once(".old") {
                if pid.chars().all(|c| c.is_ascii_digit()) && path.is_dir() {
                    let target = dir.join(base);
                    if target.exists() || base.starts_with('.') {
                        std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
                    } else {
                        std::fs::rename(&path, &target).map_err(|e| Error::io(&path, e))?;
                    }
                }
            } else if let Some((_, pid)) = rest.rsplit_once(".tmp") {
                if pid.chars().all(|c| c.is_ascii_digit()) {
                    let r = if path.is_dir() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                    r.map_err(|e| Error::io(&path, e))?;
                }
            }
        }
    }
    Ok(())
}

/// Write `text` to `path` atomically (re-exported for the run's other files).
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(dir: &Path, iter: usize) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("state.json"), "{}").unwrap();
        let s = RunSidecar {
            format: SIDECAR_FORMAT,
            code_version: code_version(),
            method: "m".into(),
            iteration: iter,
            next_lr: 0.0,
            data_order: serde_json::Value::Null,
            target_curve: vec![],
            best: None,
            train_seconds: 0.0,
            config: String::new(),
        };
        std::fs::write(dir.join(SIDECAR_FILE), serde_json::to_string(&s).unwrap()).unwrap();
    }

    #[test]
    fn lists_prunes_and_picks_the_latest() {
        let root = tempfile::tempdir().unwrap();
        let m = root.path();
        for i in [2, 4, 6] {
            fake(&periodic_dir(m, i), i);
        }
        // An incomplete folder (no sidecar) and a temporary are not checkpoints.
        std::fs::create_dir_all(periodic_dir(m, 8)).unwrap();
        std::fs::write(periodic_dir(m, 8).join("state.json"), "{}").unwrap();
        std::fs::create_dir_all(m.join(PERIODIC_DIR).join(".iter_00000010.tmp77")).unwrap();
        let l: Vec<usize> = list_periodic(m)
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        assert_eq!(l, vec![2, 4, 6]);
        fake(&m.join(BEST_DIR), 4);
        assert_eq!(latest(m).unwrap().unwrap().1, periodic_dir(m, 6));
        prune_periodic(m, 2).unwrap();
        let l: Vec<usize> = list_periodic(m)
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        assert_eq!(l, vec![4, 6]);
        clean_temporaries(m).unwrap();
        assert!(!m.join(PERIODIC_DIR).join(".iter_00000010.tmp77").exists());
        // An interrupted replacement of `best` is put back.
        std::fs::rename(m.join(BEST_DIR), m.join(".best.old12")).unwrap();
        clean_temporaries(m).unwrap();
        assert!(m.join(BEST_DIR).join(SIDECAR_FILE).is_file());
    }
}
