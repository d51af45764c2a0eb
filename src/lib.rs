//! omuda: unsupervised domain adaptation for semantic segmentation, on Candle.
//!
//! This crate re-exports the workspace: [`core`] (ops, networks, data,
//! training, evaluation, config) and [`baselines`] (source-only, DACS).

pub use omuda_baselines as baselines;
pub use omuda_core as core;

pub use omuda_baselines::{build_method, Dacs, SourceOnly};
pub use omuda_core::config::RunConfig;
pub use omuda_core::train::{SelfTraining, StepHook, UdaMethod};
pub use omuda_core::{Error, Result};
