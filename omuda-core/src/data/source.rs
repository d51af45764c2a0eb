//! Building the training and evaluation data of a run from its `[data]`
//! configuration: the built-in synthetic pair (`dataset = "synth"`) or
//! datasets on disk (`dataset = "files"`, with `[data.source]`,
//! `[data.target]`, `[data.val]`, optional `[data.rcs]` and `[data.loader]`).

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::datasets::{Dataset, DatasetKind};
use super::loader::SynthPairLoader;
use super::pipeline::PipelineConfig;
use super::prefetch::{DomainData, LoaderOptions, Producer, UdaLoader};
use super::rcs::RcsSampler;
use super::synth::{Domain, Split};
use crate::config::{DataConfig, RunConfig};
use crate::eval::dataset::{evaluate_dataset, DatasetEvalOptions};
use crate::eval::miou::MiouReport;
use crate::train::trainer::BatchSource;
use crate::{Error, Result};

/// One dataset of a run and its pipeline. Unset pipeline keys take the
/// DAFormer values of the dataset kind (GTA: resize (1280, 720), crop 512²
/// with cat_max_ratio 0.75; SYNTHIA: (1280, 760); Cityscapes: (1024, 512),
/// crop 512², no cat rule; folder: file size, crop 512², 0.75); flip 0.5.
/// For `[data.val]` only `scale` is used, as the test scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    /// `gta`, `synthia`, `cityscapes` or `folder`.
    pub kind: String,
    /// Dataset root (for `folder`: the TOML spec file).
    pub root: PathBuf,
    /// Cityscapes split (default `train`; `val` for `[data.val]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// Keep-ratio resize `[w, h]`.
    #[serde(
        default,
        deserialize_with = "crate::exact_len::option_array",
        skip_serializing_if = "Option::is_none"
    )]
    pub scale: Option<[usize; 2]>,
    /// Random crop `[h, w]`.
    #[serde(
        default,
        deserialize_with = "crate::exact_len::option_array",
        skip_serializing_if = "Option::is_none"
    )]
    pub crop: Option<[usize; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cat_max_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flip_prob: Option<f64>,
    /// Folder holding the RCS statistics (default: the dataset root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_dir: Option<PathBuf>,
}

impl DatasetConfig {
    pub fn kind(&self) -> Result<DatasetKind> {
        DatasetKind::parse(&self.kind)
    }

    pub fn split_or(&self, default: &str) -> String {
        self.split.clone().unwrap_or_else(|| default.to_string())
    }

    /// The pipeline: the kind's DAFormer defaults, with the keys that are set.
    pub fn pipeline(&self) -> Result<PipelineConfig> {
        let mut p = match self.kind()? {
            DatasetKind::Gta => PipelineConfig::daformer_gta(),
            DatasetKind::Synthia => PipelineConfig::daformer_synthia(),
            DatasetKind::Cityscapes => PipelineConfig::daformer_cityscapes(),
            DatasetKind::Folder => PipelineConfig {
                scale: None,
                ..PipelineConfig::daformer_gta()
            },
        };
        if self.scale.is_some() {
            p.scale = self.scale;
        }
        if self.crop.is_some() {
            p.crop = self.crop;
        }
        if let Some(r) = self.cat_max_ratio {
            p.cat_max_ratio = r;
        }
        if let Some(f) = self.flip_prob {
            p.flip_prob = f;
        }
        Ok(p)
    }

    pub fn open(&self, default_split: &str) -> Result<Dataset> {
        Dataset::open(self.kind()?, &self.root, &self.split_or(default_split))
    }
}

/// Background decoding of `dataset = "files"` runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoaderConfig {
    /// Worker threads (0: decode on the training thread).
    pub workers: usize,
    /// Batches prepared ahead of the training step.
    pub prefetch: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            workers: 4,
            prefetch: 8,
        }
    }
}

/// Checks of `[data]` for `dataset = "files"`, each naming its key.
pub fn validate_files(d: &DataConfig) -> std::result::Result<(), String> {
    for (name, ds, required) in [
        ("data.source", &d.source, true),
        ("data.target", &d.target, true),
        ("data.val", &d.val, true),
        ("data.dev", &d.dev, false),
    ] {
        let Some(ds) = ds else {
            if !required {
                continue;
            }
            return Err(format!("{name} is required when data.dataset = \"files\""));
        };
        DatasetKind::parse(&ds.kind).map_err(|e| format!("{name}.kind: {e}"))?;
        let p = ds.pipeline().map_err(|e| format!("{name}: {e}"))?;
        p.validate().map_err(|e| format!("{name}: {e}"))?;
    }
    if let Some(r) = &d.rcs {
        r.validate().map_err(|e| format!("data.rcs: {e}"))?;
    }
    Ok(())
}

/// The training batches of a run: the synthetic pair or datasets on disk.
pub enum RunBatchSource {
    /// Boxed: the synthetic loader carries its configuration and generator.
    Synth(Box<SynthPairLoader>),
    Files(UdaLoader),
}

impl RunBatchSource {
    pub fn as_synth_mut(&mut self) -> Option<&mut SynthPairLoader> {
        match self {
            Self::Synth(l) => Some(&mut **l),
            Self::Files(_) => None,
        }
    }

    pub fn as_files_mut(&mut self) -> Option<&mut UdaLoader> {
        match self {
            Self::Synth(_) => None,
            Self::Files(l) => Some(l),
        }
    }
}

impl BatchSource for RunBatchSource {
    fn next_batch(&mut self) -> Result<crate::train::batch::UdaBatch> {
        match self {
            Self::Synth(l) => l.next_batch(),
            Self::Files(l) => l.next_batch(),
        }
    }

    fn order_state(&self) -> Result<serde_json::Value> {
        match self {
            Self::Synth(l) => l.order_state(),
            Self::Files(l) => BatchSource::order_state(l),
        }
    }

    fn restore_order_state(&mut self, state: &serde_json::Value) -> Result<()> {
        match self {
            Self::Synth(l) => l.restore_order_state(state),
            Self::Files(l) => BatchSource::restore_order_state(l, state),
        }
    }
}

/// The training batches of method `name` (the oracle trains on labelled target data).
pub fn build_batch_source(cfg: &RunConfig, name: &str, device: &Device) -> Result<RunBatchSource> {
    let oracle = name == "oracle";
    if cfg.data.dataset == "synth" {
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
            loader = loader.with_rcs(Arc::new(super::synth_rcs::synth_rcs(
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

fn missing(key: &str) -> Error {
    Error::Config {
        origin: "data".into(),
        message: format!("{key} is required when data.dataset = \"files\""),
    }
}

/// The prefetching loader of a `dataset = "files"` configuration (with
/// `oracle`, the target dataset with its labels is also the source); its
/// target batches carry the valid-pseudo-label mask of `margins`
/// (`uda.pseudo_margins`; `lhoyer/HRDA
/// mmseg/datasets/cityscapes.py::CityscapesDataset.pre_pipeline`).
pub fn build_uda_loader(
    d: &DataConfig,
    oracle: bool,
    batch_size: usize,
    seed: u64,
    margins: Option<[usize; 4]>,
    device: &Device,
) -> Result<UdaLoader> {
    let sc = d.source.as_ref().ok_or_else(|| missing("data.source"))?;
    let tc = d.target.as_ref().ok_or_else(|| missing("data.target"))?;
    let target = Arc::new(tc.open("train")?);
    let tpipe = tc.pipeline()?;
    let (source, spipe, stats_dir) = if oracle {
        (
            target.clone(),
            tpipe.clone(),
            tc.stats_dir.clone().unwrap_or_else(|| target.root.clone()),
        )
    } else {
        let s = Arc::new(sc.open("train")?);
        let dir = sc.stats_dir.clone().unwrap_or_else(|| s.root.clone());
        (s, sc.pipeline()?, dir)
    };
    let rcs = match &d.rcs {
        Some(r) => Some(RcsSampler::from_dir(&stats_dir, &source, r)?),
        None => None,
    };
    let producer = Producer::new(
        DomainData {
            dataset: source,
            pipeline: spipe,
        },
        DomainData {
            dataset: target,
            pipeline: tpipe,
        },
        rcs,
        batch_size,
        seed,
    )?
    .with_target_margins(margins);
    let lc = d.loader.clone().unwrap_or_default();
    UdaLoader::new(
        producer,
        LoaderOptions {
            batch_size,
            seed,
            workers: lc.workers,
            prefetch: lc.prefetch,
        },
        device,
    )
}

/// A labelled target split: `Dev` chooses hyperparameters and the best
/// checkpoint, `Test` gives the reported numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetSplit {
    Dev,
    Test,
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
    if cfg.data.dataset == "synth" {
        let split = match split {
            TargetSplit::Dev => Split::Dev,
            TargetSplit::Test => Split::Test,
        };
        return crate::eval::evaluate_synth(
            &cfg.data.synth,
            cfg.data.dataset_seed,
            Domain::Target,
            split,
            &cfg.eval,
            device,
            predict,
        );
    }
    let vc = match split {
        TargetSplit::Test => cfg.data.val.as_ref().ok_or_else(|| missing("data.val"))?,
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
            colour_dir: None,
            limit: None,
        },
        &cfg.eval,
        device,
        predict,
    )
}

/// Decodes every frame of the run's labelled target splits on disk
/// (`[data.val]`, `[data.dev]`), so that a corrupt, truncated or mismatched
/// evaluation file stops a run before its first iteration rather than at its
/// final evaluation. Every problem found is listed. Nothing to do for the
/// built-in pair.
pub fn check_eval_data(cfg: &RunConfig) -> Result<()> {
    use rayon::prelude::*;
    if cfg.data.dataset == "synth" {
        return Ok(());
    }
    for (key, dc) in [("data.val", &cfg.data.val), ("data.dev", &cfg.data.dev)] {
        let Some(dc) = dc else { continue };
        let ds = dc
            .open("val")
            .map_err(|e| Error::msg(format!("{key}: {e}")))?;
        let problems: Vec<(PathBuf, String)> = (0..ds.len())
            .into_par_iter()
            .filter_map(|i| {
                ds.load(i).err().map(|e| {
                    let image = ds
                        .frames
                        .get(i)
                        .map(|f| f.image.clone())
                        .unwrap_or_default();
                    (image, e.to_string())
                })
            })
            .collect();
        if !problems.is_empty() {
            return Err(super::datasets::problems_error(
                &format!("{key} (checked before training)"),
                &problems,
            ));
        }
    }
    Ok(())
}

/// The split a run's periodic evaluations and best checkpoint use: dev where
/// the run has one, else test (datasets on disk without `[data.dev]`).
pub fn selection_split(cfg: &RunConfig) -> TargetSplit {
    if cfg.data.dataset == "synth" || cfg.data.dev.is_some() {
        TargetSplit::Dev
    } else {
        TargetSplit::Test
    }
}

fn empty_report() -> MiouReport {
    let names = crate::data::classes::CITYSCAPES_CLASSES;
    MiouReport::from_confusion(
        &crate::eval::miou::ConfusionMatrix::new(names.len()),
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
    if cfg.data.dataset == "synth" {
        return crate::eval::evaluate_synth(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(kind: &str) -> DatasetConfig {
        DatasetConfig {
            kind: kind.into(),
            root: "data/x".into(),
            split: None,
            scale: None,
            crop: None,
            cat_max_ratio: None,
            flip_prob: None,
            stats_dir: None,
        }
    }

    #[test]
    fn pipeline_defaults_follow_the_kind_and_keys_override() {
        assert_eq!(
            ds("gta").pipeline().unwrap(),
            PipelineConfig::daformer_gta()
        );
        assert_eq!(ds("synthia").pipeline().unwrap().scale, Some([1280, 760]));
        assert_eq!(
            ds("cityscapes").pipeline().unwrap(),
            PipelineConfig::daformer_cityscapes()
        );
        let p = DatasetConfig {
            crop: Some([1024, 1024]),
            scale: Some([2560, 1440]),
            ..ds("gta")
        }
        .pipeline()
        .unwrap();
        assert_eq!(
            (p.crop, p.scale, p.cat_max_ratio),
            (Some([1024, 1024]), Some([2560, 1440]), 0.75)
        );
        assert!(ds("kitti").pipeline().is_err());
    }

    #[test]
    fn files_config_parses_and_names_missing_or_bad_keys() {
        let text = "[data]\ndataset = \"files\"\n[data.source]\nkind = \"gta\"\nroot = \"g\"\n[data.target]\nkind = \"cityscapes\"\nroot = \"c\"\n[data.val]\nkind = \"cityscapes\"\nroot = \"c\"\nsplit = \"val\"\n[data.rcs]\nmin_pixels = 100\n";
        let cfg = RunConfig::from_toml_str(text, "x.toml").unwrap();
        assert_eq!(cfg.data.rcs.as_ref().unwrap().class_temp, 0.01);
        let back = RunConfig::from_toml_str(&cfg.to_toml().unwrap(), "round-trip").unwrap();
        assert_eq!(back, cfg);
        let e = RunConfig::from_toml_str("[data]\ndataset = \"files\"\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("data.source is required"), "{e}");
        let bad = text.replace("kind = \"gta\"", "kind = \"gta\"\ncat_max_ratio = 1.5");
        let e = RunConfig::from_toml_str(&bad, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("data.source") && e.contains("cat_max_ratio"),
            "{e}"
        );
        let e = RunConfig::from_toml_str("[data]\ndataset = \"kitti\"\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("data.dataset"), "{e}");
    }
}
