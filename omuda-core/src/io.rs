//! File output that is never left half-written.

use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Write `bytes` to `path` through a temporary file in the same folder,
/// flushed to disk, then renamed over the target.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Replace the folder `dir` with one that `fill` writes: `fill` writes into a
/// temporary sibling folder, whose files are flushed to disk, which is then
/// renamed to `dir` (the previous `dir` is moved aside first and removed
/// last). If `fill` fails, `dir` is left as it was. A crash between the two
/// renames leaves the previous folder as `.<name>.old<pid>` beside it.
pub fn replace_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp{}", std::process::id()));
    let old = parent.join(format!(".{name}.old{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let written = fill(&tmp).and_then(|()| sync_dir_contents(&tmp));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let had_previous = dir.exists();
    if had_previous {
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    sync_path(parent)?;
    if had_previous {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// fsync every file directly in `dir`, then `dir` itself.
/// Flushes every file of `dir` to disk and gives each the mode a newly
/// created file gets (0666 less the umask): some writers (the safetensors
/// files of candle) create theirs 0600, which a team sharing a file system
/// could not read.
fn sync_dir_contents(dir: &Path) -> Result<()> {
    let mode = default_file_mode(dir)?;
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_file() {
            if let Some(mode) = &mode {
                std::fs::set_permissions(&path, mode.clone()).map_err(|e| Error::io(&path, e))?;
            }
            sync_path(&path)?;
        }
    }
    sync_path(dir)
}

/// The permissions `File::create` gives a new file in `dir` (read from a
/// probe file, so the process umask is honoured without changing it).
fn default_file_mode(dir: &Path) -> Result<Option<std::fs::Permissions>> {
    let probe = dir.join(format!(".mode-probe{}", std::process::id()));
    std::fs::File::create(&probe).map_err(|e| Error::io(&probe, e))?;
    let mode = std::fs::metadata(&probe).map(|m| m.permissions()).ok();
    std::fs::remove_file(&probe).map_err(|e| Error::io(&probe, e))?;
    Ok(mode)
}

fn sync_path(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Quiet mode (`--quiet`): progress and notes are not printed, only results
/// and errors.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, std::sync::atomic::Ordering::Relaxed);
}

/// Whether progress and notes are silenced.
pub fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use crate::Error;

    #[test]
    fn replaces_a_folder_whole_or_not_at_all() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        super::replace_dir_atomic(&dir, |d| {
            std::fs::write(d.join("a"), "1").unwrap();
            Ok(())
        })
        .unwrap();
        super::replace_dir_atomic(&dir, |d| {
            std::fs::write(d.join("b"), "2").unwrap();
            Ok(())
        })
        .unwrap();
        assert!(
            !dir.join("a").exists(),
            "the previous folder is replaced, not merged"
        );
        assert_eq!(std::fs::read_to_string(dir.join("b")).unwrap(), "2");
        // A failing writer leaves the previous folder untouched and no temporary behind.
        let err = super::replace_dir_atomic(&dir, |d| {
            std::fs::write(d.join("c"), "half").unwrap();
            Err(Error::msg("disk full"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read_to_string(dir.join("b")).unwrap(), "2");
        assert!(!dir.join("c").exists());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn checkpoint_files_get_the_mode_of_new_files() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        super::replace_dir_atomic(&dir, |d| {
            let p = d.join("weights.safetensors");
            std::fs::write(&p, "w").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            Ok(())
        })
        .unwrap();
        let fresh = root.path().join("fresh");
        std::fs::write(&fresh, "x").unwrap();
        let want = std::fs::metadata(&fresh).unwrap().permissions().mode();
        let got = std::fs::metadata(dir.join("weights.safetensors"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(got & 0o777, want & 0o777);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no probe left");
    }

    #[test]
    fn writes_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/a.json");
        super::write_atomic(&p, b"one").unwrap();
        super::write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(
            std::fs::read_dir(p.parent().unwrap()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }
}
