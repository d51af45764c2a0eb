//! The debug image of a step: the tensors it shows, in order.

use candle_core::{DType, Tensor};

use super::SelfTraining;
use crate::data::batch::UdaBatch;
use crate::ops::mix::MixedBatch;
use crate::ops::pseudo::PseudoLabels;
use crate::train::method::{DebugKind, StepDebug};
use crate::Result;

impl SelfTraining {
    /// The tensors a debug image shows for the step just run.
    pub(super) fn debug_tiles(
        &self,
        batch: &UdaBatch,
        pseudo: Option<&PseudoLabels>,
        mixed: Option<&MixedBatch>,
    ) -> Result<StepDebug> {
        let mut tiles = vec![
            (
                "source".to_string(),
                DebugKind::Image,
                batch.source_image.clone(),
            ),
            (
                "source label".to_string(),
                DebugKind::Labels,
                batch.source_label.clone(),
            ),
            (
                "target".to_string(),
                DebugKind::Image,
                batch.target_image.clone(),
            ),
        ];
        if let Some(pl) = pseudo {
            tiles.push(("pseudo-label".into(), DebugKind::Labels, pl.label.clone()));
            tiles.push((
                "teacher confidence".into(),
                DebugKind::Gray,
                pl.confidence.clone(),
            ));
            tiles.push(("pseudo-weight".into(), DebugKind::Gray, pl.weight.clone()));
        }
        if let Some(mb) = mixed {
            tiles.push((
                "mix mask".into(),
                DebugKind::Gray,
                Tensor::stack(&mb.masks, 0)?.to_dtype(DType::F32)?,
            ));
            tiles.push(("mixed image".into(), DebugKind::Image, mb.image.clone()));
            tiles.push(("mixed label".into(), DebugKind::Labels, mb.label.clone()));
            tiles.push(("mixed weight".into(), DebugKind::Gray, mb.weight.clone()));
        }
        for h in &self.hooks {
            for (name, mask) in h.debug_masks() {
                tiles.push((format!("{}.{}", h.name(), name), DebugKind::Gray, mask));
            }
        }
        Ok(StepDebug { tiles })
    }
}
