//! Run-configuration presets embedded in the binary (`configs/*.toml`), so
//! they work from any directory. A preset is a TOML file read over the
//! built-in defaults ([`RunConfig::default`]): it states what it changes.
//!
//! Used by `omuda train --config`, `omuda compare --preset` and
//! `omuda config show`: each accepts a preset name or a TOML file path.

use crate::{Result, RunConfig};

/// Name → TOML text of every shipped preset: the published recipes on the
/// real datasets (`<method>-<source>2cs`, the published configurations of
/// DACS, DAFormer, HRDA and MIC) and small versions of each method on the
/// built-in synthetic pair (`synth-*`).
pub const PRESETS: &[(&str, &str)] = &[
    (
        "synth-source_only",
        include_str!("../configs/synth-source_only.toml"),
    ),
    ("synth-dacs", include_str!("../configs/synth-dacs.toml")),
    (
        "synth-scratch",
        include_str!("../configs/synth-scratch.toml"),
    ),
    (
        "synth-daformer",
        include_str!("../configs/synth-daformer.toml"),
    ),
    (
        "synth-mic_dacs",
        include_str!("../configs/synth-mic_dacs.toml"),
    ),
    (
        "synth-mic_daformer",
        include_str!("../configs/synth-mic_daformer.toml"),
    ),
    ("synth-hrda", include_str!("../configs/synth-hrda.toml")),
    (
        "synth-mic_hrda",
        include_str!("../configs/synth-mic_hrda.toml"),
    ),
    ("dacs-gta2cs", include_str!("../configs/dacs-gta2cs.toml")),
    (
        "dacs-synthia2cs",
        include_str!("../configs/dacs-synthia2cs.toml"),
    ),
    (
        "daformer-gta2cs",
        include_str!("../configs/daformer-gta2cs.toml"),
    ),
    (
        "daformer-synthia2cs",
        include_str!("../configs/daformer-synthia2cs.toml"),
    ),
    ("hrda-gta2cs", include_str!("../configs/hrda-gta2cs.toml")),
    (
        "hrda-synthia2cs",
        include_str!("../configs/hrda-synthia2cs.toml"),
    ),
    (
        "mic_hrda-gta2cs",
        include_str!("../configs/mic_hrda-gta2cs.toml"),
    ),
    (
        "mic_hrda-synthia2cs",
        include_str!("../configs/mic_hrda-synthia2cs.toml"),
    ),
];

/// Names of the shipped presets, in [`PRESETS`] order.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}

/// The TOML text of preset `name`, if shipped.
pub fn preset_text(name: &str) -> Option<&'static str> {
    PRESETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// A preset name or a TOML file path, resolved into a configuration (a
/// shipped preset wins over a file of the same name; `base` chains are
/// followed, [`crate::layers`]). `key` names the option in the error (e.g.
/// `--config`).
pub fn resolve(name_or_path: &str, key: &str) -> Result<RunConfig> {
    crate::layers::resolve(Some(name_or_path), &[], key)
}
