//! Rare Class Sampling on the built-in synthetic pair: statistics from the
//! generated labels, the reference's sampler semantics (class probabilities,
//! candidate filter), and a loader whose source frames follow it.

use std::sync::Arc;

use candle_core::Device;
use omuda_core::data::loader::SynthPairLoader;
use omuda_core::data::rcs::{candidate_files, class_probs, RcsConfig};
use omuda_core::data::synth::{generate, Domain, Split, SynthConfig};
use omuda_core::data::synth_rcs::{samples_with_class, synth_class_stats, synth_rcs};
use rand::SeedableRng;

fn small() -> SynthConfig {
    SynthConfig {
        height: 32,
        width: 64,
        train_size: 40,
        ..SynthConfig::default()
    }
}

#[test]
fn stats_count_the_generated_labels() {
    let cfg = small();
    let stats = synth_class_stats(&cfg, 7, Domain::Source);
    assert_eq!(stats.len(), 40);
    for i in [0usize, 13, 39] {
        let s = generate(&cfg, 7, Domain::Source, Split::Train, i);
        let mut want = [0u64; 19];
        s.label
            .iter()
            .filter(|&&l| l < 19)
            .for_each(|&l| want[l as usize] += 1);
        let got = &stats[i];
        assert_eq!(got.file, i.to_string());
        for (c, n) in &got.counts {
            assert_eq!(want[*c as usize], *n, "frame {i} class {c}");
        }
        assert_eq!(got.counts.len(), want.iter().filter(|&&n| n > 0).count());
    }
}

#[test]
fn sampler_follows_the_reference_rules() {
    let cfg = small();
    let rcs = RcsConfig {
        class_temp: 0.01,
        min_pixels: 3,
        min_crop_ratio: 0.5,
    };
    let stats = synth_class_stats(&cfg, 7, Domain::Source);
    let swc = samples_with_class(&stats);
    let sampler = synth_rcs(&cfg, 7, Domain::Source, &rcs).unwrap();
    let (classes, probs) = class_probs(&stats, 0.01);
    assert_eq!(sampler.classes, classes);
    assert_eq!(sampler.probs, probs);
    // Candidates: the frames with strictly more than min_pixels of the class.
    for (k, &c) in sampler.classes.iter().enumerate() {
        let want: Vec<usize> = candidate_files(&swc, c, 3)
            .iter()
            .map(|f| f.parse().unwrap())
            .collect();
        assert_eq!(sampler.files[k], want, "class {c}");
        for &f in &sampler.files[k] {
            let n = stats[f].counts.iter().find(|(cc, _)| *cc == c).unwrap().1;
            assert!(n > 3, "frame {f} has {n} px of class {c}");
        }
    }
    // Draws: the rarest class dominates (T = 0.01), and the frame holds it.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let rarest = sampler.classes[0];
    let mut hits = 0;
    for _ in 0..200 {
        let (c, f) = sampler.draw(&mut rng);
        assert!(stats[f].counts.iter().any(|(cc, n)| *cc == c && *n > 3));
        hits += usize::from(c == rarest);
    }
    assert!(
        hits as f32 > 200.0 * sampler.probs[0] * 0.8,
        "{hits} draws of the rarest class, P = {}",
        sampler.probs[0]
    );
    // A threshold no frame passes is an error that names the key to lower.
    let e = synth_rcs(
        &cfg,
        7,
        Domain::Source,
        &RcsConfig {
            min_pixels: 1 << 20,
            ..rcs
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("rcs.min_pixels"), "{e}");
}

#[test]
fn loader_with_rcs_draws_class_then_frame_and_stays_deterministic() {
    use rand::Rng;
    let cfg = small();
    let rcs = RcsConfig {
        class_temp: 0.01,
        min_pixels: 3,
        min_crop_ratio: 0.5,
    };
    let sampler = Arc::new(synth_rcs(&cfg, 7, Domain::Source, &rcs).unwrap());
    let mut l = SynthPairLoader::new(cfg.clone(), 7, Domain::Source, 2, 0, &Device::Cpu)
        .with_rcs(sampler.clone());
    for _ in 0..4 {
        // Replay the loader's generator: per slot a (class, frame) draw, then a flip.
        let mut r = l.rng().clone();
        let draws: Vec<(u8, usize, bool)> = (0..2)
            .map(|_| {
                let (c, f) = sampler.draw(&mut r);
                (c, f, r.gen_bool(0.5))
            })
            .collect();
        let b = l.next_batch().unwrap();
        for (i, (c, f, flip)) in draws.into_iter().enumerate() {
            let s = generate(&cfg, 7, Domain::Source, Split::Train, f);
            let want: Vec<u32> = (0..cfg.height)
                .flat_map(|y| {
                    let row = &s.label[y * cfg.width..(y + 1) * cfg.width];
                    let mut row: Vec<u32> = row.iter().map(|&v| u32::from(v)).collect();
                    if flip {
                        row.reverse();
                    }
                    row
                })
                .collect();
            let got = b
                .source_label
                .get(i)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<u32>()
                .unwrap();
            assert_eq!(got, want, "slot {i}: frame {f}");
            let n = got.iter().filter(|&&v| v == u32::from(c)).count();
            assert!(
                n > 3,
                "slot {i}: frame {f} has {n} px of the sampled class {c}"
            );
        }
    }
    // Same seed, same batches.
    let mut a = SynthPairLoader::new(cfg.clone(), 7, Domain::Source, 2, 3, &Device::Cpu)
        .with_rcs(sampler.clone());
    let mut b = SynthPairLoader::new(cfg, 7, Domain::Source, 2, 3, &Device::Cpu).with_rcs(sampler);
    for _ in 0..3 {
        let (x, y) = (a.next_batch().unwrap(), b.next_batch().unwrap());
        assert_eq!(
            x.source_label
                .flatten_all()
                .unwrap()
                .to_vec1::<u32>()
                .unwrap(),
            y.source_label
                .flatten_all()
                .unwrap()
                .to_vec1::<u32>()
                .unwrap()
        );
    }
}

#[test]
fn synth_rcs_settings_are_checked() {
    let bad: RcsConfig = toml::from_str("class_temp = 0.0\n").unwrap();
    let e = bad.validate().unwrap_err();
    assert!(e.contains("class_temp"), "{e}");
    let cfg: RcsConfig = toml::from_str("min_pixels = 50\n").unwrap();
    assert_eq!(cfg.min_pixels, 50);
    assert!(cfg.validate().is_ok());
}
