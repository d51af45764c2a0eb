//! Run assembly: the methods, plugins, training batches and evaluation data
//! of a [`RunConfig`]. The settings types belong to the crates whose code
//! they configure; this module is where a whole run is put together.

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use omuda_baselines::{Dacs, Daformer, Hrda, Mic, SourceOnly};
use omuda_core::data::config::{required_for_files, DataSource, TargetSplit};
use omuda_core::data::loader::SynthPairLoader;
use omuda_core::data::run_batches::{build_uda_loader, RunBatchSource};
use omuda_core::data::synth::{Domain, Split};
use omuda_core::data::synth_rcs::synth_rcs;
use omuda_core::eval::dataset::{evaluate_dataset, DatasetEvalOptions};
use omuda_core::eval::miou::MiouReport;
use omuda_core::train::observers::RecorderSettings;
use omuda_core::train::spec::SelfTrainingSpec;
use omuda_core::train::SelfTraining;
use omuda_core::{Error, Result};

use crate::config::RunConfig;

/// Names accepted by [`build_method`].
pub const METHOD_NAMES: [&str; 8] = [
    "source_only",
    "dacs",
    "oracle",
    "daformer",
    "hrda",
    "mic_dacs",
    "mic_daformer",
    "mic_hrda",
];

/// The spec every method of a run starts from: the run's model, `[uda]`,
/// optimizer, schedule (its length = `train.iters`) and seed, under `name`.
pub fn base_spec(name: &str, cfg: &RunConfig) -> SelfTrainingSpec {
    SelfTrainingSpec {
        name: name.to_string(),
        model: cfg.model.clone(),
        uda: cfg.uda.clone(),
        optimizer: cfg.optimizer.clone(),
        schedule: cfg.schedule.poly(cfg.train.iters),
        seed: cfg.seed,
    }
}

/// Build a method by name with the settings of `cfg`. `oracle` is
/// source-only training whose labelled domain is the target (the batch
/// source decides which domain it reads). A `mic_<host>` method is `<host>`
/// built under the `mic_<host>` name with [`Mic`] attached.
pub fn build_method(name: &str, cfg: &RunConfig, device: &Device) -> Result<SelfTraining> {
    let spec = base_spec(name, cfg);
    match name {
        "source_only" | "oracle" => SourceOnly::new(spec, device),
        "dacs" => Dacs::new(spec, device),
        "daformer" => Daformer::new(spec, cfg.fd.clone(), device),
        "hrda" => Hrda::new(spec, cfg.fd.clone(), cfg.hrda.clone(), device),
        "mic_dacs" => Ok(Mic::wrap(Dacs::new(spec, device)?, &cfg.mic)),
        "mic_daformer" => Ok(Mic::wrap(
            Daformer::new(spec, cfg.fd.clone(), device)?,
            &cfg.mic,
        )),
        "mic_hrda" => Ok(Mic::wrap(
            Hrda::new(spec, cfg.fd.clone(), cfg.hrda.clone(), device)?,
            &cfg.mic,
        )),
        other => Err(Error::Config {
            origin: "methods".into(),
            message: format!(
                "unknown method {other:?}; available: {}",
                METHOD_NAMES.join(", ")
            ),
        }),
    }
}

/// `method` with the plugins of `cfg.plugins` attached (settings from
/// `cfg.plugin`), in the listed order. Plugins act on the target side of
/// self-training, so a method without it (source-only, oracle) is returned
/// unchanged.
pub fn attach_plugins(method: SelfTraining, cfg: &RunConfig) -> Result<SelfTraining> {
    if !method.spec().uda.self_training || cfg.plugins.is_empty() {
        return Ok(method);
    }
    omuda_plugins::attach(method, &cfg.plugins, &cfg.plugin)
}

/// What the run recorder of method `name` writing into `out` needs of the
/// run: its length, intervals, selection split and configuration.
/// `display` names the run in progress lines.
pub fn recorder_settings(
    name: &str,
    display: &str,
    out: &Path,
    cfg: &RunConfig,
) -> Result<RecorderSettings> {
    Ok(RecorderSettings {
        name: name.to_string(),
        display: display.to_string(),
        out: out.to_path_buf(),
        iters: cfg.train.iters,
        log_interval: cfg.train.log_interval,
        keep_last: cfg.train.keep_last,
        tensorboard: cfg.train.tensorboard,
        selection: selection_split(cfg),
        schedule: cfg.schedule.poly(cfg.train.iters),
        config_toml: cfg.to_toml()?,
        resume_command: format!("omuda train --resume {}", cfg.out.display()),
        log_format: Default::default(),
    })
}

/// The training batches of method `name` (the oracle trains on labelled target data).
pub fn build_batch_source(cfg: &RunConfig, name: &str, device: &Device) -> Result<RunBatchSource> {
    let oracle = name == "oracle";
    if cfg.data.dataset == DataSource::Synth {
        let domain = if oracle {
            Domain::Target
        } else {
            Domain::Source
        };
        let mut loader = SynthPairLoader::new(
            cfg.data.synth.clone(),
            cfg.data.dataset_seed,
            domain,
            cfg.train.batch_size,
            cfg.seed,
            device,
        );
        loader.target_margins = cfg.uda.pseudo_margins;
        if let Some(r) = &cfg.data.rcs {
            loader = loader.with_rcs(Arc::new(synth_rcs(
                &cfg.data.synth,
                cfg.data.dataset_seed,
                domain,
                r,
            )?));
        }
        return Ok(RunBatchSource::Synth(Box::new(loader)));
    }
    let margins = cfg.uda.pseudo_margins;
    Ok(RunBatchSource::Files(build_uda_loader(
        &cfg.data,
        oracle,
        cfg.train.batch_size,
        cfg.seed,
        margins,
        device,
    )?))
}

/// mIoU on a labelled target split of the run: the synthetic target's dev or
/// test split, or on disk `[data.dev]` / `[data.val]` at their test scale
/// (default: the target's resize scale). Without `[data.dev]` the dev report
/// is empty (no images, every mean `None`).
pub fn evaluate_target(
    cfg: &RunConfig,
    split: TargetSplit,
    device: &Device,
    predict: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> Result<MiouReport> {
    evaluate_target_to(cfg, split, device, predict, None)
}

/// [`evaluate_target`], also writing every prediction into `colour_dir`
/// (when given) as a PNG in the dataset's colours: `<key>.png` on disk,
/// `<split>_<index>.png` on the built-in pair.
pub fn evaluate_target_to(
    cfg: &RunConfig,
    split: TargetSplit,
    device: &Device,
    predict: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
    colour_dir: Option<&std::path::Path>,
) -> Result<MiouReport> {
    if cfg.data.dataset == DataSource::Synth {
        let split = match split {
            TargetSplit::Dev => Split::Dev,
            TargetSplit::Test => Split::Test,
        };
        return omuda_core::eval::evaluate_synth_to(
            &cfg.data.synth,
            cfg.data.dataset_seed,
            Domain::Target,
            split,
            &cfg.eval,
            device,
            predict,
            colour_dir,
        );
    }
    let vc = match split {
        TargetSplit::Test => cfg
            .data
            .val
            .as_ref()
            .ok_or_else(|| required_for_files("data.val"))?,
        TargetSplit::Dev => match cfg.data.dev.as_ref() {
            Some(d) => d,
            None => return Ok(empty_report()),
        },
    };
    let ds = vc.open("val")?;
    let scale = vc.scale.or_else(|| {
        cfg.data
            .target
            .as_ref()
            .and_then(|t| t.pipeline().ok())
            .and_then(|p| p.scale)
    });
    evaluate_dataset(
        &ds,
        &DatasetEvalOptions {
            scale,
            colour_dir: colour_dir.map(std::path::Path::to_path_buf),
            limit: None,
        },
        &cfg.eval,
        device,
        predict,
    )
}

/// Decodes every frame of the run's labelled target splits on disk before
/// training ([`DataConfig::check_eval_files`](omuda_core::data::config::DataConfig::check_eval_files)).
pub fn check_eval_data(cfg: &RunConfig) -> Result<()> {
    cfg.data.check_eval_files()
}

/// The split a run's periodic evaluations and best checkpoint use: dev where
/// the run has one, else test (datasets on disk without `[data.dev]`).
pub fn selection_split(cfg: &RunConfig) -> TargetSplit {
    if cfg.data.dataset == DataSource::Synth || cfg.data.dev.is_some() {
        TargetSplit::Dev
    } else {
        TargetSplit::Test
    }
}

fn empty_report() -> MiouReport {
    let names = omuda_core::data::classes::CITYSCAPES_CLASSES;
    MiouReport::from_confusion(
        &omuda_core::eval::miou::ConfusionMatrix::new(names.len()),
        &names,
        0,
    )
}

/// mIoU on the run's source-val data: the synthetic source val split. Datasets
/// on disk have no source val split in the reference protocol: the report is
/// then empty (no images, every mean `None`).
pub fn evaluate_source_val(
    cfg: &RunConfig,
    device: &Device,
    predict: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> Result<MiouReport> {
    if cfg.data.dataset == DataSource::Synth {
        return omuda_core::eval::evaluate_synth(
            &cfg.data.synth,
            cfg.data.dataset_seed,
            Domain::Source,
            Split::Val,
            &cfg.eval,
            device,
            predict,
        );
    }
    Ok(empty_report())
}
