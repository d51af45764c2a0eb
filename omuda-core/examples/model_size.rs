//! Parameter count, forward time and peak memory of a network.
//!
//!     cargo run --release -p omuda-core --example model_size -- [MODEL] [SIZE] [BATCH] [--graph | --backward]
//!
//! Defaults: `daformer_mitb5`, 512, 1. Builds the model (19 classes) with the
//! seeded initialisation and runs one forward on a random SIZE×SIZE batch:
//! - default: eval mode on detached weights (inference: no autograd graph, so
//!   intermediate tensors are freed as the forward proceeds);
//! - `--graph`: eval mode on the trainable weights (Candle records the graph
//!   and keeps every intermediate tensor alive until the output is dropped);
//! - `--backward`: train-mode forward and the backward of the logits' sum.
//!
//! Prints the parameter count, and after each phase the process's resident
//! memory (`VmRSS` / peak `VmHWM` from `/proc/self/status`) and CPU time
//! (`/proc/self/stat`; Linux only). On a loaded machine the CPU time is the
//! better measure of the work than the wall time.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use omuda_core::nn::{build_segmentor, is_buffer, seeded_var_builder, ForwardCtx, ModelConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// (VmRSS, VmHWM) in MiB, if the platform reports them.
fn memory() -> Option<(f64, f64)> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |key: &str| -> Option<f64> {
        let line = s.lines().find(|l| l.starts_with(key))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// User + system CPU time of the process in seconds (`/proc/self/stat`, in
/// clock ticks of 1/100 s on Linux), if the platform reports it.
fn cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn report(phase: &str) {
    let cpu = cpu_seconds()
        .map(|c| format!("   CPU time {c:>7.1} s"))
        .unwrap_or_default();
    match memory() {
        Some((rss, hwm)) => {
            println!("{phase:<28} RSS {rss:>8.0} MiB   peak RSS {hwm:>8.0} MiB{cpu}")
        }
        None => println!("{phase:<28} (memory not reported on this platform){cpu}"),
    }
}

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backward = args.iter().any(|a| a == "--backward");
    let graph = args.iter().any(|a| a == "--graph");
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let name = pos.first().map(|s| s.as_str()).unwrap_or("daformer_mitb5");
    let size: usize = match pos.get(1) {
        Some(s) => s
            .parse()
            .map_err(|_| candle_core::Error::Msg(format!("bad size {s:?}")))?,
        None => 512,
    };
    let batch: usize = match pos.get(2) {
        Some(s) => s
            .parse()
            .map_err(|_| candle_core::Error::Msg(format!("bad batch {s:?}")))?,
        None => 1,
    };
    report("start");
    let cfg = ModelConfig {
        name: name.to_string(),
        ..ModelConfig::default()
    };
    let vars = VarMap::new();
    let t0 = Instant::now();
    let model = build_segmentor(&cfg, seeded_var_builder(&vars, 0, DType::F32, &Device::Cpu))?;
    let build_s = t0.elapsed().as_secs_f64();
    let (mut params, mut buffers, mut enc, mut head) = (0usize, 0usize, 0usize, 0usize);
    for (n, v) in vars
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("lock".into()))?
        .iter()
    {
        let c = v.as_tensor().elem_count();
        if is_buffer(n) {
            buffers += c;
        } else {
            params += c;
            if n.starts_with("decode_head.") {
                head += c;
            } else {
                enc += c;
            }
        }
    }
    println!("model {name}: {params} parameters (encoder {enc}, decode head {head}), {buffers} buffer values; built in {build_s:.1} s");
    report("after build");
    let x = Tensor::randn(0f32, 1.0, (batch, 3, size, size), &Device::Cpu)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let t0 = Instant::now();
    if backward {
        let xv = Var::from_tensor(&x)?;
        let y = model.forward(xv.as_tensor(), &mut ForwardCtx::train(&mut rng))?;
        let fwd = t0.elapsed().as_secs_f64();
        println!(
            "train forward {batch}x3x{size}x{size} -> {:?} in {fwd:.2} s",
            y.dims()
        );
        report("after train forward");
        let t1 = Instant::now();
        let g = y.sum_all()?.backward()?;
        println!(
            "backward in {:.2} s ({} gradients)",
            t1.elapsed().as_secs_f64(),
            vars.all_vars()
                .iter()
                .filter(|v| g.get(v.as_tensor()).is_some())
                .count()
        );
        report("after backward");
    } else if graph {
        let y = model.forward(&x, &mut ForwardCtx::eval(&mut rng))?;
        println!(
            "eval forward (graph) {batch}x3x{size}x{size} -> {:?} in {:.2} s",
            y.dims(),
            t0.elapsed().as_secs_f64()
        );
        report("after eval forward (graph)");
    } else {
        // The same weights as plain tensors: no graph is recorded.
        let detached: HashMap<String, Tensor> = vars
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("lock".into()))?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_detached_tensor()))
            .collect();
        let frozen = build_segmentor(
            &cfg,
            VarBuilder::from_tensors(detached, DType::F32, &Device::Cpu),
        )?;
        drop(model);
        let t0 = Instant::now();
        let y = frozen.forward(&x, &mut ForwardCtx::eval(&mut rng))?;
        println!(
            "eval forward {batch}x3x{size}x{size} -> {:?} in {:.2} s",
            y.dims(),
            t0.elapsed().as_secs_f64()
        );
        report("after eval forward");
    }
    Ok(())
}
