//! Source-only training: the supervised source loss alone, same network,
//! optimizer and schedule as the UDA methods (the lower bound of a table).

use candle_core::Device;
use omuda_core::config::RunConfig;
use omuda_core::train::SelfTraining;
use omuda_core::Result;

/// Constructors only: a baseline is a configuration of the shared step, so
/// they return that step (`SelfTraining`), ready for `.with(hook)`.
pub struct SourceOnly;

#[allow(clippy::new_ret_no_self)]
impl SourceOnly {
    pub fn new(cfg: &RunConfig, device: &Device) -> Result<SelfTraining> {
        Self::named("source_only", cfg, device)
    }

    /// Source-only under another name (e.g. `oracle`, trained on target labels).
    pub fn named(name: &str, cfg: &RunConfig, device: &Device) -> Result<SelfTraining> {
        let mut spec = crate::base_spec(name, cfg);
        spec.uda.self_training = false;
        crate::build(spec, device)
    }
}
