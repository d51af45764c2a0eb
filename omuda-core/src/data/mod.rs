//! Data: class tables, the built-in synthetic domain pair, normalisation and
//! batching; datasets on disk (GTA5, SYNTHIA, Cityscapes, folder datasets),
//! the reference training pipelines, RCS, the statistics files of `omuda
//! prepare`, and the prefetching real-dataset loader.

pub mod batch;
pub mod classes;
pub mod config;
pub mod datasets;
pub mod exclusions;
pub mod glob;
pub mod labels;
pub mod loader;
pub mod pipeline;
pub mod png_io;
pub mod prefetch;
pub mod prepare;
pub mod rcs;
pub mod run_batches;
pub mod stats;
pub mod synth;
pub mod synth_export;
pub mod synth_pretrain;
pub mod synth_rcs;
pub mod valid_region;
