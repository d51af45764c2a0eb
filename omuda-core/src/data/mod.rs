//! Data: class tables, the built-in synthetic domain pair, normalisation and batching.

pub mod classes;
pub mod loader;
pub mod synth;
