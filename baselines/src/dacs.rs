//! DACS as re-implemented in mmseg and used as the DACS baseline by DAFormer,
//! HRDA and MIC (`lhoyer/MIC seg/configs/_base_/uda/dacs.py`; `lhoyer/DAFormer
//! experiments.py` id 1): EMA teacher with α 0.99, pseudo-label weight = share
//! of pixels with confidence ≥ 0.968, ClassMix over the batch-union classes,
//! colour jitter (s 0.2, p 0.8) and Gaussian blur (p 0.5) after mixing, AdamW
//! with head ×10 lr.

use candle_core::Device;
use omuda_core::config::RunConfig;
use omuda_core::train::SelfTraining;
use omuda_core::Result;

/// Constructors only: a baseline is a configuration of the shared step, so
/// they return that step (`SelfTraining`), ready for `.with(hook)`.
pub struct Dacs;

#[allow(clippy::new_ret_no_self)]
impl Dacs {
    /// DACS with the `[uda]` settings of `cfg` (whose defaults are DACS's).
    pub fn new(cfg: &RunConfig, device: &Device) -> Result<SelfTraining> {
        Self::named("dacs", cfg, device)
    }

    /// DACS under another name (e.g. the host of `mic_dacs`).
    pub fn named(name: &str, cfg: &RunConfig, device: &Device) -> Result<SelfTraining> {
        let mut spec = crate::base_spec(name, cfg);
        spec.uda.self_training = true;
        crate::build(spec, device)
    }
}
