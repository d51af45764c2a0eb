//! `omuda plot <out>`: training curves of a run folder as PNG, from each
//! method's `log.jsonl`: losses, learning rate and the target mIoU of the
//! periodic evaluations (dev split).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use omuda::plot::{line_chart, line_chart_scaled, Series};
use omuda::{Error, Result};

#[derive(clap::Args)]
pub struct PlotArgs {
    /// A run folder (`--out` of `omuda train`, holding `<method>/log.jsonl`),
    /// a multi-seed folder, or one method's folder.
    pub out: PathBuf,
}

/// Method folders (holding `log.jsonl`) under `dir`, at most two levels down.
fn method_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.join("log.jsonl").is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut found = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
            let p = entry.map_err(|e| Error::io(&d, e))?.path();
            if !p.is_dir() {
                continue;
            }
            if p.join("log.jsonl").is_file() {
                found.push(p);
            } else if depth < 1 {
                stack.push((p, depth + 1));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The curves of one `log.jsonl`.
#[derive(Default)]
pub struct Curves {
    pub losses: BTreeMap<String, Vec<(f64, f64)>>,
    pub lr: Vec<(f64, f64)>,
    pub miou: Vec<(f64, f64)>,
}

pub fn read_log(path: &Path) -> Result<Curves> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut c = Curves::default();
    let n = text.lines().count();
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            // A run killed while writing leaves a torn last line.
            Err(_) if i + 1 == n => break,
            Err(e) => return Err(Error::file(path, format!("line {}: {e}", i + 1))),
        };
        let Some(iter) = v["iter"].as_f64() else {
            continue;
        };
        match v["type"].as_str() {
            Some("step") => {
                if let Some(lr) = v["lr"].as_f64() {
                    c.lr.push((iter, lr));
                }
                if let Some(obj) = v["losses"].as_object() {
                    for (k, val) in obj {
                        if let Some(x) = val.as_f64() {
                            c.losses.entry(k.clone()).or_default().push((iter, x));
                        }
                    }
                }
                if let Some(t) = v["total_loss"].as_f64() {
                    c.losses.entry("total".into()).or_default().push((iter, t));
                }
            }
            Some("eval") => {
                if let Some(m) = v["target_miou"].as_f64() {
                    c.miou.push((iter, m));
                }
            }
            _ => {}
        }
    }
    Ok(c)
}

pub fn run(args: PlotArgs) -> Result<()> {
    let dirs = method_dirs(&args.out)?;
    if dirs.is_empty() {
        return Err(Error::file(
            &args.out,
            "no log.jsonl found here or in the method folders below",
        ));
    }
    let plots = args.out.join("plots");
    let mut loss_all: Vec<Series> = Vec::new();
    let mut lr_all: Vec<Series> = Vec::new();
    let mut miou_all: Vec<Series> = Vec::new();
    for d in &dirs {
        let label = d
            .strip_prefix(&args.out)
            .ok()
            .map(|p| p.display().to_string())
            .filter(|s| !s.is_empty());
        let label = label.unwrap_or_else(|| {
            d.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let c = read_log(&d.join("log.jsonl"))?;
        if let Some(total) = c.losses.get("total") {
            loss_all.push((label.clone(), total.clone()));
        }
        lr_all.push((label.clone(), c.lr.clone()));
        if !c.miou.is_empty() {
            miou_all.push((label.clone(), c.miou.clone()));
        }
        // Per method: every loss term.
        let series: Vec<Series> = c
            .losses
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !series.is_empty() {
            let p = d.join("plots").join("losses.png");
            line_chart(
                &p,
                &format!("{label}: losses"),
                "iteration",
                "loss",
                &series,
            )?;
            println!("wrote {}", p.display());
        }
    }
    let mut written = Vec::new();
    if !loss_all.is_empty() {
        let p = plots.join("total_loss.png");
        line_chart(&p, "total loss", "iteration", "loss", &loss_all)?;
        written.push(p);
    }
    if lr_all.iter().any(|s| !s.1.is_empty()) {
        let p = plots.join("lr.png");
        line_chart_scaled(&p, "learning rate", "iteration", "lr", &lr_all, true)?;
        written.push(p);
    }
    if !miou_all.is_empty() {
        let p = plots.join("target_miou.png");
        line_chart(&p, "target-dev mIoU", "iteration", "mIoU (%)", &miou_all)?;
        written.push(p);
    }
    for p in written {
        println!("wrote {}", p.display());
    }
    Ok(())
}
