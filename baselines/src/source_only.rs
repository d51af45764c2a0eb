//! Source-only training: the supervised source loss alone, same network,
//! optimizer and schedule as the UDA methods (the lower bound of a table).

use candle_core::Device;
use omuda_core::train::spec::SelfTrainingSpec;
use omuda_core::train::SelfTraining;
use omuda_core::Result;

/// Constructors only: a baseline is a configuration of the shared step, so
/// they return that step (`SelfTraining`), ready for `.with(hook)`.
pub struct SourceOnly;

#[allow(clippy::new_ret_no_self)]
impl SourceOnly {
    /// Source-only training from `spec`: no teacher, no target loss. The
    /// oracle is this method trained on target labels (the batch source
    /// decides which domain is labelled).
    pub fn new(mut spec: SelfTrainingSpec, device: &Device) -> Result<SelfTraining> {
        spec.uda.self_training = false;
        SelfTraining::new(spec, device)
    }
}
