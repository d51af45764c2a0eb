//! Mixed-precision training forward of the student (`model.autocast`).
//!
//! The optimizer keeps f32 master weights (the student's `VarMap`). With
//! autocast on, every training forward of the student runs on a copy of the
//! network whose parameters are the master weights cast to bf16 or f16: the
//! casts are ordinary graph operations, so the backward pass carries the
//! gradients back to the f32 masters, where AdamW and the EMA teacher work in
//! f32 as before. The input is cast on entry; features and logits are cast
//! back to f32 on exit, so losses, pseudo-labels and hooks see f32 tensors.
//!
//! BatchNorm running statistics are state, not parameters: the cast network
//! is given the master buffers themselves (f32), so the statistics it
//! updates are the student's. The teacher, evaluation and prediction run in
//! f32 (only the student's training forward is cast).
//!
//! Where it helps: on CUDA, where candle runs bf16/f16 matmuls and
//! convolutions natively. On the CPU the fused kernels are f32-only, so the
//! cast network takes candle's composed ops — slower than f32; the CPU path
//! exists so the option is tested without a GPU.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::nn::{build_segmentor, is_buffer, ForwardCtx, ModelConfig, SegModel};
use crate::{Error, Result};

/// Compute precision of the student's training forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Autocast {
    /// Full precision (no casting).
    #[default]
    F32,
    /// bfloat16: the f32 exponent range, 8 bits of mantissa.
    Bf16,
    /// IEEE half precision: 11 bits of mantissa, range up to 65504.
    F16,
}

impl Autocast {
    /// Autocast off.
    pub fn is_f32(&self) -> bool {
        *self == Autocast::F32
    }

    /// The compute dtype, `None` for f32 (autocast off).
    pub fn dtype(self) -> Option<DType> {
        match self {
            Autocast::F32 => None,
            Autocast::Bf16 => Some(DType::BF16),
            Autocast::F16 => Some(DType::F16),
        }
    }
}

/// A `VarBuilder` backend that hands out the master variables cast to
/// `dtype` (parameters) or as they are (buffers). Every tensor must already
/// exist in `vars`: the cast network mirrors a network built before.
struct CastBackend {
    vars: VarMap,
    dtype: DType,
}

impl CastBackend {
    fn lookup(&self, name: &str, shape: Option<&Shape>) -> candle_core::Result<Tensor> {
        let data = self
            .vars
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
        let var = data.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "autocast: the student has no tensor `{name}` to cast"
            ))
        })?;
        if let Some(shape) = shape {
            if var.shape() != shape {
                return Err(candle_core::Error::Msg(format!(
                    "autocast: tensor `{name}` has shape {:?}, the network asks for {shape:?}",
                    var.shape()
                )));
            }
        }
        if is_buffer(name) {
            // The master buffer itself: BatchNorm updates it in place.
            Ok(var.as_tensor().clone())
        } else {
            var.as_tensor().to_dtype(self.dtype)
        }
    }
}

impl SimpleBackend for CastBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: Init,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.lookup(name, Some(&s))
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.lookup(name, None)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vars
            .data()
            .lock()
            .map(|d| d.contains_key(name))
            .unwrap_or(false)
    }
}

/// The student seen through autocast: f32 in and out, `dtype` inside.
///
/// A fresh cast copy is built at each [`SegModel::features`] call (the
/// master weights change after every optimizer step) and reused by the
/// calls that follow it in the same forward (`decode`, `scale_attention`).
pub struct AutocastModel {
    config: ModelConfig,
    master: VarMap,
    dtype: DType,
    device: Device,
    current: Mutex<Option<Arc<dyn SegModel>>>,
}

impl AutocastModel {
    /// Wrap the network `config` whose f32 master weights are `master`.
    pub fn new(
        config: &ModelConfig,
        master: &VarMap,
        autocast: Autocast,
        device: &Device,
    ) -> Result<Self> {
        let dtype = autocast.dtype().ok_or_else(|| Error::Config {
            origin: "model.autocast".into(),
            message: "autocast is \"f32\": there is nothing to cast".into(),
        })?;
        if dtype == DType::BF16 && device.is_cpu() {
            return Err(Error::Config {
                origin: "model.autocast".into(),
                message: "\"bf16\" needs a CUDA device: candle's CPU backend has no bf16 matmul (use \"f16\" to try autocast on the CPU, or \"f32\")".into(),
            });
        }
        let model = Self {
            config: config.clone(),
            master: master.clone(),
            dtype,
            device: device.clone(),
            current: Mutex::new(None),
        };
        // Build once now so a mismatch between network and weights is reported at construction.
        model.rebuild()?;
        Ok(model)
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn rebuild(&self) -> Result<Arc<dyn SegModel>> {
        let backend: Box<dyn SimpleBackend> = Box::new(CastBackend {
            vars: self.master.clone(),
            dtype: self.dtype,
        });
        let vb = VarBuilder::from_backend(backend, self.dtype, self.device.clone());
        let model: Arc<dyn SegModel> = Arc::from(build_segmentor(&self.config, vb)?);
        *self
            .current
            .lock()
            .map_err(|_| Error::msg("autocast: lock poisoned"))? = Some(model.clone());
        Ok(model)
    }

    fn latest(&self) -> Result<Arc<dyn SegModel>> {
        let current = self
            .current
            .lock()
            .map_err(|_| Error::msg("autocast: lock poisoned"))?
            .clone();
        match current {
            Some(m) => Ok(m),
            None => self.rebuild(),
        }
    }
}

impl SegModel for AutocastModel {
    fn features(&self, x: &Tensor, ctx: &mut ForwardCtx) -> candle_core::Result<Vec<Tensor>> {
        let model = self.rebuild().map_err(to_candle)?;
        let feats = model.features(&x.to_dtype(self.dtype)?, ctx)?;
        feats.iter().map(|f| f.to_dtype(DType::F32)).collect()
    }

    fn decode(&self, features: &[Tensor], ctx: &mut ForwardCtx) -> candle_core::Result<Tensor> {
        let model = self.latest().map_err(to_candle)?;
        let feats = features
            .iter()
            .map(|f| f.to_dtype(self.dtype))
            .collect::<candle_core::Result<Vec<_>>>()?;
        model.decode(&feats, ctx)?.to_dtype(DType::F32)
    }

    fn num_classes(&self) -> usize {
        self.config.num_classes
    }

    fn scale_attention(
        &self,
        features: &[Tensor],
        ctx: &mut ForwardCtx,
    ) -> candle_core::Result<Option<Tensor>> {
        let model = self.latest().map_err(to_candle)?;
        let feats = features
            .iter()
            .map(|f| f.to_dtype(self.dtype))
            .collect::<candle_core::Result<Vec<_>>>()?;
        model
            .scale_attention(&feats, ctx)?
            .map(|a| a.to_dtype(DType::F32))
            .transpose()
    }
}

fn to_candle(e: Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}
