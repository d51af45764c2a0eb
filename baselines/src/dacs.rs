//! DACS as re-implemented in mmseg and used as the DACS baseline by DAFormer,
//! HRDA and MIC (`lhoyer/MIC seg/configs/_base_/uda/dacs.py`; `lhoyer/DAFormer
//! experiments.py` id 1): EMA teacher with α 0.99, pseudo-label weight = share
//! of pixels with confidence ≥ 0.968, ClassMix over the batch-union classes,
//! colour jitter (s 0.2, p 0.8) and Gaussian blur (p 0.5) after mixing, AdamW
//! with head ×10 lr.

use candle_core::Device;
use omuda_core::train::spec::SelfTrainingSpec;
use omuda_core::train::SelfTraining;
use omuda_core::Result;

/// Constructors only: a baseline is a configuration of the shared step, so
/// they return that step (`SelfTraining`), ready for `.with(hook)`.
pub struct Dacs;

#[allow(clippy::new_ret_no_self)]
impl Dacs {
    /// DACS from `spec` (whose `[uda]` defaults are DACS's), self-training on.
    pub fn new(mut spec: SelfTrainingSpec, device: &Device) -> Result<SelfTraining> {
        spec.uda.self_training = true;
        SelfTraining::new(spec, device)
    }
}
