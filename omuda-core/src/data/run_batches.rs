//! The training batches of a run: the built-in synthetic pair's loader or
//! the prefetching loader of datasets on disk, behind one [`BatchSource`].

use std::sync::Arc;

use candle_core::Device;

use super::batch::{BatchSource, UdaBatch};
use super::config::{required_for_files, DataConfig};
use super::loader::SynthPairLoader;
use super::prefetch::{DomainData, LoaderOptions, Producer, UdaLoader};
use super::rcs::RcsSampler;
use crate::Result;

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
    fn next_batch(&mut self) -> Result<UdaBatch> {
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
    let sc = d
        .source
        .as_ref()
        .ok_or_else(|| required_for_files("data.source"))?;
    let tc = d
        .target
        .as_ref()
        .ok_or_else(|| required_for_files("data.target"))?;
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
