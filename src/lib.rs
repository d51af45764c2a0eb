//! omuda: unsupervised domain adaptation for semantic segmentation, on Candle.
//!
//! This crate re-exports the workspace: [`core`] (ops, networks, data,
//! training, evaluation), [`baselines`] (source-only, DACS,
//! DAFormer, HRDA and MIC on one shared step) and [`plugins`] (the OMUDA
//! masking plugins CAM, FDM and CDM), and the run configuration
//! ([`config`]) with its assembly ([`run`]).

pub mod config;
pub mod layers;
pub mod plot;
pub mod presets;
pub mod run;
pub mod visual;

/// TensorBoard event files (written by the run recorder).
pub use omuda_core::train::observers::tensorboard;

pub use omuda_baselines as baselines;
pub use omuda_core as core;

pub use config::RunConfig;
pub use omuda_baselines::{Dacs, SourceOnly};
pub use omuda_core::train::{SelfTraining, StepHook, UdaMethod};
pub use omuda_core::{Error, Result};
pub use run::{attach_plugins, base_spec, build_method, METHOD_NAMES};

pub use omuda_plugins as plugins;
pub use omuda_plugins::{with_omuda, Cam, Cdm, Fdm};
