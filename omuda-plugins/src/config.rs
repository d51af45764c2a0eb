//! The `[plugin]` settings of a run: the thing classes the plugins share and
//! one table per plugin (each plugin's settings type lives beside its code).

use serde::{Deserialize, Serialize};

use omuda_core::data::classes::THING_CLASSES;

use crate::cam::CamConfig;
use crate::cdm::CdmConfig;
use crate::fdm::FdmConfig;

/// Names accepted in `plugins = [...]`, in the order `with_omuda` attaches them.
pub const PLUGIN_NAMES: [&str; 3] = ["cam", "fdm", "cdm"];

/// Settings shared by the plugins and one table per plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Foreground ("thing") class ids; every other valid class is background
    /// ("stuff"). Default: DAFormer's Cityscapes thing trainIds.
    pub thing_classes: Vec<u32>,
    pub cam: CamConfig,
    pub fdm: FdmConfig,
    pub cdm: CdmConfig,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            thing_classes: THING_CLASSES.iter().map(|&c| u32::from(c)).collect(),
            cam: CamConfig::default(),
            fdm: FdmConfig::default(),
            cdm: CdmConfig::default(),
        }
    }
}

impl PluginsConfig {
    /// Range checks; each message names the key (`plugin.cam.bg_mask_ratio`, …).
    pub fn validate(&self, num_classes: usize) -> std::result::Result<(), String> {
        let prob = |key: &str, v: f32| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("plugin.{key} = {v}: expected a value in [0, 1]"))
            }
        };
        let weight = |key: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(format!("plugin.{key} = {v}: expected a finite value >= 0"))
            }
        };
        if let Some(c) = self
            .thing_classes
            .iter()
            .find(|&&c| c as usize >= num_classes)
        {
            return Err(format!(
                "plugin.thing_classes contains {c}: expected class ids below {num_classes}"
            ));
        }
        let c = &self.cam;
        prob("cam.fg_min_fraction", c.fg_min_fraction)?;
        prob("cam.bg_mask_ratio", c.bg_mask_ratio)?;
        prob("cam.fg_mask_ratio", c.fg_mask_ratio)?;
        weight("cam.weight", c.weight)?;
        if c.block_size == 0 {
            return Err("plugin.cam.block_size must be at least 1".into());
        }
        if c.fg_block_divisor == 0 {
            return Err("plugin.cam.fg_block_divisor must be at least 1".into());
        }
        c.aug
            .validate()
            .map_err(|e| format!("plugin.cam.aug: {e}"))?;
        let f = &self.fdm;
        prob("fdm.mask_ratio", f.mask_ratio)?;
        prob("fdm.downscale_label_ratio", f.downscale_label_ratio)?;
        weight("fdm.weight", f.weight)?;
        if f.block_size == 0 {
            return Err("plugin.fdm.block_size must be at least 1".into());
        }
        let d = &self.cdm;
        if !(0.0..=1.0).contains(&d.momentum) {
            return Err(format!(
                "plugin.cdm.momentum = {}: expected a value in [0, 1]",
                d.momentum
            ));
        }
        if let Some(t) = d.threshold {
            if !(t > 0.0 && t <= 1.0) {
                return Err(format!(
                    "plugin.cdm.threshold = {t}: expected a value in (0, 1]"
                ));
            }
        }
        Ok(())
    }
}
