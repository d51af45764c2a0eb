//! `omuda eval`: evaluate a saved checkpoint on both val splits.

use candle_core::Device;
use omuda::core::data::synth::Domain;
use omuda::core::eval::evaluate_synth;
use omuda::{build_method, Error, Result, RunConfig};

use super::report::{fmt_pct, write_json};
use super::EvalArgs;

pub fn run(args: EvalArgs) -> Result<()> {
    let ckpt = &args.checkpoint;
    if !ckpt.join("state.json").is_file() {
        return Err(Error::file(ckpt, "not a checkpoint folder (no state.json)"));
    }
    let cfg = match &args.config {
        Some(p) => RunConfig::from_file(p)?,
        None => RunConfig::from_file(&ckpt.join("config.toml"))?,
    };
    let state_text = std::fs::read_to_string(ckpt.join("state.json")).map_err(|e| Error::io(ckpt.join("state.json"), e))?;
    let state: serde_json::Value =
        serde_json::from_str(&state_text).map_err(|e| Error::file(ckpt.join("state.json"), e.to_string()))?;
    let name = state["method"]
        .as_str()
        .ok_or_else(|| Error::file(ckpt.join("state.json"), "missing key `method`"))?
        .to_string();
    let device = Device::Cpu;
    let mut method = build_method(&name, &cfg, &device)?;
    method.load_state(ckpt)?;
    let predict = |x: &candle_core::Tensor| Ok(method.predict(x)?);
    let target = evaluate_synth(&cfg.data.synth, cfg.data.dataset_seed, Domain::Target, &cfg.eval, &device, &predict)?;
    let source = evaluate_synth(&cfg.data.synth, cfg.data.dataset_seed, Domain::Source, &cfg.eval, &device, &predict)?;
    println!("{name} (iteration {}): target-val", method.iteration());
    print!("{}", target.table());
    println!("source-val mIoU {}", fmt_pct(source.miou));
    let out = args.out.unwrap_or_else(|| ckpt.join("eval.json"));
    write_json(&out, &serde_json::json!({ "method": name, "iteration": method.iteration(), "target_val": target, "source_val": source }))?;
    println!("wrote {}", out.display());
    Ok(())
}
