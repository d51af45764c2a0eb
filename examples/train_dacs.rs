//! Train DACS for a few iterations on the built-in synthetic pair through the
//! library API, then evaluate on target-val.
//!
//! `cargo run --release --example train_dacs`

use candle_core::Device;
use omuda::core::data::loader::SynthPairLoader;
use omuda::core::data::synth::{Domain, Split};
use omuda::core::eval::evaluate_synth;
use omuda::{build_method, RunConfig};

fn main() -> omuda::Result<()> {
    // On the CPU, tensor work runs fastest on a worker of a compute pool
    // (what every `omuda` command does; see `omuda_core::threads`).
    omuda::core::threads::in_compute_pool(train)
}

fn train() -> omuda::Result<()> {
    let device = Device::Cpu;
    let mut cfg = RunConfig::default();
    cfg.train.iters = 20;
    cfg.data.synth.height = 64;
    cfg.data.synth.width = 128;
    cfg.data.synth.val_size = 8;
    cfg.data.synth.dev_size = 8;
    cfg.data.synth.test_size = 8;

    let mut dacs = build_method("dacs", &cfg, &device)?;
    let mut data = SynthPairLoader::new(
        cfg.data.synth.clone(),
        cfg.data.dataset_seed,
        Domain::Source,
        2,
        cfg.seed,
        &device,
    );
    for _ in 0..cfg.train.iters {
        let log = dacs.step(&data.next_batch()?)?;
        println!("iter {:>3}  {:?}", log.iter, log.losses);
    }
    let report = evaluate_synth(
        &cfg.data.synth,
        cfg.data.dataset_seed,
        Domain::Target,
        Split::Test,
        &cfg.eval,
        &device,
        &|x| Ok(dacs.predict(x)?),
    )?;
    print!("{}", report.table());
    Ok(())
}
