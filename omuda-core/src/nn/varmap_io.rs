//! Saving and loading every variable of a `VarMap` as safetensors, with
//! errors that name the file and the tensor.

use std::path::Path;

use candle_core::Device;
use candle_nn::VarMap;

use crate::{Error, Result};

/// Save every variable of `vars` (parameters and buffers) as safetensors.
pub fn save_varmap(vars: &VarMap, path: &Path) -> Result<()> {
    vars.save(path)
        .map_err(|e| Error::file(path, e.to_string()))
}

/// Load every variable of `vars` from `path`; a missing or mis-shaped tensor is an error naming it.
pub fn load_varmap(vars: &VarMap, path: &Path) -> Result<()> {
    load_varmap_where(vars, path, &|_| true)
}

/// Load the variables of `vars` found in `path`. A variable for which
/// `required(name)` holds must be present; a tensor of the wrong shape is
/// always an error naming it. Variables not required and absent keep their
/// values.
pub fn load_varmap_where(
    vars: &VarMap,
    path: &Path,
    required: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::file(path, e.to_string()))?;
    let data = vars
        .data()
        .lock()
        .map_err(|_| Error::msg("VarMap lock poisoned"))?;
    for (name, var) in data.iter() {
        match tensors.get(name) {
            Some(t) if t.shape() == var.shape() => {
                var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?
            }
            Some(t) => {
                return Err(Error::file(
                    path,
                    format!(
                        "tensor `{name}` has shape {:?}, expected {:?}",
                        t.shape(),
                        var.shape()
                    ),
                ))
            }
            None if required(name) => {
                return Err(Error::file(
                    path,
                    format!("no tensor `{name}` (expected shape {:?})", var.shape()),
                ))
            }
            None => {}
        }
    }
    Ok(())
}
