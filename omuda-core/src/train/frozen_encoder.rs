//! The frozen network of a feature distance (DAFormer's FD, the FDM plugin):
//! the student's initial network, built at first use exactly as
//! [`SelfTraining::new`](crate::train::SelfTraining::new) builds the student
//! (seeded initialisation, then the pretrained `model.weights` if set), or
//! with the encoder of a weights file of its own. It is never trained; its
//! features are computed in evaluation mode (`lhoyer/MIC
//! seg/mmseg/models/uda/dacs.py::DACS.calc_feat_dist`: `.eval()` under
//! `no_grad`) on weights that record no graph ([`crate::nn::detached`]), so
//! its forward frees its intermediates as it goes.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use rand_chacha::ChaCha8Rng;

use crate::nn::detached::detached_model;
use crate::nn::varmap_io::load_varmap_where;
use crate::nn::weights::build_initial;
use crate::nn::{ForwardCtx, SegModel};
use crate::ops::feature_distance::level_index;
use crate::train::hooks::StepView;
use crate::{Error, Result};

/// A lazily built frozen copy of the host's initial network.
#[derive(Default)]
pub struct FrozenEncoder {
    /// Encoder weights to load over the initial network (`{seed}` stands for
    /// the run's seed); every variable whose name contains `encoder` must be
    /// in the file.
    weights: Option<PathBuf>,
    built: Option<Box<dyn SegModel>>,
}

impl FrozenEncoder {
    /// The host's initial network, optionally with the encoder of `weights`.
    pub fn new(weights: Option<PathBuf>) -> Self {
        Self {
            weights,
            built: None,
        }
    }

    /// The frozen network, built on `device` at the first call.
    pub fn model(&mut self, view: &StepView, device: &Device) -> Result<&dyn SegModel> {
        if self.built.is_none() {
            let (model, vars, _) = build_initial(&view.spec.model, view.spec.seed, device)?;
            if let Some(path) = &self.weights {
                let path = PathBuf::from(
                    path.to_string_lossy()
                        .replace("{seed}", &view.spec.seed.to_string()),
                );
                load_varmap_where(&vars, &path, &|name| name.contains("encoder"))?;
            }
            drop(model);
            self.built = Some(detached_model(&view.spec.model, &vars, device)?);
        }
        self.built
            .as_ref()
            .map(|model| model.as_ref())
            .ok_or_else(|| Error::msg("frozen encoder missing"))
    }

    /// The frozen features of `image` at encoder level `layer` (negative:
    /// from the end; `key` names the setting in errors), detached.
    pub fn features(
        &mut self,
        view: &StepView,
        image: &Tensor,
        layer: i64,
        key: &str,
        rng: &mut ChaCha8Rng,
    ) -> Result<Tensor> {
        let model = self.model(view, image.device())?;
        let mut ctx = ForwardCtx::eval(rng);
        let feats = model.features(image, &mut ctx)?;
        Ok(feats[level_index(layer, feats.len(), key)?].detach())
    }
}
