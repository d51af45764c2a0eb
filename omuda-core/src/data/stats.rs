//! The RCS statistics files of the reference converters (`lhoyer/MIC
//! seg/tools/convert_datasets/gta.py::save_class_stats`):
//!
//! - `sample_class_stats.json`: a list, one object per label file,
//!   `{"<trainId>": pixels, ..., "file": "<label path>"}`, classes with a
//!   non-zero count only, ascending trainId, counted at the file's resolution;
//! - `sample_class_stats_dict.json`: `{"<file>": {"<trainId>": pixels, ...}}`;
//! - `samples_with_class.json`: `{"<trainId>": [["<file>", pixels], ...]}`,
//!   classes in order of first appearance, files in list order.
//!
//! The files are written like Python's `json.dump(..., indent=2)` (two-space
//! indent, non-ASCII escaped), so they can be diffed against the reference's.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::io::write_atomic;
use crate::{Error, Result};

/// Class pixel counts of one label file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameStats {
    pub file: String,
    /// `(trainId, pixels)`, ascending trainId, pixels > 0.
    pub counts: Vec<(u8, u64)>,
}

impl FrameStats {
    /// From a per-class histogram (index = trainId).
    pub fn from_hist(file: String, hist: &[u64]) -> Self {
        let counts = hist
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(c, &n)| (c as u8, n))
            .collect();
        Self { file, counts }
    }
}

pub const SAMPLE_CLASS_STATS: &str = "sample_class_stats.json";
pub const SAMPLE_CLASS_STATS_DICT: &str = "sample_class_stats_dict.json";
pub const SAMPLES_WITH_CLASS: &str = "samples_with_class.json";

/// A JSON value with ordered object keys.
enum J {
    Num(u64),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

fn quote(s: &str, out: &mut String) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{:04x}", u));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn dump(v: &J, level: usize, out: &mut String) {
    let pad = |l: usize| "  ".repeat(l);
    match v {
        J::Num(n) => out.push_str(&n.to_string()),
        J::Str(s) => quote(s, out),
        J::Arr(items) if items.is_empty() => out.push_str("[]"),
        J::Obj(items) if items.is_empty() => out.push_str("{}"),
        J::Arr(items) => {
            out.push_str("[\n");
            for (i, it) in items.iter().enumerate() {
                out.push_str(&pad(level + 1));
                dump(it, level + 1, out);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(level));
            out.push(']');
        }
        J::Obj(items) => {
            out.push_str("{\n");
            for (i, (k, it)) in items.iter().enumerate() {
                out.push_str(&pad(level + 1));
                quote(k, out);
                out.push_str(": ");
                dump(it, level + 1, out);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(level));
            out.push('}');
        }
    }
}

fn to_text(v: &J) -> String {
    let mut s = String::new();
    dump(v, 0, &mut s);
    s
}

/// The three files' contents, in the order
/// (`sample_class_stats.json`, `sample_class_stats_dict.json`, `samples_with_class.json`).
pub fn render_stats(stats: &[FrameStats]) -> (String, String, String) {
    let counts = |f: &FrameStats| {
        f.counts
            .iter()
            .map(|(c, n)| (c.to_string(), J::Num(*n)))
            .collect::<Vec<_>>()
    };
    let list = J::Arr(
        stats
            .iter()
            .map(|f| {
                let mut o = counts(f);
                o.push(("file".into(), J::Str(f.file.clone())));
                J::Obj(o)
            })
            .collect(),
    );
    // Python dicts keep the last value of a repeated key at its first position.
    let mut dict: Vec<(String, J)> = Vec::new();
    for f in stats {
        match dict.iter_mut().find(|(k, _)| *k == f.file) {
            Some(slot) => slot.1 = J::Obj(counts(f)),
            None => dict.push((f.file.clone(), J::Obj(counts(f)))),
        }
    }
    let mut with_class: Vec<(u8, Vec<J>)> = Vec::new();
    for f in stats {
        for &(c, n) in &f.counts {
            let pair = J::Arr(vec![J::Str(f.file.clone()), J::Num(n)]);
            match with_class.iter_mut().find(|(k, _)| *k == c) {
                Some(slot) => slot.1.push(pair),
                None => with_class.push((c, vec![pair])),
            }
        }
    }
    let with_class = J::Obj(
        with_class
            .into_iter()
            .map(|(c, v)| (c.to_string(), J::Arr(v)))
            .collect(),
    );
    (to_text(&list), to_text(&J::Obj(dict)), to_text(&with_class))
}

/// Write the three statistics files into `dir`.
pub fn write_stats(dir: &Path, stats: &[FrameStats]) -> Result<()> {
    let (a, b, c) = render_stats(stats);
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_atomic(&dir.join(SAMPLE_CLASS_STATS), a.as_bytes())?;
    write_atomic(&dir.join(SAMPLE_CLASS_STATS_DICT), b.as_bytes())?;
    write_atomic(&dir.join(SAMPLES_WITH_CLASS), c.as_bytes())?;
    Ok(())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::file(
            path,
            "RCS statistics not found: run `omuda prepare <dataset-root> --kind <kind>` to write them",
        ),
        _ => Error::io(path, e),
    })?;
    serde_json::from_str(&text).map_err(|e| Error::file(path, format!("invalid JSON: {e}")))
}

fn class_key(path: &Path, k: &str) -> Result<u8> {
    k.parse::<u8>()
        .map_err(|_| Error::file(path, format!("key {k:?} is not a class index")))
}

fn count_of(path: &Path, v: &Value, what: &str) -> Result<u64> {
    v.as_u64()
        .ok_or_else(|| Error::file(path, format!("{what}: {v} is not a pixel count")))
}

/// Read `sample_class_stats.json`.
pub fn read_sample_class_stats(path: &Path) -> Result<Vec<FrameStats>> {
    let v = read_json(path)?;
    let list = v
        .as_array()
        .ok_or_else(|| Error::file(path, "expected a JSON list of per-file objects"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let obj = item
            .as_object()
            .ok_or_else(|| Error::file(path, format!("entry {i} is not an object")))?;
        let file = obj
            .get("file")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::file(path, format!("entry {i} has no \"file\" string")))?
            .to_string();
        let mut counts = Vec::new();
        for (k, n) in obj {
            if k == "file" {
                continue;
            }
            counts.push((
                class_key(path, k)?,
                count_of(path, n, &format!("entry {i}, class {k}"))?,
            ));
        }
        counts.sort();
        out.push(FrameStats { file, counts });
    }
    Ok(out)
}

/// Read `samples_with_class.json`: class → `[(file, pixels)]`.
pub fn read_samples_with_class(path: &Path) -> Result<BTreeMap<u8, Vec<(String, u64)>>> {
    let v = read_json(path)?;
    let obj = v
        .as_object()
        .ok_or_else(|| Error::file(path, "expected a JSON object keyed by class"))?;
    let mut out = BTreeMap::new();
    for (k, list) in obj {
        let c = class_key(path, k)?;
        let items = list
            .as_array()
            .ok_or_else(|| Error::file(path, format!("class {k}: expected a list")))?;
        let mut v = Vec::with_capacity(items.len());
        for it in items {
            let pair = it.as_array().filter(|a| a.len() == 2);
            let (Some(file), Some(n)) = (pair.and_then(|a| a[0].as_str()), pair.map(|a| &a[1]))
            else {
                return Err(Error::file(
                    path,
                    format!("class {k}: expected [file, pixels] pairs, found {it}"),
                ));
            };
            v.push((
                file.to_string(),
                count_of(path, n, &format!("class {k}, {file}"))?,
            ));
        }
        out.insert(c, v);
    }
    Ok(out)
}
