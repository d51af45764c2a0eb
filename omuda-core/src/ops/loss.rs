//! Cross-entropy for segmentation with ignore index 255 and per-pixel weights.
//!
//! Semantics follow PyTorch `F.cross_entropy(logits, labels, reduction='none',
//! ignore_index=255)` per pixel (0 at ignored pixels), then optionally times a
//! per-pixel weight, then one of the [`CeReduction`]s. `candle_nn::loss::cross_entropy`
//! cannot do this (rank-2 only, no ignore index, no weights).
//!
//! On the CPU (f32 / f64) the loss is a fused custom op: one stable log-sum-exp
//! pass over the K classes of every pixel, and a backward custom op that reuses
//! that log-sum-exp to write `(softmax - onehot) · w · scale` directly. Other
//! devices use [`cross_entropy_composed`], built from differentiable Candle ops.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use crate::simd::wide;

pub use super::IGNORE_INDEX;

/// Pixels per parallel task in the CPU kernels: large enough to amortise the
/// task overhead, small enough to split one image between threads.
const CHUNK: usize = 4096;

/// How the per-pixel losses are averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeReduction {
    /// mmseg: mean over all B·H·W pixels, ignored pixels included (they count 0).
    MeanAll,
    /// Mean over the non-ignored pixels only (original DACS source loss);
    /// 0 when every pixel is ignored.
    MeanValid,
}

/// Cross-entropy of `logits` (B, K, H, W) against `labels` (B, H, W, u32,
/// [`IGNORE_INDEX`] = ignore), optionally times `weight` (B, H, W). Returns a
/// scalar of the logits' dtype.
///
/// The gradient flows to `logits` only: `weight` is treated as a constant.
/// Errors if a label is neither `< K` nor [`IGNORE_INDEX`].
pub fn cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    weight: Option<&Tensor>,
    reduction: CeReduction,
) -> Result<Tensor> {
    let dims = check_args(logits, labels, weight)?;
    match (logits.device(), logits.dtype()) {
        (Device::Cpu, DType::F32 | DType::F64) => {
            cross_entropy_cpu(logits, labels, weight, reduction, dims)
        }
        _ => cross_entropy_composed(logits, labels, weight, reduction),
    }
}

/// Device-generic path of [`cross_entropy`], composed of Candle ops (log-softmax,
/// `gather`, masks) and differentiated by Candle. Same semantics and errors;
/// slower on the CPU than the fused op. Public so tests can compare both paths.
pub fn cross_entropy_composed(
    logits: &Tensor,
    labels: &Tensor,
    weight: Option<&Tensor>,
    reduction: CeReduction,
) -> Result<Tensor> {
    let (b, _, h, w) = check_args(logits, labels, weight)?;
    let mut loss = per_pixel_nll(logits, labels)?;
    if let Some(wt) = weight {
        loss = loss.mul(&wt.detach().to_dtype(logits.dtype())?)?;
    }
    let sum = loss.sum_all()?;
    match reduction {
        CeReduction::MeanAll => sum.affine(1.0 / (b * h * w) as f64, 0.0),
        CeReduction::MeanValid => {
            let valid = labels
                .ne(IGNORE_INDEX)?
                .to_dtype(logits.dtype())?
                .sum_all()?;
            // With no valid pixel the sum is 0, so dividing by max(count, 1) gives 0.
            sum.div(&valid.maximum(1.0)?)
        }
    }
}

/// Per-pixel cross-entropy (B, H, W) of `logits` (B, K, H, W) against `labels`
/// (B, H, W, u32), 0 at [`IGNORE_INDEX`] pixels, not reduced. Differentiable with
/// respect to `logits` on every device (composed Candle ops).
pub fn cross_entropy_per_pixel(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    check_args(logits, labels, None)?;
    per_pixel_nll(logits, labels)
}

/// `-log_softmax(logits)[label]` per pixel, 0 where ignored. Labels must have
/// been shape-checked; their values are checked here.
fn per_pixel_nll(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let k = logits.dim(1)?;
    let valid = labels.ne(IGNORE_INDEX)?;
    // Ignored pixels gather class 0; their loss is masked out below.
    let safe = valid.where_cond(labels, &labels.zeros_like()?)?;
    check_label_range(&safe, k)?;
    let picked = log_softmax_dim1(logits)?
        .gather(&safe.unsqueeze(1)?.contiguous()?, 1)?
        .squeeze(1)?;
    let zeros = picked.zeros_like()?;
    valid.where_cond(&picked.neg()?, &zeros)
}

/// Stable log-softmax over dim 1. The max is detached: it cancels out of the
/// gradient, so tracking it would only add work.
fn log_softmax_dim1(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// Errors with the offending value if any of `safe_labels` (ignored pixels
/// already replaced by 0) is `>= k`. One scalar read back from the device.
fn check_label_range(safe_labels: &Tensor, k: usize) -> Result<()> {
    let max = safe_labels.flatten_all()?.max(0)?.to_scalar::<u32>()?;
    if max as usize >= k {
        return Err(bad_label(max, k));
    }
    Ok(())
}

fn bad_label(value: u32, k: usize) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "cross_entropy: labels contains {value}, expected a class id in 0..{k} or {IGNORE_INDEX} (ignore)"
    ))
}

/// Shapes and dtypes; returns (B, K, H, W).
fn check_args(
    logits: &Tensor,
    labels: &Tensor,
    weight: Option<&Tensor>,
) -> Result<(usize, usize, usize, usize)> {
    let (b, k, h, w) = logits.dims4().map_err(|_| {
        candle_core::Error::Msg(format!(
            "cross_entropy: logits must be (B, K, H, W), got shape {:?}",
            logits.dims()
        ))
    })?;
    if b * k * h * w == 0 {
        candle_core::bail!(
            "cross_entropy: logits must be non-empty, got shape {:?}",
            logits.dims()
        );
    }
    if labels.dims() != [b, h, w] {
        candle_core::bail!(
            "cross_entropy: labels must be (B, H, W) = {:?} to match logits {:?}, got {:?}",
            (b, h, w),
            logits.dims(),
            labels.dims()
        );
    }
    if labels.dtype() != DType::U32 {
        candle_core::bail!(
            "cross_entropy: labels must be u32, got {:?}",
            labels.dtype()
        );
    }
    if let Some(wt) = weight {
        if wt.dims() != [b, h, w] {
            candle_core::bail!(
                "cross_entropy: weight must be (B, H, W) = {:?} to match logits {:?}, got {:?}",
                (b, h, w),
                logits.dims(),
                wt.dims()
            );
        }
    }
    Ok((b, k, h, w))
}

/// Fused CPU path: labels and weights are read to the host once and shared by
/// the forward and backward ops.
fn cross_entropy_cpu(
    logits: &Tensor,
    labels: &Tensor,
    weight: Option<&Tensor>,
    reduction: CeReduction,
    (b, k, h, w): (usize, usize, usize, usize),
) -> Result<Tensor> {
    let labels = labels.flatten_all()?.to_vec1::<u32>()?;
    if let Some(&bad) = labels
        .iter()
        .find(|&&l| l as usize >= k && l != IGNORE_INDEX)
    {
        return Err(bad_label(bad, k));
    }
    // f64 holds f32 weights exactly, so one storage serves both kernels.
    let weight = match weight {
        Some(wt) => Some(Arc::new(
            wt.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?,
        )),
        None => None,
    };
    let scale = match reduction {
        CeReduction::MeanAll => 1.0 / (b * h * w) as f64,
        CeReduction::MeanValid => match labels.iter().filter(|&&l| l != IGNORE_INDEX).count() {
            0 => 0.0,
            n => 1.0 / n as f64,
        },
    };
    let data = CeData {
        labels: Arc::new(labels),
        weight,
        hw: h * w,
        k,
        lse: Arc::new(Mutex::new(None)),
    };
    logits.contiguous()?.apply_op1(CeForward { data, scale })
}

/// Labels and weights of one loss evaluation, flattened over (B, H, W).
#[derive(Clone)]
struct CeData {
    labels: Arc<Vec<u32>>,
    weight: Option<Arc<Vec<f64>>>,
    /// Pixels per image (H·W).
    hw: usize,
    /// Number of classes.
    k: usize,
    /// Per-pixel log-sum-exp from the forward, reused by the backward so the
    /// K exponentials per pixel are not recomputed.
    lse: Arc<Mutex<Option<Lse>>>,
}

/// Cached log-sum-exp, in the logits' dtype.
enum Lse {
    F32(Arc<Vec<f32>>),
    F64(Arc<Vec<f64>>),
}

impl CeData {
    fn weight_at(&self, q: usize) -> f64 {
        self.weight.as_ref().map_or(1.0, |w| w[q])
    }

    /// Log-sum-exp over K for every pixel, flattened (B, H·W). `x` is the
    /// contiguous (B, K, H, W) logits. Max-shifted, so no overflow for large logits.
    fn log_sum_exp<T: Real>(&self, x: &[T]) -> Vec<T> {
        let (hw, k) = (self.hw, self.k);
        let mut lse = vec![T::zero(); x.len() / k];
        lse.par_chunks_mut(hw)
            .zip(x.par_chunks(k * hw))
            .flat_map(|(out, xb)| {
                out.par_chunks_mut(CHUNK)
                    .enumerate()
                    .map(move |(c, o)| (c * CHUNK, o, xb))
            })
            .for_each(|(p0, out, xb)| {
                wide(
                    #[inline(always)]
                    || {
                        let n = out.len();
                        // Classes outer, pixels inner: contiguous reads along each class plane.
                        out.copy_from_slice(&xb[p0..p0 + n]);
                        for c in 1..k {
                            for (m, &v) in out.iter_mut().zip(&xb[c * hw + p0..][..n]) {
                                if v > *m {
                                    *m = v;
                                }
                            }
                        }
                        let mut sum = vec![T::zero(); n];
                        for c in 0..k {
                            let row = &xb[c * hw + p0..][..n];
                            for ((s, &v), &m) in sum.iter_mut().zip(row).zip(out.iter()) {
                                *s += (v - m).exp();
                            }
                        }
                        for (m, s) in out.iter_mut().zip(sum) {
                            *m += s.ln();
                        }
                    },
                )
            });
        lse
    }

    /// Σ_pixels (lse − x[label]) · w, ignored pixels skipped, in f64.
    fn loss_sum<T: Real>(&self, x: &[T]) -> f64 {
        let (hw, k) = (self.hw, self.k);
        let lse = Arc::new(self.log_sum_exp(x));
        if let Ok(mut cache) = self.lse.lock() {
            *cache = Some(T::wrap_lse(lse.clone()));
        }
        // Partial sums collected in order, then added sequentially: deterministic.
        let partials: Vec<f64> = lse
            .par_chunks(CHUNK)
            .enumerate()
            .map(|(c, chunk)| {
                wide(
                    #[inline(always)]
                    || {
                        let mut acc = 0f64;
                        for (i, &l) in chunk.iter().enumerate() {
                            let q = c * CHUNK + i;
                            let label = self.labels[q];
                            if label == IGNORE_INDEX {
                                continue;
                            }
                            let (b, p) = (q / hw, q % hw);
                            let picked = x[(b * k + label as usize) * hw + p];
                            acc += (l - picked).to_f64() * self.weight_at(q);
                        }
                        acc
                    },
                )
            })
            .collect();
        partials.into_iter().sum()
    }

    /// d(scale · Σ l·w)/dx = (softmax − onehot) · w · scale, 0 at ignored pixels.
    fn grad<T: Real>(&self, x: &[T], scale: f64) -> Vec<T> {
        let (hw, k) = (self.hw, self.k);
        let cached = self
            .lse
            .lock()
            .ok()
            .and_then(|c| c.as_ref().and_then(T::unwrap_lse));
        let lse = match cached {
            Some(lse) => lse,
            None => Arc::new(self.log_sum_exp(x)),
        };
        let coef: Vec<T> = (0..lse.len())
            .map(|q| match self.labels[q] {
                IGNORE_INDEX => T::zero(),
                _ => T::from_f64(self.weight_at(q) * scale),
            })
            .collect();
        let mut grad = vec![T::zero(); x.len()];
        // One (b, class) plane per task: disjoint writes, no atomics.
        grad.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(|(bc, (g, xp))| {
                wide(
                    #[inline(always)]
                    || {
                        let (b, c) = (bc / k, bc % k);
                        let base = b * hw;
                        let (lse, coef) = (&lse[base..base + hw], &coef[base..base + hw]);
                        let labels = &self.labels[base..base + hw];
                        for p in 0..hw {
                            let onehot = if labels[p] as usize == c {
                                T::one()
                            } else {
                                T::zero()
                            };
                            g[p] = ((xp[p] - lse[p]).exp() - onehot) * coef[p];
                        }
                    },
                )
            });
        grad
    }
}

/// Forward: logits (B, K, H, W) -> scalar `scale · Σ l·w`.
struct CeForward {
    data: CeData,
    scale: f64,
}

impl CustomOp1 for CeForward {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match storage.dtype() {
            DType::F32 => {
                let x = super::contiguous_slice::<f32>(storage, layout, self.name())?;
                CpuStorage::F32(vec![(self.data.loss_sum(x) * self.scale) as f32])
            }
            DType::F64 => {
                let x = super::contiguous_slice::<f64>(storage, layout, self.name())?;
                CpuStorage::F64(vec![self.data.loss_sum(x) * self.scale])
            }
            dt => candle_core::bail!(
                "cross-entropy: logits must be f32 or f64 on the cpu, got {dt:?}"
            ),
        };
        Ok((out, Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // The upstream gradient of a scalar loss is one number: fold it into the scale.
        let g = grad_res.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let grad = arg.contiguous()?.apply_op1(CeBackward {
            data: self.data.clone(),
            scale: self.scale * g,
        })?;
        Ok(Some(grad))
    }
}

/// Backward: logits (B, K, H, W) -> d loss / d logits (B, K, H, W). Has no
/// backward itself (second-order gradients of the loss are not supported and
/// raise Candle's "backward not supported" error).
struct CeBackward {
    data: CeData,
    scale: f64,
}

impl CustomOp1 for CeBackward {
    fn name(&self) -> &'static str {
        "cross-entropy-bwd"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match storage.dtype() {
            DType::F32 => {
                let x = super::contiguous_slice::<f32>(storage, layout, self.name())?;
                CpuStorage::F32(self.data.grad(x, self.scale))
            }
            DType::F64 => {
                let x = super::contiguous_slice::<f64>(storage, layout, self.name())?;
                CpuStorage::F64(self.data.grad(x, self.scale))
            }
            dt => candle_core::bail!("cross-entropy-bwd: logits must be f32 or f64, got {dt:?}"),
        };
        Ok((out, layout.shape().clone()))
    }
}

/// The float operations the CPU kernels need beyond [`WithDType`], and the
/// conversions to and from the dtype-tagged [`Lse`] cache.
trait Real: WithDType {
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn wrap_lse(lse: Arc<Vec<Self>>) -> Lse;
    fn unwrap_lse(lse: &Lse) -> Option<Arc<Vec<Self>>>;
}

impl Real for f32 {
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn ln(self) -> Self {
        f32::ln(self)
    }
    fn wrap_lse(lse: Arc<Vec<Self>>) -> Lse {
        Lse::F32(lse)
    }
    fn unwrap_lse(lse: &Lse) -> Option<Arc<Vec<Self>>> {
        match lse {
            Lse::F32(v) => Some(v.clone()),
            Lse::F64(_) => None,
        }
    }
}

impl Real for f64 {
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
    fn wrap_lse(lse: Arc<Vec<Self>>) -> Lse {
        Lse::F64(lse)
    }
    fn unwrap_lse(lse: &Lse) -> Option<Arc<Vec<Self>>> {
        match lse {
            Lse::F64(v) => Some(v.clone()),
            Lse::F32(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(labels: Vec<u32>) -> Result<(Tensor, Tensor)> {
        let logits = Tensor::randn(0f32, 1., (2, 3, 2, 2), &Device::Cpu)?;
        let labels = Tensor::from_vec(labels, (2, 2, 2), &Device::Cpu)?;
        Ok((logits, labels))
    }

    #[test]
    fn invalid_label_is_an_error_naming_labels_and_value() -> Result<()> {
        let (logits, labels) = inputs(vec![0, 1, 2, 255, 0, 7, 1, 2])?;
        for red in [CeReduction::MeanAll, CeReduction::MeanValid] {
            let fused = cross_entropy(&logits, &labels, None, red)
                .unwrap_err()
                .to_string();
            let composed = cross_entropy_composed(&logits, &labels, None, red)
                .unwrap_err()
                .to_string();
            for err in [fused, composed] {
                assert!(err.contains("labels") && err.contains('7'), "{err}");
            }
        }
        let err = cross_entropy_per_pixel(&logits, &labels)
            .unwrap_err()
            .to_string();
        assert!(err.contains("labels") && err.contains('7'), "{err}");
        Ok(())
    }

    #[test]
    fn mean_valid_with_every_pixel_ignored_is_zero() -> Result<()> {
        let (logits, labels) = inputs(vec![IGNORE_INDEX; 8])?;
        let weight = Tensor::ones((2, 2, 2), DType::F32, &Device::Cpu)?;
        for w in [None, Some(&weight)] {
            let var = candle_core::Var::from_tensor(&logits)?;
            let fused = cross_entropy(var.as_tensor(), &labels, w, CeReduction::MeanValid)?;
            let composed = cross_entropy_composed(&logits, &labels, w, CeReduction::MeanValid)?;
            assert_eq!(fused.to_scalar::<f32>()?, 0.0);
            assert_eq!(composed.to_scalar::<f32>()?, 0.0);
            let grads = fused.backward()?;
            let g = grads
                .get(var.as_tensor())
                .map(|g| g.abs()?.max_all()?.to_scalar::<f32>());
            assert_eq!(g.transpose()?, Some(0.0), "gradient must be all zeros");
        }
        Ok(())
    }

    #[test]
    fn wrong_label_dtype_and_shapes_are_errors() -> Result<()> {
        let (logits, labels) = inputs(vec![0; 8])?;
        let err = cross_entropy(
            &logits,
            &labels.to_dtype(DType::I64)?,
            None,
            CeReduction::MeanAll,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("labels must be u32"), "{err}");
        let bad_w = Tensor::ones((2, 2), DType::F32, &Device::Cpu)?;
        let err = cross_entropy(&logits, &labels, Some(&bad_w), CeReduction::MeanAll)
            .unwrap_err()
            .to_string();
        assert!(err.contains("weight"), "{err}");
        Ok(())
    }

    #[test]
    fn weight_gets_no_gradient() -> Result<()> {
        let (logits, labels) = inputs(vec![0, 1, 2, 255, 0, 2, 1, 2])?;
        let lv = candle_core::Var::from_tensor(&logits)?;
        let wv =
            candle_core::Var::from_tensor(&Tensor::ones((2, 2, 2), DType::F32, &Device::Cpu)?)?;
        for composed in [false, true] {
            let f = if composed {
                cross_entropy_composed
            } else {
                cross_entropy
            };
            let loss = f(
                lv.as_tensor(),
                &labels,
                Some(wv.as_tensor()),
                CeReduction::MeanAll,
            )?;
            let grads = loss.backward()?;
            assert!(
                grads.get(lv.as_tensor()).is_some(),
                "logits must get a gradient"
            );
            assert!(
                grads.get(wv.as_tensor()).is_none(),
                "weight must get no gradient"
            );
        }
        Ok(())
    }
}
