//! Loader throughput: writes synthetic full-size frames in the GTA5
//! (1914×1052) and Cityscapes (2048×1024) layouts to a temporary folder, then
//! measures
//!
//! 1. PNG decoding of a 2048×1024 RGB frame (the `png` crate as used by the
//!    loader, and the `image` crate for comparison);
//! 2. the DAFormer target pipeline (decode → 1024×512 → crop 512² → flip →
//!    normalise) on one thread;
//! 3. whole UDA batches (2 GTA source crops with cat_max_ratio + 2 Cityscapes
//!    target crops) through the prefetching loader with 0 (caller thread), 1,
//!    2, 4 … worker threads.
//!
//! 4. a training loop that takes `step_ms` per batch (simulated with a
//!    sleep) fed by the loader with `max_workers` workers: the time the step
//!    waits for data.
//!
//! Besides wall-clock rates it prints images per CPU-second (process CPU time
//! from `/proc/self/stat`), which does not depend on other load on the machine.
//!
//! ```text
//! cargo run --release -p omuda-core --example loader_throughput -- [frames] [batches] [max_workers] [step_ms]
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use omuda_core::data::datasets::{Dataset, DatasetKind};
use omuda_core::data::pipeline::{PipelineConfig, Prepared};
use omuda_core::data::png_io::{read_rgb, write_gray8, write_rgb8};
use omuda_core::data::prefetch::{normalize_into, DomainData, LoaderOptions, Producer, UdaLoader};
use rand::{Rng, SeedableRng};

/// A photo-like frame: smooth gradients, blocks of colour and sensor noise,
/// so that PNG compression (and decoding cost) is close to a real photo's.
fn frame(w: usize, h: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut img = vec![0u8; w * h * 3];
    let mut lbl = vec![0u8; w * h];
    let horizon = h * 2 / 5;
    for y in 0..h {
        for x in 0..w {
            let (base, class) = if y < horizon {
                ([70.0 + 60.0 * y as f32 / h as f32, 130.0, 180.0], 10u8)
            } else if (x / 97 + y / 61) % 5 == 0 {
                ([0.0, 0.0, 142.0], 13)
            } else if x < w / 6 || x > 5 * w / 6 {
                ([70.0, 70.0, 70.0], 2)
            } else {
                ([128.0, 64.0 + 30.0 * x as f32 / w as f32, 128.0], 0)
            };
            let n: f32 = rng.gen_range(-12.0..12.0);
            for c in 0..3 {
                img[(y * w + x) * 3 + c] = (base[c] + n).clamp(0.0, 255.0) as u8;
            }
            lbl[y * w + x] = class;
        }
    }
    (img, lbl)
}

fn write_trees(root: &Path, frames: usize) -> omuda_core::Result<()> {
    for i in 0..frames {
        let (img, lbl) = frame(1914, 1052, i as u64);
        write_rgb8(
            &root.join(format!("gta/images/{i:05}.png")),
            1914,
            1052,
            &img,
        )?;
        write_gray8(
            &root.join(format!("gta/labels/{i:05}_labelTrainIds.png")),
            1914,
            1052,
            &lbl,
        )?;
        let (img, lbl) = frame(2048, 1024, 1000 + i as u64);
        let base = format!("aachen_{i:06}_000019");
        write_rgb8(
            &root.join(format!(
                "cs/leftImg8bit/train/aachen/{base}_leftImg8bit.png"
            )),
            2048,
            1024,
            &img,
        )?;
        write_gray8(
            &root.join(format!(
                "cs/gtFine/train/aachen/{base}_gtFine_labelTrainIds.png"
            )),
            2048,
            1024,
            &lbl,
        )?;
    }
    Ok(())
}

/// Process CPU time (user + system) in seconds, if `/proc/self/stat` is readable.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit(')').next()?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn per_cpu(images: f64, cpu0: Option<f64>) -> String {
    match (cpu0, cpu_seconds()) {
        (Some(a), Some(b)) if b > a => format!(", {:.1} images per CPU-second", images / (b - a)),
        _ => String::new(),
    }
}

fn main() -> omuda_core::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let frames = args.first().copied().unwrap_or(6);
    let batches = args.get(1).copied().unwrap_or(12);
    let max_workers = args
        .get(2)
        .copied()
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let dir = tempfile::tempdir().map_err(|e| omuda_core::Error::msg(format!("temp dir: {e}")))?;
    let root = dir.path();
    let t0 = Instant::now();
    write_trees(root, frames)?;
    let cs_file = root.join("cs/leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png");
    let size = std::fs::metadata(&cs_file).map(|m| m.len()).unwrap_or(0);
    println!("wrote {frames} GTA (1914×1052) + {frames} Cityscapes (2048×1024) frames in {:.1} s; a Cityscapes PNG is {:.2} MB", t0.elapsed().as_secs_f64(), size as f64 / 1e6);
    println!(
        "cores available: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // 1. PNG decoding.
    let n = frames.max(4);
    let t = Instant::now();
    let c = cpu_seconds();
    for i in 0..n {
        let p = root.join(format!(
            "cs/leftImg8bit/train/aachen/aachen_{:06}_000019_leftImg8bit.png",
            i % frames
        ));
        read_rgb(&p)?;
    }
    let png_rate = n as f64 / t.elapsed().as_secs_f64();
    let png_cpu = per_cpu(n as f64, c);
    let t = Instant::now();
    for i in 0..n {
        let p = root.join(format!(
            "cs/leftImg8bit/train/aachen/aachen_{:06}_000019_leftImg8bit.png",
            i % frames
        ));
        std::hint::black_box(
            image::open(&p)
                .map_err(|e| omuda_core::Error::file(&p, e.to_string()))?
                .to_rgb8(),
        );
    }
    let image_rate = n as f64 / t.elapsed().as_secs_f64();
    println!("decode 2048×1024 RGB PNG, one thread: png crate {png_rate:.1} images/s{png_cpu}; image crate {image_rate:.1} images/s");

    // 2. DAFormer target pipeline on one thread.
    let cs = Arc::new(Dataset::open(
        DatasetKind::Cityscapes,
        &root.join("cs"),
        "train",
    )?);
    let gta = Arc::new(Dataset::open(DatasetKind::Gta, &root.join("gta"), "")?);
    let tp = PipelineConfig::daformer_cityscapes();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let t = Instant::now();
    let c = cpu_seconds();
    let mut out = Vec::new();
    for i in 0..n {
        let (w, h, image) = cs.load_image(i % frames)?;
        let p = Prepared::image_only(image, w, h, &tp);
        let s = p.sample(&tp, &mut rng);
        out.clear();
        normalize_into(&s, &mut out);
    }
    let pipe_rate = n as f64 / t.elapsed().as_secs_f64();
    println!(
        "DAFormer Cityscapes pipeline (decode, 1024×512, crop 512², flip, normalise), one thread: {pipe_rate:.1} images/s{}",
        per_cpu(n as f64, c)
    );

    // 3. Whole UDA batches (2 + 2 images) through the loader.
    let mut workers = vec![0usize, 1];
    let mut w = 2;
    while w <= max_workers {
        workers.push(w);
        w *= 2;
    }
    for &nw in &workers {
        let producer = Producer::new(
            DomainData {
                dataset: gta.clone(),
                pipeline: PipelineConfig::daformer_gta(),
            },
            DomainData {
                dataset: cs.clone(),
                pipeline: tp.clone(),
            },
            None,
            2,
            0,
        )?;
        let mut loader = UdaLoader::new(
            producer,
            LoaderOptions {
                batch_size: 2,
                seed: 0,
                workers: nw,
                prefetch: 2 * nw.max(1),
            },
            &Device::Cpu,
        )?;
        let t = Instant::now();
        let c = cpu_seconds();
        for _ in 0..batches {
            loader.next_batch()?;
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "UDA batches (2 GTA + 2 Cityscapes), {nw} worker(s): {:.2} batches/s = {:.1} images/s{}",
            batches as f64 / secs,
            4.0 * batches as f64 / secs,
            per_cpu(4.0 * batches as f64, c)
        );
    }

    // 4. A training loop of `step_ms` per step fed by the loader.
    let step_ms = args.get(3).copied().unwrap_or(500);
    let producer = Producer::new(
        DomainData {
            dataset: gta.clone(),
            pipeline: PipelineConfig::daformer_gta(),
        },
        DomainData {
            dataset: cs.clone(),
            pipeline: tp.clone(),
        },
        None,
        2,
        1,
    )?;
    let mut loader = UdaLoader::new(
        producer,
        LoaderOptions {
            batch_size: 2,
            seed: 1,
            workers: max_workers,
            prefetch: 8,
        },
        &Device::Cpu,
    )?;
    loader.next_batch()?; // the first batch is always waited for
    let w0 = loader.wait_seconds;
    for _ in 0..batches {
        std::thread::sleep(std::time::Duration::from_millis(step_ms as u64));
        loader.next_batch()?;
    }
    let wait = loader.wait_seconds - w0;
    println!(
        "training loop, step {step_ms} ms (consumes {:.1} images/s), {max_workers} worker(s): waited {:.1} ms per step on average ({:.1} % of the step)",
        4000.0 / step_ms as f64,
        1000.0 * wait / batches as f64,
        100.0 * wait / (batches as f64 * step_ms as f64 / 1000.0)
    );
    Ok(())
}
