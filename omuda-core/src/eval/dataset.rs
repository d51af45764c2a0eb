//! Evaluation on a dataset on disk at the reference protocol (the mmseg
//! evaluation protocol: `test` pipeline of `lhoyer/MIC
//! seg/configs/_base_/datasets/uda_gta_to_cityscapes_512x512.py`,
//! `seg/mmseg/models/segmentors/encoder_decoder.py::EncoderDecoder.inference`
//! and `seg/mmseg/datasets/custom.py::CustomDataset.evaluate`): each val image
//! is resized (keep ratio) to the method's test scale, the logits are resized
//! bilinearly back to the original resolution, and the argmax is scored against
//! the full-resolution label. Optionally each prediction is written as a
//! colourised PNG.

use std::path::PathBuf;

use candle_core::{Device, Tensor};

use super::inference;
use super::miou::{ConfusionMatrix, MiouReport};
use crate::data::datasets::Dataset;
use crate::data::pipeline::{rescale_size, resize_bilinear_rgb};
use crate::data::png_io::write_rgb8;
use crate::data::prefetch::normalize_into;
use crate::data::synth::Sample;
use crate::eval::EvalConfig;
use crate::{Error, Result};

/// Which mean a benchmark reports first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// GTA5 → Cityscapes and the like: mIoU over the 19 classes.
    Miou19,
    /// SYNTHIA → Cityscapes: mIoU16 (and mIoU13) over the SYNTHIA classes.
    Synthia16,
}

impl Protocol {
    /// The protocol of a run whose source dataset is `kind`.
    pub fn for_source(kind: crate::data::datasets::DatasetKind) -> Self {
        match kind {
            crate::data::datasets::DatasetKind::Synthia => Self::Synthia16,
            _ => Self::Miou19,
        }
    }

    /// `(name, value)` pairs of the report's headline numbers.
    pub fn headline(self, r: &MiouReport) -> Vec<(&'static str, Option<f64>)> {
        match self {
            Self::Miou19 => vec![("mIoU", r.miou)],
            Self::Synthia16 => vec![("mIoU16", r.miou16), ("mIoU13", r.miou13)],
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct DatasetEvalOptions {
    /// Keep-ratio test scale `[w, h]` (DAFormer: `[1024, 512]`; HRDA: `[2048, 1024]`);
    /// `None` evaluates at file resolution.
    pub scale: Option<[usize; 2]>,
    /// Write `<key>.png` colourised predictions here.
    pub colour_dir: Option<PathBuf>,
    /// Evaluate only the first `limit` frames.
    pub limit: Option<usize>,
}

/// RGB rendering of a class map with `palette`; ignore and out-of-range
/// values are black.
pub fn colorize_with(label: &[u32], palette: &[[u8; 3]]) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(label.len() * 3);
    for &l in label {
        rgb.extend_from_slice(&palette.get(l as usize).copied().unwrap_or([0, 0, 0]));
    }
    rgb
}

/// mIoU of `predict` on every labelled frame of `ds`.
pub fn evaluate_dataset(
    ds: &Dataset,
    opts: &DatasetEvalOptions,
    cfg: &EvalConfig,
    device: &Device,
    predict: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> Result<MiouReport> {
    let k = ds.num_classes();
    let mut cm = ConfusionMatrix::new(k);
    let n = opts.limit.unwrap_or(ds.len()).min(ds.len());
    if n == 0 {
        return Err(Error::msg(format!(
            "evaluation: the {} dataset has no frames",
            ds.name
        )));
    }
    if let Some(d) = &opts.colour_dir {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    let mut scored = 0;
    for i in 0..n {
        let frame = &ds.frames[i];
        if frame.label.is_none() {
            return Err(Error::file(&frame.image, "evaluation frame has no label"));
        }
        let s = ds.load(i)?;
        let (h0, w0) = (s.height, s.width);
        let (rw, rh) = match opts.scale {
            Some(sc) => rescale_size(w0, h0, sc),
            None => (w0, h0),
        };
        let img = resize_bilinear_rgb(&s.image, w0, h0, rw, rh);
        let mut x = Vec::with_capacity(3 * rw * rh);
        normalize_into(
            &Sample {
                image: img,
                label: Vec::new(),
                height: rh,
                width: rw,
            },
            &mut x,
        );
        let x = Tensor::from_vec(x, (1, 3, rh, rw), device)?;
        let logits = super::predict_logits(&x, cfg, predict)?;
        let logits = crate::ops::resize_bilinear(&logits, h0, w0)?;
        let pred = inference::argmax_classes(&logits)?
            .flatten_all()?
            .to_vec1::<u32>()?;
        cm.add(&s.label, &pred, ds.ignore_index)
            .map_err(|e| Error::file(&frame.image, e.to_string()))?;
        if let Some(d) = &opts.colour_dir {
            let name = format!("{}.png", frame.key.replace(['/', '\\'], "_"));
            write_rgb8(&d.join(name), w0, h0, &colorize_with(&pred, &ds.palette))?;
        }
        scored += 1;
    }
    let names: Vec<&str> = ds.class_names.iter().map(String::as_str).collect();
    Ok(MiouReport::from_confusion(&cm, &names, scored))
}
