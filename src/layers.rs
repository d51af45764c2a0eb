//! Configuration layers: a TOML file may name a `base` (a preset or another
//! file, itself possibly with a base) and states only what differs from it;
//! `--set a.b.c=VALUE` overrides one key after every file. The merged TOML
//! table is then read as a [`RunConfig`].

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use crate::presets::{preset_names, preset_text};
use crate::{Error, Result, RunConfig};

/// Where a configuration's text comes from: a shipped preset or a file.
struct Source {
    text: String,
    /// How errors name it (`preset synth-dacs`, a path).
    origin: String,
    /// The folder relative `base` paths are read from.
    dir: Option<PathBuf>,
}

fn locate(name_or_path: &str, dir: Option<&Path>, key: &str) -> Result<Source> {
    if let Some(text) = preset_text(name_or_path) {
        return Ok(Source {
            text: text.to_string(),
            origin: format!("preset {name_or_path}"),
            dir: None,
        });
    }
    let path = match dir {
        Some(d) if Path::new(name_or_path).is_relative() => d.join(name_or_path),
        _ => PathBuf::from(name_or_path),
    };
    if path.is_file() {
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        return Ok(Source {
            text,
            origin: path.display().to_string(),
            dir: path.parent().map(Path::to_path_buf),
        });
    }
    Err(Error::Config {
        origin: key.into(),
        message: format!(
            "{name_or_path:?} is neither a preset ({}) nor a configuration file",
            preset_names().join(", ")
        ),
    })
}

/// `over` merged into `base`: tables key by key, every other value replaced.
pub fn merge(base: &mut Table, over: Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// The table of `text` with its `base` chain merged under it. `chain` holds
/// the origins already on the chain (a repeat is a cycle).
fn with_bases(
    text: &str,
    origin: &str,
    dir: Option<&Path>,
    chain: &mut Vec<String>,
) -> Result<Table> {
    let mut table: Table = toml::from_str(text).map_err(|e| Error::Config {
        origin: origin.into(),
        message: e.to_string(),
    })?;
    let Some(base) = table.remove("base") else {
        return Ok(table);
    };
    let Value::String(base) = base else {
        return Err(Error::Config {
            origin: origin.into(),
            message: format!("base = {base}: expected a preset name or a file path (a string)"),
        });
    };
    let src = locate(&base, dir, &format!("{origin}: base"))?;
    if chain.contains(&src.origin) {
        chain.push(src.origin);
        return Err(Error::Config {
            origin: origin.into(),
            message: format!("`base` goes round in a cycle: {}", chain.join(" -> ")),
        });
    }
    chain.push(src.origin.clone());
    let mut merged = with_bases(&src.text, &src.origin, src.dir.as_deref(), chain)?;
    merge(&mut merged, table);
    Ok(merged)
}

/// The configuration in `text` (named `origin` in errors; relative bases
/// read from `dir`), its base chain merged under it.
pub fn parse(text: &str, origin: &str, dir: Option<&Path>) -> Result<RunConfig> {
    let table = with_bases(text, origin, dir, &mut vec![origin.to_string()])?;
    from_table(table, origin)
}

/// A preset name or a TOML file, with its base chain, then the `sets`
/// overrides (`a.b.c=VALUE`, each checked for its type as it is applied;
/// the values of the result are checked once, so that every problem is
/// listed). `key` names the option in the error when the name is neither
/// (e.g. `--config`).
pub fn resolve(name_or_path: Option<&str>, sets: &[String], key: &str) -> Result<RunConfig> {
    let (mut table, origin) = match name_or_path {
        Some(n) => {
            let src = locate(n, None, key)?;
            let t = with_bases(
                &src.text,
                &src.origin,
                src.dir.as_deref(),
                &mut vec![src.origin.clone()],
            )?;
            (t, src.origin)
        }
        None => (default_table()?, "built-in configuration".to_string()),
    };
    let mut cfg = typed(table.clone(), &origin)?;
    for set in sets {
        apply_set(&mut table, set)?;
        cfg = typed(table.clone(), &format!("--set {set}"))?;
    }
    if sets.is_empty() {
        cfg.validate(&origin)?;
    } else {
        let applied: Vec<String> = sets.iter().map(|s| format!("--set {s}")).collect();
        cfg.validate(&format!("{origin} with {}", applied.join(", ")))?;
        cfg.overrides = sets.to_vec();
    }
    Ok(cfg)
}

fn default_table() -> Result<Table> {
    toml::from_str(&RunConfig::default().to_toml()?)
        .map_err(|e| Error::msg(format!("built-in configuration: {e}")))
}

fn from_table(table: Table, origin: &str) -> Result<RunConfig> {
    let cfg = typed(table, origin)?;
    cfg.validate(origin)?;
    Ok(cfg)
}

/// The configuration of `table`, its types checked, its values not yet.
fn typed(table: Table, origin: &str) -> Result<RunConfig> {
    let given = crate::config::num_classes_given(&table);
    let mut cfg: RunConfig = Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| Error::Config {
            origin: origin.into(),
            message: e.to_string().trim_end().to_string(),
        })?;
    if !given {
        cfg.classes_from_data();
    }
    Ok(cfg)
}

/// Sets `a.b.c = VALUE` in `table`. VALUE is read as a TOML value (number,
/// boolean, string, list, inline table); anything else is a string.
pub fn apply_set(table: &mut Table, set: &str) -> Result<()> {
    let bad = |message: String| Error::Config {
        origin: format!("--set {set}"),
        message,
    };
    let (key, value) = set
        .split_once('=')
        .ok_or_else(|| bad("expected KEY=VALUE, e.g. train.iters=200".into()))?;
    let path: Vec<&str> = key.trim().split('.').map(str::trim).collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(bad(format!(
            "{key:?} is not a dotted key such as train.iters"
        )));
    }
    let value = value.trim();
    let value = match toml::from_str::<Table>(&format!("v = {value}")) {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| Value::String(value.into())),
        Err(_) => Value::String(value.into()),
    };
    let (last, parents) = path.split_last().ok_or_else(|| bad("empty key".into()))?;
    let mut at = table;
    for (i, p) in parents.iter().enumerate() {
        let entry = at
            .entry(p.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        at = match entry {
            Value::Table(t) => t,
            other => {
                return Err(bad(format!(
                    "{} is a value ({other}), not a table",
                    path[..=i].join(".")
                )))
            }
        };
    }
    at.insert(last.to_string(), value);
    Ok(())
}

/// The keys of `table` that differ from `base`, as a table (for `config
/// show --diff`).
pub fn diff(table: &Table, base: &Table) -> Table {
    let mut out = Table::new();
    for (k, v) in table {
        match (v, base.get(k)) {
            (Value::Table(t), Some(Value::Table(b))) => {
                let d = diff(t, b);
                if !d.is_empty() {
                    out.insert(k.clone(), Value::Table(d));
                }
            }
            (v, Some(b)) if v == b => {}
            (v, _) => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// The resolved configuration of a preset or file and of its base (the
/// built-in configuration when it has none), as TOML tables.
pub fn with_base_tables(name_or_path: &str) -> Result<(Table, Table)> {
    let src = locate(name_or_path, None, "config show --diff")?;
    let own: Table = toml::from_str(&src.text).map_err(|e| Error::Config {
        origin: src.origin.clone(),
        message: e.to_string(),
    })?;
    let full = resolve(Some(name_or_path), &[], "config show --diff")?;
    let base = match own.get("base") {
        Some(Value::String(b)) => {
            let b = src
                .dir
                .as_ref()
                .filter(|_| preset_text(b).is_none() && Path::new(b).is_relative())
                .map(|d| d.join(b).display().to_string())
                .unwrap_or_else(|| b.clone());
            resolve(Some(&b), &[], "base")?
        }
        _ => RunConfig::default(),
    };
    let as_table = |c: &RunConfig| -> Result<Table> {
        toml::from_str(&c.to_toml()?).map_err(|e| Error::msg(format!("config to TOML: {e}")))
    };
    Ok((as_table(&full)?, as_table(&base)?))
}
