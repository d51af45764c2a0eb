//! File globs for folder datasets: `*` (any characters within a path
//! component), `?` (one character), and `**` as a whole component (any
//! number of directories). Matches are files, sorted by path.
//!
//! Each match has a *key*: its path relative to the glob's literal leading
//! directories, without the literal text after the glob's last wildcard. For
//! `images/*.png` the key of `images/a/../x01.png`-style matches is `x01`; for
//! `gtFine/train/*/*_gtFine_labelTrainIds.png` it is `aachen/aachen_000000_000019`.
//! Images and labels whose keys are equal form a pair.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
enum Comp {
    Literal(String),
    Pattern(Vec<char>),
    AnyDirs,
}

/// A parsed glob, relative to a base directory.
#[derive(Debug, Clone)]
pub struct Glob {
    text: String,
    comps: Vec<Comp>,
    /// Number of leading literal components (the fixed directory).
    prefix_len: usize,
    /// Literal text after the last wildcard of the last component.
    suffix: String,
}

/// One file matched by a glob.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GlobMatch {
    pub key: String,
    pub path: PathBuf,
}

impl Glob {
    /// Parse `text`; `what` names the setting in errors (e.g. `spec.toml: images`).
    pub fn parse(text: &str, what: &str) -> Result<Self> {
        let bad = |m: String| Error::msg(format!("{what}: bad glob {text:?}: {m}"));
        if text.is_empty() {
            return Err(bad("it is empty".into()));
        }
        if text.starts_with('/') {
            return Err(bad("it must be relative to the dataset root".into()));
        }
        if let Some(c) = text
            .chars()
            .find(|c| matches!(c, '[' | ']' | '{' | '}' | '\\'))
        {
            return Err(bad(format!(
                "{c:?} is not supported (only *, ? and ** are)"
            )));
        }
        let mut comps = Vec::new();
        for part in text.split('/') {
            if part.is_empty() {
                return Err(bad(
                    "it has an empty path component (\"//\" or a trailing \"/\")".into(),
                ));
            }
            if part == ".." {
                return Err(bad("\"..\" is not allowed".into()));
            }
            if part == "**" {
                comps.push(Comp::AnyDirs);
            } else if part.contains("**") {
                return Err(bad(format!(
                    "\"**\" must be a whole path component, not part of {part:?}"
                )));
            } else if part.contains(['*', '?']) {
                comps.push(Comp::Pattern(part.chars().collect()));
            } else if part != "." {
                comps.push(Comp::Literal(part.to_string()));
            }
        }
        let Some(last) = comps.last() else {
            return Err(bad("it names no file".into()));
        };
        if *last == Comp::AnyDirs {
            return Err(bad(
                "it ends in \"**\": the last component must match file names".into(),
            ));
        }
        let prefix_len = comps
            .iter()
            .take_while(|c| matches!(c, Comp::Literal(_)))
            .count();
        if prefix_len == comps.len() {
            return Err(bad("it has no wildcard (* or ?)".into()));
        }
        let suffix = match last {
            Comp::Pattern(p) => {
                let pos = p
                    .iter()
                    .rposition(|&c| c == '*' || c == '?')
                    .map_or(0, |i| i + 1);
                p[pos..].iter().collect()
            }
            _ => String::new(),
        };
        Ok(Self {
            text: text.into(),
            comps,
            prefix_len,
            suffix,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The fixed leading directory of the glob under `base`.
    pub fn fixed_dir(&self, base: &Path) -> PathBuf {
        let mut d = base.to_path_buf();
        for c in &self.comps[..self.prefix_len] {
            if let Comp::Literal(s) = c {
                d.push(s);
            }
        }
        d
    }

    /// All files under `base` that match, sorted by path. A missing fixed
    /// directory is an error naming it; no match at all is not (the caller
    /// decides whether an empty set is acceptable).
    pub fn matches(&self, base: &Path) -> Result<Vec<GlobMatch>> {
        let dir = self.fixed_dir(base);
        if !dir.is_dir() {
            return Err(Error::file(
                &dir,
                format!("directory of glob {:?} does not exist", self.text),
            ));
        }
        let mut found = Vec::new();
        walk(&dir, &self.comps[self.prefix_len..], &mut found)?;
        found.sort();
        found.dedup();
        let mut out = Vec::with_capacity(found.len());
        for path in found {
            let rel = path.strip_prefix(&dir).unwrap_or(&path);
            let rel = rel.to_string_lossy().replace('\\', "/");
            let key = rel
                .strip_suffix(self.suffix.as_str())
                .unwrap_or(&rel)
                .to_string();
            out.push(GlobMatch { key, path });
        }
        Ok(out)
    }
}

fn walk(dir: &Path, comps: &[Comp], out: &mut Vec<PathBuf>) -> Result<()> {
    let Some((first, rest)) = comps.split_first() else {
        return Ok(());
    };
    match first {
        Comp::Literal(s) => {
            let p = dir.join(s);
            if rest.is_empty() {
                if p.is_file() {
                    out.push(p);
                }
            } else if p.is_dir() {
                walk(&p, rest, out)?;
            }
        }
        Comp::AnyDirs => {
            walk(dir, rest, out)?;
            for entry in read_dir_sorted(dir)? {
                if entry.is_dir() {
                    walk(&entry, comps, out)?;
                }
            }
        }
        Comp::Pattern(p) => {
            for entry in read_dir_sorted(dir)? {
                let Some(name) = entry.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                if !wildcard_match(p, &name.chars().collect::<Vec<_>>()) {
                    continue;
                }
                if rest.is_empty() {
                    if entry.is_file() {
                        out.push(entry);
                    }
                } else if entry.is_dir() {
                    walk(&entry, rest, out)?;
                }
            }
        }
    }
    Ok(())
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut v = Vec::new();
    for e in rd {
        v.push(e.map_err(|e| Error::io(dir, e))?.path());
    }
    v.sort();
    Ok(v)
}

/// `*` and `?` matching of one path component.
pub fn wildcard_match(p: &[char], s: &[char]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        wildcard_match(
            &p.chars().collect::<Vec<_>>(),
            &s.chars().collect::<Vec<_>>(),
        )
    }

    #[test]
    fn wildcards() {
        assert!(m("*.png", "a.png"));
        assert!(m("*_labelTrainIds.png", "00001_labelTrainIds.png"));
        assert!(!m("*_labelTrainIds.png", "00001.png"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("*", ""));
        assert!(m("*a*b", "xxaxxb"));
    }

    #[test]
    fn bad_globs_are_named() {
        for g in [
            "",
            "/abs/*.png",
            "a/[ab].png",
            "a/x**.png",
            "a//*.png",
            "a/**",
            "a/b.png",
            "../*.png",
        ] {
            let e = Glob::parse(g, "spec.toml: images").unwrap_err().to_string();
            assert!(
                e.contains("spec.toml: images") && e.contains("bad glob"),
                "{g}: {e}"
            );
        }
    }

    #[test]
    fn key_strips_fixed_dir_and_suffix() {
        let g = Glob::parse("gtFine/train/*/*_gtFine_labelTrainIds.png", "x").unwrap();
        assert_eq!(g.suffix, "_gtFine_labelTrainIds.png");
        assert_eq!(g.prefix_len, 2);
    }
}
