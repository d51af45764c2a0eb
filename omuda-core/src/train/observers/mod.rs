//! Observers of the training loop ([`crate::train::trainer::TrainObserver`]):
//! [`recorder::RunRecorder`] writes everything a run leaves behind;
//! [`tensorboard`] is its TensorBoard event-file writer and reader.

pub mod recorder;
pub mod tensorboard;

pub use recorder::{Interruption, LogFormat, RecorderSettings, RunRecorder};
