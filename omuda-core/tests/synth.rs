//! The built-in synthetic domain pair: determinism, label validity, class
//! coverage, and that the target really differs from the source in class
//! statistics and image statistics. Run with `--nocapture` to see the
//! per-class pixel frequencies of both domains.

use std::sync::OnceLock;

use omuda_core::data::classes::{
    BICYCLE, CAR, CITYSCAPES_CLASSES, IGNORE_INDEX, NUM_CLASSES, PERSON, RIDER,
};
use omuda_core::data::synth::{
    generate, generate_many, sample_seed, Domain, DomainStyle, Sample, Split, SynthConfig,
};

const SEED: u64 = 2024;
const STATS_SAMPLES: usize = 200;

/// Pixel and image statistics of one domain over many samples.
struct DomainStats {
    /// Pixel share of each class, ignore excluded from the classes.
    class_share: [f64; NUM_CLASSES],
    /// Number of samples in which each class occurs.
    class_images: [usize; NUM_CLASSES],
    ignore_share: f64,
    max_image_ignore: f64,
    /// Mean of all channels, 0..255.
    mean: f64,
    /// Mean per-image standard deviation of the grey level (global contrast).
    contrast: f64,
    /// Mean of max(R,G,B) − min(R,G,B) (colourfulness).
    chroma: f64,
}

fn domain_stats(cfg: &SynthConfig, domain: Domain, n: usize) -> DomainStats {
    let indices: Vec<usize> = (0..n).collect();
    let samples = generate_many(cfg, SEED, domain, Split::Train, &indices);
    let mut counts = [0u64; 256];
    let mut class_images = [0usize; NUM_CLASSES];
    let mut max_image_ignore: f64 = 0.0;
    let (mut sum, mut contrast, mut chroma, mut pixels) = (0.0, 0.0, 0.0, 0.0);
    for s in &samples {
        let mut c = [0u64; 256];
        for &l in &s.label {
            c[usize::from(l)] += 1;
        }
        for (k, present) in class_images.iter_mut().enumerate() {
            *present += usize::from(c[k] > 0);
        }
        for (total, n) in counts.iter_mut().zip(c) {
            *total += n;
        }
        max_image_ignore = max_image_ignore.max(c[255] as f64 / s.label.len() as f64);
        let (grey_sum, grey_sq) = s.image.chunks_exact(3).fold((0.0, 0.0), |(a, b), p| {
            let g = (f64::from(p[0]) + f64::from(p[1]) + f64::from(p[2])) / 3.0;
            (a + g, b + g * g)
        });
        let n_px = (s.height * s.width) as f64;
        let grey_mean = grey_sum / n_px;
        contrast += (grey_sq / n_px - grey_mean * grey_mean).max(0.0).sqrt();
        for p in s.image.chunks_exact(3) {
            let (hi, lo) = (p.iter().max().unwrap_or(&0), p.iter().min().unwrap_or(&0));
            chroma += f64::from(hi - lo);
        }
        sum += grey_sum;
        pixels += n_px;
    }
    let total: u64 = counts.iter().sum();
    let mut class_share = [0.0; NUM_CLASSES];
    for (k, share) in class_share.iter_mut().enumerate() {
        *share = counts[k] as f64 / total as f64;
    }
    DomainStats {
        class_share,
        class_images,
        ignore_share: counts[usize::from(IGNORE_INDEX)] as f64 / total as f64,
        max_image_ignore,
        mean: sum / pixels,
        contrast: contrast / samples.len() as f64,
        chroma: chroma / pixels,
    }
}

/// Statistics of both domains with the default config, computed once and
/// shared by the tests below (and printed once).
fn default_stats() -> &'static (DomainStats, DomainStats) {
    static STATS: OnceLock<(DomainStats, DomainStats)> = OnceLock::new();
    STATS.get_or_init(|| {
        let cfg = SynthConfig::default();
        let source = domain_stats(&cfg, Domain::Source, STATS_SAMPLES);
        let target = domain_stats(&cfg, Domain::Target, STATS_SAMPLES);
        print_table(&source, &target);
        (source, target)
    })
}

fn print_table(source: &DomainStats, target: &DomainStats) {
    println!("per-class pixel share over {STATS_SAMPLES} train samples of each domain (128x256):");
    println!(
        "{:<14} {:>9} {:>9} {:>8} {:>8}",
        "class", "source %", "target %", "src img", "tgt img"
    );
    for (k, name) in CITYSCAPES_CLASSES.iter().enumerate() {
        println!(
            "{:<14} {:>9.3} {:>9.3} {:>8} {:>8}",
            name,
            100.0 * source.class_share[k],
            100.0 * target.class_share[k],
            source.class_images[k],
            target.class_images[k]
        );
    }
    for (name, s) in [("source", source), ("target", target)] {
        println!(
            "{name}: ignore {:.2} % (max {:.2} % in one image), mean {:.1}, contrast {:.1}, chroma {:.1}",
            100.0 * s.ignore_share,
            100.0 * s.max_image_ignore,
            s.mean,
            s.contrast,
            s.chroma
        );
    }
}

fn assert_valid(s: &Sample, height: usize, width: usize) {
    assert_eq!((s.height, s.width), (height, width));
    assert_eq!(s.image.len(), height * width * 3);
    assert_eq!(s.label.len(), height * width);
    if let Some(bad) = s
        .label
        .iter()
        .find(|&&l| usize::from(l) >= NUM_CLASSES && l != IGNORE_INDEX)
    {
        panic!("label value {bad} is neither a trainId nor ignore");
    }
}

#[test]
fn same_arguments_give_identical_samples() {
    let cfg = SynthConfig::default();
    for domain in [Domain::Source, Domain::Target] {
        for split in [Split::Train, Split::Val] {
            let a = generate(&cfg, SEED, domain, split, 17);
            let b = generate(&cfg, SEED, domain, split, 17);
            assert_eq!(a, b, "{domain:?} {split:?}");
        }
    }
}

#[test]
fn parallel_generation_matches_sequential_order() {
    let cfg = SynthConfig::default();
    let indices = [5, 0, 3, 3, 11];
    let many = generate_many(&cfg, SEED, Domain::Target, Split::Val, &indices);
    assert_eq!(many.len(), indices.len());
    for (s, &i) in many.iter().zip(&indices) {
        assert_eq!(*s, generate(&cfg, SEED, Domain::Target, Split::Val, i));
    }
}

#[test]
fn any_changed_argument_changes_the_sample() {
    let cfg = SynthConfig::default();
    let base = generate(&cfg, SEED, Domain::Source, Split::Train, 0);
    let variants = [
        generate(&cfg, SEED, Domain::Source, Split::Train, 1),
        generate(&cfg, SEED + 1, Domain::Source, Split::Train, 0),
        generate(&cfg, SEED, Domain::Target, Split::Train, 0),
        generate(&cfg, SEED, Domain::Source, Split::Val, 0),
    ];
    for (k, v) in variants.iter().enumerate() {
        assert_ne!(v.image, base.image, "variant {k} has the same image");
        assert_ne!(v.label, base.label, "variant {k} has the same label");
    }
    let seeds = [
        sample_seed(SEED, Domain::Source, Split::Train, 0),
        sample_seed(SEED, Domain::Source, Split::Train, 1),
        sample_seed(SEED, Domain::Target, Split::Train, 0),
        sample_seed(SEED, Domain::Source, Split::Val, 0),
    ];
    for i in 0..seeds.len() {
        for j in i + 1..seeds.len() {
            assert_ne!(seeds[i], seeds[j]);
        }
    }
}

#[test]
fn labels_are_train_ids_or_ignore_and_ignore_is_rare() {
    let cfg = SynthConfig::default();
    for domain in [Domain::Source, Domain::Target] {
        for s in generate_many(&cfg, SEED, domain, Split::Val, &(0..30).collect::<Vec<_>>()) {
            assert_valid(&s, cfg.height, cfg.width);
        }
    }
    let (source, target) = default_stats();
    for (name, s) in [("source", source), ("target", target)] {
        assert!(
            s.ignore_share < 0.05,
            "{name} ignore share {}",
            s.ignore_share
        );
        assert!(
            s.max_image_ignore < 0.10,
            "{name} max ignore {}",
            s.max_image_ignore
        );
    }
    // The target's ignore pixels come from the hood and uncertain boundaries,
    // which the game-like source does not have.
    assert!(target.ignore_share > 4.0 * source.ignore_share);
}

#[test]
fn every_class_occurs_in_both_domains() {
    let (source, target) = default_stats();
    for (k, name) in CITYSCAPES_CLASSES.iter().enumerate() {
        assert!(
            source.class_images[k] > 0,
            "{name} never occurs in the source"
        );
        assert!(
            target.class_images[k] > 0,
            "{name} never occurs in the target"
        );
    }
}

#[test]
fn class_frequencies_differ_between_domains() {
    let (source, target) = default_stats();
    let share = |s: &DomainStats, classes: &[u8]| -> f64 {
        classes.iter().map(|&c| s.class_share[usize::from(c)]).sum()
    };
    let vulnerable = [PERSON, RIDER, BICYCLE];
    assert!(
        share(target, &vulnerable) > 1.5 * share(source, &vulnerable),
        "person+rider+bicycle: source {} target {}",
        share(source, &vulnerable),
        share(target, &vulnerable)
    );
    assert!(
        share(target, &[CAR]) < 0.5 * share(source, &[CAR]),
        "car: source {} target {}",
        share(source, &[CAR]),
        share(target, &[CAR])
    );
    // Stuff classes keep their order of magnitude: road, building and sky
    // dominate both domains, so the layout stays recognisable.
    for s in [source, target] {
        for big in [0usize, 2, 10] {
            assert!(
                s.class_share[big] > 0.05,
                "class {big} share {}",
                s.class_share[big]
            );
        }
    }
}

#[test]
fn image_statistics_differ_between_domains() {
    let (source, target) = default_stats();
    assert!(
        target.mean < source.mean - 10.0,
        "mean {} vs {}",
        source.mean,
        target.mean
    );
    assert!(
        target.contrast < 0.8 * source.contrast,
        "contrast {} vs {}",
        source.contrast,
        target.contrast
    );
    assert!(
        target.chroma < 0.7 * source.chroma,
        "chroma {} vs {}",
        source.chroma,
        target.chroma
    );
}

#[test]
fn zero_shift_closes_the_appearance_gap() {
    let cfg = SynthConfig {
        shift: 0.0,
        ..SynthConfig::default()
    };
    let source = domain_stats(&cfg, Domain::Source, 40);
    let target = domain_stats(&cfg, Domain::Target, 40);
    assert!((target.chroma / source.chroma - 1.0).abs() < 0.15);
    assert!((target.mean - source.mean).abs() < 8.0);
    assert!(target.ignore_share < 0.01);
}

#[test]
fn image_size_is_configurable() {
    for (height, width) in [(64, 128), (256, 512), (96, 96)] {
        let cfg = SynthConfig {
            height,
            width,
            ..SynthConfig::default()
        };
        for domain in [Domain::Source, Domain::Target] {
            let s = generate(&cfg, SEED, domain, Split::Train, 3);
            assert_valid(&s, height, width);
            let mut seen = [false; NUM_CLASSES];
            for &l in &s.label {
                if let Some(slot) = seen.get_mut(usize::from(l)) {
                    *slot = true;
                }
            }
            let distinct = seen.iter().filter(|&&b| b).count();
            assert!(
                distinct >= 5,
                "{height}x{width} {domain:?}: only {distinct} classes"
            );
        }
    }
}

/// A style with every knob at the low (`high == false`) or high end of its range.
fn extreme_style(high: bool) -> serde_json::Value {
    let knobs = DomainStyle::game().knobs();
    let map = knobs
        .into_iter()
        .map(|(name, _, (lo, hi))| {
            (
                name.to_string(),
                serde_json::json!(if high { hi } else { lo }),
            )
        })
        .collect::<serde_json::Map<_, _>>();
    serde_json::Value::Object(map)
}

#[test]
fn extreme_knobs_still_give_valid_samples() {
    for high in [false, true] {
        let json = serde_json::json!({
            "height": 48,
            "width": 80,
            "source": extreme_style(high),
            "target": extreme_style(!high),
        });
        let cfg: SynthConfig = serde_json::from_value(json).unwrap();
        assert!(cfg.validate().is_ok());
        for domain in [Domain::Source, Domain::Target] {
            for i in 0..3 {
                assert_valid(&generate(&cfg, SEED, domain, Split::Train, i), 48, 80);
            }
        }
    }
}

#[test]
fn config_reads_partial_toml_with_domain_defaults() {
    let cfg: SynthConfig = toml::from_str(
        "height = 64\nwidth = 128\nshift = 0.5\n[source]\ncars = 1.0\n[target]\nnoise = 0.0\n",
    )
    .unwrap();
    assert_eq!((cfg.height, cfg.width, cfg.train_size), (64, 128, 2000));
    assert_eq!(cfg.source.cars, 1.0);
    assert_eq!(cfg.source.persons, DomainStyle::game().persons);
    assert_eq!(cfg.target.noise, 0.0);
    assert_eq!(cfg.target.persons, DomainStyle::camera().persons);
    assert!(cfg.validate().is_ok());
    let halfway = cfg.style(Domain::Target);
    assert!(halfway.blur > 0.0 && halfway.blur < cfg.target.blur);
    assert!(toml::from_str::<SynthConfig>("[target]\nunknown_knob = 1.0\n").is_err());
}
