//! `omuda eval`: evaluate a saved checkpoint on both val splits.

use std::path::{Path, PathBuf};

use candle_core::Device;
use omuda::{build_method, Error, Result, RunConfig, SelfTraining};

use super::report::{fmt_pct, write_json};
use super::EvalArgs;

/// A method restored from a checkpoint folder, with its configuration and device.
pub struct Restored {
    pub name: String,
    pub cfg: RunConfig,
    pub method: SelfTraining,
    pub device: Device,
}

/// Build the checkpoint's method (named in its `state.json`) from its
/// `config.toml` (or `config`), on the configured device (the `--device` flag
/// wins), and load its state.
pub fn restore(ckpt: &Path, config: Option<&PathBuf>) -> Result<Restored> {
    if !ckpt.join("state.json").is_file() {
        return Err(Error::file(ckpt, "not a checkpoint folder (no state.json)"));
    }
    let mut cfg = match config {
        Some(p) => super::load_config(Some(p))?,
        None => super::load_config(Some(&ckpt.join("config.toml")))?,
    };
    if let Some(Some(d)) = super::DEVICE_FLAG.get() {
        cfg.device = d.clone();
    }
    // The checkpoint replaces every tensor: pretrained weights are not needed.
    cfg.model.weights = None;
    let state_text = std::fs::read_to_string(ckpt.join("state.json"))
        .map_err(|e| Error::io(ckpt.join("state.json"), e))?;
    let state: serde_json::Value = serde_json::from_str(&state_text)
        .map_err(|e| Error::file(ckpt.join("state.json"), e.to_string()))?;
    let name = state["method"]
        .as_str()
        .ok_or_else(|| Error::file(ckpt.join("state.json"), "missing key `method`"))?
        .to_string();
    let device = cfg.open_device()?;
    let mut method = omuda::attach_plugins(build_method(&name, &cfg, &device)?, &cfg)?;
    method.load_state(ckpt)?;
    Ok(Restored {
        name,
        cfg,
        method,
        device,
    })
}

pub fn run(args: EvalArgs) -> Result<()> {
    let ckpt = &args.checkpoint;
    let Restored {
        name,
        cfg,
        method,
        device,
    } = restore(ckpt, args.config.as_ref())?;
    let predict = |x: &candle_core::Tensor| Ok(method.predict(x)?);
    use omuda::core::data::config::TargetSplit;
    use omuda::run::{evaluate_source_val, evaluate_target, evaluate_target_to};
    let target = evaluate_target_to(
        &cfg,
        TargetSplit::Test,
        &device,
        &predict,
        args.save_predictions.as_deref(),
    )?;
    let dev = evaluate_target(&cfg, TargetSplit::Dev, &device, &predict)?;
    let source = evaluate_source_val(&cfg, &device, &predict)?;
    println!("{name} (iteration {}): target-test", method.iteration());
    print!("{}", target.table());
    println!("target-dev mIoU {}", fmt_pct(dev.miou));
    println!("source-val mIoU {}", fmt_pct(source.miou));
    let out = args.out.unwrap_or_else(|| ckpt.join("eval.json"));
    write_json(
        &out,
        &serde_json::json!({ "method": name, "iteration": method.iteration(), "target_test": target, "target_dev": dev, "source_val": source }),
    )?;
    println!("wrote {}", out.display());
    if let Some(d) = &args.save_predictions {
        println!(
            "wrote {} colourised target-test predictions to {}",
            target.num_images,
            d.display()
        );
    }
    Ok(())
}
