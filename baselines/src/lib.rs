//! The baseline UDA methods, each a configuration of omuda-core's shared
//! self-training step (`omuda_core::train::SelfTraining`); none copies it.
//! Components that add a loss are hooks of that step (`fd.rs`, `mic.rs`).
//!
//! | method | file | what it sets |
//! |---|---|---|
//! | source-only | `source_only.rs` | no teacher, no target loss |
//! | DACS (mmseg re-implementation) | `dacs.rs` | EMA teacher α 0.99, τ 0.968, ClassMix over the batch union, strong augmentation after mixing |
//! | DAFormer | `daformer.rs` | DACS step + thing-class feature distance (`fd.rs`, hook `"fd"`); α 0.999, pseudo-label crop, RCS and the DAFormer network come from the configuration (`configs/daformer-*.toml`) |
//! | HRDA | `hrda.rs` | DAFormer's step and FD + multi-resolution objective (`omuda_core::train::multires`) and the scale-attention head |
//! | MIC(host) | `mic.rs` | host + masked image consistency (hook `"mic"`): `mic_dacs`, `mic_daformer`, `mic_hrda` |

pub mod dacs;
pub mod daformer;
pub mod fd;
pub mod hrda;
pub mod mic;
pub mod source_only;

pub use dacs::Dacs;
pub use daformer::Daformer;
pub use fd::{FdConfig, FeatureDistance};
pub use hrda::Hrda;
pub use mic::{Mic, MicConfig};
pub use source_only::SourceOnly;
