//! `omuda pretrain`: trains the encoder that the `synth-*` presets start
//! from, on the built-in pretraining set (`omuda_core::train::pretrain`).

use std::path::PathBuf;
use std::time::Instant;

use omuda::core::train::pretrain::{pretrain, PretrainConfig};
use omuda::{Error, Result};

#[derive(clap::Args)]
pub struct PretrainArgs {
    /// Where to write the encoder's safetensors (a JSON report is written beside it).
    #[arg(long, default_value = "assets/pretrained/mit_tiny_synth.safetensors")]
    pub out: PathBuf,
    /// A TOML pretraining configuration (default: the one the shipped weights were made with).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Iterations (overrides the configuration).
    #[arg(long)]
    pub iters: Option<usize>,
    /// Seed of the initialisation, the pretraining set and the order (overrides the configuration).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print the configuration and exit.
    #[arg(long)]
    pub show_config: bool,
}

pub fn run(args: PretrainArgs) -> Result<()> {
    let mut cfg = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            toml::from_str::<PretrainConfig>(&text).map_err(|e| Error::file(p, e.to_string()))?
        }
        None => PretrainConfig::default(),
    };
    if let Some(n) = args.iters {
        cfg.iters = n;
    }
    if let Some(s) = args.seed {
        cfg.seed = s;
    }
    cfg.validate()?;
    let text = toml::to_string(&cfg).map_err(|e| Error::msg(e.to_string()))?;
    if args.show_config {
        print!("{text}");
        return Ok(());
    }
    let device = candle_core::Device::Cpu;
    eprintln!(
        "pretraining MiT {} on the built-in pretraining set: {} iterations of {} crops of {}²",
        cfg.encoder, cfg.iters, cfg.batch_size, cfg.set.crop
    );
    let t0 = Instant::now();
    let log_every = (cfg.iters / 20).max(1);
    let done = pretrain(&cfg, &device, log_every, &mut |it, loss, lr| {
        eprintln!(
            "  iter {it:>6}/{}  loss {loss:.4}  lr {lr:.2e}  {:.0} s",
            cfg.iters,
            t0.elapsed().as_secs_f64()
        );
    })?;
    let seconds = t0.elapsed().as_secs_f64();
    done.save(&args.out)?;
    let r = &done.report;
    let report_path = args.out.with_extension("json");
    let json = serde_json::json!({
        "config": cfg,
        "report": r,
        "seconds": seconds,
    });
    let body = serde_json::to_string_pretty(&json).map_err(|e| Error::msg(e.to_string()))?;
    omuda::core::io::write_atomic(&report_path, body.as_bytes())?;
    println!(
        "pretrained in {seconds:.0} s: loss {:.4} → {:.4}; check-set mAP {:.1} % (at initialisation {:.1} %); {} encoder parameters",
        r.first_loss,
        r.last_loss,
        100.0 * r.check_map,
        100.0 * r.check_map_at_init,
        r.encoder_parameters
    );
    let names = omuda::core::data::classes::CITYSCAPES_CLASSES;
    for (c, name) in names.iter().enumerate() {
        match r.check_ap[c] {
            Some(ap) => println!(
                "  {name:<14} AP {:>5.1} %  (in {:>4.1} % of check cells)",
                100.0 * ap,
                100.0 * r.check_prevalence[c]
            ),
            None => println!("  {name:<14} absent from the check cells"),
        }
    }
    println!("wrote {} and {}", args.out.display(), report_path.display());
    Ok(())
}
