//! Evaluation: confusion-matrix mIoU and inference over whole images or windows.

pub mod dataset;
pub mod inference;
pub mod miou;

use candle_core::{Device, Tensor};

use crate::data::classes::{CITYSCAPES_CLASSES, IGNORE_INDEX};
use crate::data::synth::{Domain, Split, SynthConfig};
use crate::Result;
use miou::{ConfusionMatrix, MiouReport};

/// Whole-image or sliding-window inference (`eval.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalMode {
    Whole,
    Slide,
}

/// How the target is evaluated (`[eval]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// `"whole"` or `"slide"`.
    pub mode: EvalMode,
    /// Window (h, w) and stride (h, w) of sliding inference.
    #[serde(deserialize_with = "crate::exact_len::array")]
    pub crop: [usize; 2],
    #[serde(deserialize_with = "crate::exact_len::array")]
    pub stride: [usize; 2],
    pub batch_size: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            mode: EvalMode::Whole,
            crop: [128, 128],
            stride: [64, 64],
            batch_size: 4,
        }
    }
}

/// Logits (B,C,H,W) at the size of `images` from `predict` (logits at any
/// resolution), by whole-image or sliding-window inference as `cfg` says.
pub fn predict_logits(
    images: &Tensor,
    cfg: &EvalConfig,
    predict: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> Result<Tensor> {
    Ok(match cfg.mode {
        EvalMode::Slide => inference::slide_inference(
            images,
            (cfg.crop[0], cfg.crop[1]),
            (cfg.stride[0], cfg.stride[1]),
            predict,
        )?,
        EvalMode::Whole => inference::whole_inference(images, predict)?,
    })
}

/// Predicted class map (B,H,W) for `images`: the argmax of [`predict_logits`].
pub fn predict_classes(
    images: &Tensor,
    cfg: &EvalConfig,
    predict: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> Result<Tensor> {
    Ok(inference::argmax_classes(&predict_logits(
        images, cfg, predict,
    )?)?)
}

/// mIoU of `predict` on a labelled split of one synthetic domain (the
/// source's `Val`, the target's `Dev` or `Test`).
pub fn evaluate_synth(
    synth: &SynthConfig,
    dataset_seed: u64,
    domain: Domain,
    split: Split,
    cfg: &EvalConfig,
    device: &Device,
    predict: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> Result<MiouReport> {
    evaluate_synth_to(
        synth,
        dataset_seed,
        domain,
        split,
        cfg,
        device,
        predict,
        None,
    )
}

/// [`evaluate_synth`], also writing each prediction into `colour_dir`
/// (when given) as `<split>_<index>.png` in the Cityscapes colours.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_synth_to(
    synth: &SynthConfig,
    dataset_seed: u64,
    domain: Domain,
    split: Split,
    cfg: &EvalConfig,
    device: &Device,
    predict: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
    colour_dir: Option<&std::path::Path>,
) -> Result<MiouReport> {
    if let Some(d) = colour_dir {
        std::fs::create_dir_all(d).map_err(|e| crate::Error::io(d, e))?;
    }
    let split_name = match split {
        Split::Train => "train",
        Split::Val => "val",
        Split::Dev => "dev",
        Split::Test => "test",
    };
    let mut cm = ConfusionMatrix::new(CITYSCAPES_CLASSES.len());
    let mut n = 0;
    for item in crate::data::loader::eval_batches(
        synth,
        dataset_seed,
        domain,
        split,
        cfg.batch_size,
        device,
    ) {
        let (images, labels) = item?;
        let pred = predict_classes(&images, cfg, predict)?
            .flatten_all()?
            .to_vec1::<u32>()?;
        cm.add(&labels, &pred, IGNORE_INDEX)?;
        if let Some(d) = colour_dir {
            let (b, _, h, w) = images.dims4()?;
            for (i, map) in pred.chunks(h * w).take(b).enumerate() {
                let path = d.join(format!("{split_name}_{:04}.png", n + i));
                crate::data::png_io::write_rgb8(
                    &path,
                    w,
                    h,
                    &dataset::colorize_with(map, &crate::data::classes::CITYSCAPES_PALETTE),
                )?;
            }
        }
        n += images.dim(0)?;
    }
    Ok(MiouReport::from_confusion(&cm, &CITYSCAPES_CLASSES, n))
}
