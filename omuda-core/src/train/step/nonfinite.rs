//! The step's check for non-finite gradients (the `train.nonfinite` policy
//! decides what happens next).

use candle_core::{DType, Tensor};
use candle_nn::VarMap;

use crate::{Error, Result};

/// The name of the first parameter (in name order) whose gradient holds a NaN
/// or an infinity; one device round trip when every gradient is finite.
pub(super) fn first_nonfinite_grad(
    vars: &VarMap,
    grads: &candle_core::backprop::GradStore,
) -> Result<Option<String>> {
    let data = vars
        .data()
        .lock()
        .map_err(|_| Error::msg("VarMap lock poisoned"))?;
    let mut probes: Vec<(&String, Tensor)> = Vec::new();
    for (name, var) in data.iter() {
        if let Some(g) = grads.get(var.as_tensor()) {
            // x - x is 0 for finite x and NaN for NaN and ±inf.
            probes.push((name, g.sub(g)?.to_dtype(DType::F32)?.sum_all()?));
        }
    }
    if probes.is_empty() {
        return Ok(None);
    }
    let all = Tensor::stack(
        &probes.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(),
        0,
    )?
    .sum_all()?
    .to_scalar::<f32>()?;
    if all.is_finite() {
        return Ok(None);
    }
    probes.sort_by(|a, b| a.0.cmp(b.0));
    for (name, p) in probes {
        if !p.to_scalar::<f32>()?.is_finite() {
            return Ok(Some(name.clone()));
        }
    }
    Ok(None)
}
