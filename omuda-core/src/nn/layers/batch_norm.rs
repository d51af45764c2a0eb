//! BatchNorm2d with running statistics stored in the VarBuilder. In train mode
//! on the CPU in f32 the normalisation is a fused op whose backward accounts for
//! the batch statistics itself; Candle's composed version reduces over batch and
//! space with slow broadcast reductions in backward. `forward_relu` fuses the
//! ReLU that follows most BatchNorms into the same op, so the autograd graph
//! keeps the input and the activated output, not the normalised map as well
//! (as PyTorch's in-place ReLU after a BatchNorm saves).

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;

use super::activation::{relu, relu_backward};
use super::cpu::{
    centered_dot, f32_data, graph_free_cpu, par_planes, split_at_axis, sq_dev_sum, sum_f32,
    use_cpu_kernels,
};
use crate::nn::ForwardCtx;

/// Two values per channel for `c` channels, computed in parallel by `f(channel)`
/// and laid out as (2, C) = [first values; second values].
fn per_channel_pairs(c: usize, f: impl Fn(usize) -> (f32, f32) + Sync + Send) -> Vec<f32> {
    let pairs: Vec<(f32, f32)> = (0..c).into_par_iter().map(f).collect();
    let mut out = vec![0f32; 2 * c];
    for (ci, (a, b)) in pairs.into_iter().enumerate() {
        out[ci] = a;
        out[c + ci] = b;
    }
    out
}

/// Per-channel [mean; biased variance] of (B, C, H, W) → (2, C). No gradient: the
/// train-mode BatchNorm backward accounts for the statistics itself.
struct ChannelStats;

impl CustomOp1 for ChannelStats {
    fn name(&self) -> &'static str {
        "channel-stats"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, "batch_norm input")?;
        let (b, c, hw) = split_at_axis(l.dims(), 1);
        let n = (b * hw) as f32;
        let out = per_channel_pairs(c, |ci| {
            let planes = || (0..b).map(move |bi| &x[(bi * c + ci) * hw..(bi * c + ci + 1) * hw]);
            let mean = planes().map(sum_f32).sum::<f32>() / n;
            let var = planes().map(|p| sq_dev_sum(p, mean)).sum::<f32>() / n;
            (mean, var)
        });
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}

/// One plane of a normalised map: `o = x·scale + shift` (a multiply and an
/// add, two roundings), then the ReLU when `relu`.
#[inline(always)]
fn scale_shift_plane(o: &mut [f32], x: &[f32], scale: f32, shift: f32, relu: bool) {
    if relu {
        for (ov, xv) in o.iter_mut().zip(x) {
            *ov = (xv * scale + shift).max(0.0);
        }
    } else {
        for (ov, xv) in o.iter_mut().zip(x) {
            *ov = xv * scale + shift;
        }
    }
}

/// Evaluation-mode BatchNorm without a graph: (x (B,C,H,W), scale (C),
/// shift (C)) → x·scale + shift per channel, followed by a ReLU when `relu`.
struct ChannelScaleShift {
    relu: bool,
}

impl CustomOp3 for ChannelScaleShift {
    fn name(&self) -> &'static str {
        "channel-scale-shift"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, "batch_norm input")?;
        let scale = f32_data(s2, l2, "batch_norm scale")?;
        let shift = f32_data(s3, l3, "batch_norm shift")?;
        if l1.dims().len() < 2 {
            bail!(
                "batch_norm: expected a (B, C, …) input, got {:?}",
                l1.dims()
            );
        }
        let (_, c, hw) = split_at_axis(l1.dims(), 1);
        if scale.len() != c || shift.len() != c {
            bail!(
                "batch_norm: input {:?} does not fit {} scales and {} shifts",
                l1.dims(),
                scale.len(),
                shift.len()
            );
        }
        let out = par_planes(
            x.len() / hw.max(1),
            hw,
            #[inline(always)]
            |plane, op| {
                let xp = &x[plane * hw..(plane + 1) * hw];
                scale_shift_plane(op, xp, scale[plane % c], shift[plane % c], self.relu);
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Train-mode BatchNorm: (x (B,C,H,W), stats (2,C) = [mean; var], wb (2,C) = [weight; bias]) → y,
/// followed by a ReLU when `relu`.
struct BatchNormTrainOp {
    eps: f32,
    relu: bool,
}

impl CustomOp3 for BatchNormTrainOp {
    fn name(&self) -> &'static str {
        "batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, "batch_norm input")?;
        let st = f32_data(s2, l2, "batch_norm statistics")?;
        let wb = f32_data(s3, l3, "batch_norm weight/bias")?;
        let (_, c, hw) = split_at_axis(l1.dims(), 1);
        let out = par_planes(
            x.len() / hw.max(1),
            hw,
            #[inline(always)]
            |plane, o| {
                let ci = plane % c;
                let scale = wb[ci] / (st[c + ci] + self.eps).sqrt();
                let shift = wb[c + ci] - st[ci] * scale;
                scale_shift_plane(o, &x[plane * hw..(plane + 1) * hw], scale, shift, self.relu);
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        stats: &Tensor,
        wb: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Through the ReLU first: the gradient passes where the output is positive.
        let grad = if self.relu {
            relu_backward(res, grad)?
        } else {
            grad.contiguous()?
        };
        // [Σ g·x̂; Σ g] per channel: the weight/bias gradient, and the two sums
        // the input gradient needs.
        let sums = x.apply_op3_no_bwd(&grad, stats, &BatchNormBwdParams { eps: self.eps })?;
        let grad_x = if x.track_op() {
            let params = Tensor::cat(&[stats, &wb.detach(), &sums], 0)?;
            Some(x.apply_op3_no_bwd(&grad, &params, &BatchNormBwdInput { eps: self.eps })?)
        } else {
            None
        };
        let grad_wb = if wb.track_op() { Some(sums) } else { None };
        Ok((grad_x, None, grad_wb))
    }
}

/// (x, grad_y, stats) → (2, C) = [Σ g·x̂; Σ g] over batch and space.
struct BatchNormBwdParams {
    eps: f32,
}

impl CustomOp3 for BatchNormBwdParams {
    fn name(&self) -> &'static str {
        "batch-norm-bwd-params"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, "batch_norm input")?;
        let g = f32_data(s2, l2, "batch_norm output gradient")?;
        let st = f32_data(s3, l3, "batch_norm statistics")?;
        let (b, c, hw) = split_at_axis(l1.dims(), 1);
        let out = per_channel_pairs(c, |ci| {
            let mean = st[ci];
            let rstd = 1.0 / (st[c + ci] + self.eps).sqrt();
            let (mut sgx, mut sg) = (0f32, 0f32);
            for bi in 0..b {
                let r = (bi * c + ci) * hw..(bi * c + ci + 1) * hw;
                sgx += centered_dot(&g[r.clone()], &x[r.clone()], mean);
                sg += sum_f32(&g[r]);
            }
            (sgx * rstd, sg)
        });
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}

/// (x, grad_y, params (6, C) = [mean; var; weight; bias; Σ g·x̂; Σ g]) → grad_x.
struct BatchNormBwdInput {
    eps: f32,
}

impl CustomOp3 for BatchNormBwdInput {
    fn name(&self) -> &'static str {
        "batch-norm-bwd-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, "batch_norm input")?;
        let g = f32_data(s2, l2, "batch_norm output gradient")?;
        let p = f32_data(s3, l3, "batch_norm backward parameters")?;
        let (b, c, hw) = split_at_axis(l1.dims(), 1);
        let n = (b * hw) as f32;
        let out = par_planes(
            x.len() / hw.max(1),
            hw,
            #[inline(always)]
            |plane, o| {
                let ci = plane % c;
                let mean = p[ci];
                let rstd = 1.0 / (p[c + ci] + self.eps).sqrt();
                let w = p[2 * c + ci];
                let (mgx, mg) = (p[4 * c + ci] / n, p[5 * c + ci] / n);
                let r = plane * hw..(plane + 1) * hw;
                // dx = w·rstd·(g − mean(g) − x̂·mean(g·x̂)).
                for ((ov, xv), gv) in o.iter_mut().zip(x[r.clone()].iter()).zip(g[r].iter()) {
                    let xh = (xv - mean) * rstd;
                    *ov = w * rstd * (gv - mg - xh * mgx);
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Batch statistics [mean; biased var] (2, C) of (B, C, H, W), composed and detached.
fn channel_stats_composed(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let xs = x.detach().contiguous()?.reshape((b, c, h * w))?;
    let mean = xs.mean_keepdim(2)?.mean_keepdim(0)?; // (1, C, 1)
    let var = xs
        .broadcast_sub(&mean)?
        .sqr()?
        .mean_keepdim(2)?
        .mean_keepdim(0)?;
    Tensor::cat(&[mean.reshape((1, c))?, var.reshape((1, c))?], 0)
}

/// Composed train-mode batch normalisation, differentiable through the batch
/// statistics (the reference for the fused op and the path off the CPU).
pub fn batch_norm_train_composed(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let (bs, c, h, wd) = x.dims4()?;
    let xs = x.contiguous()?.reshape((bs, c, h * wd))?;
    let mean = xs.mean_keepdim(2)?.mean_keepdim(0)?;
    let xc = xs.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(2)?.mean_keepdim(0)?;
    let y = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    let y = y
        .broadcast_mul(&w.reshape((1, c, 1))?)?
        .broadcast_add(&b.reshape((1, c, 1))?)?;
    y.reshape((bs, c, h, wd))
}

/// Batch normalisation over (B, C, H, W) with `weight`, `bias`, `running_mean`,
/// `running_var` and `num_batches_tracked` (an f32 scalar count) in the VarBuilder,
/// so the running statistics are saved with the model.
///
/// Train mode (`ctx.bn_train`) normalises with the batch statistics (biased
/// variance) and updates the running ones in place: `r ← (1−m)·r + m·batch` with
/// momentum m = 0.1 and the unbiased batch variance, as PyTorch does.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    num_batches_tracked: Var,
    eps: f64,
    momentum: f64,
    name: String,
}

impl BatchNorm2d {
    /// eps 1e-5, momentum 0.1 (PyTorch defaults).
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        // With a VarMap backend these tensors are the VarMap's own variables, so
        // `Var::from_tensor` shares their storage and `set` updates the stored state.
        let running_mean =
            Var::from_tensor(&vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?)?;
        let running_var =
            Var::from_tensor(&vb.get_with_hints(channels, "running_var", Init::Const(1.0))?)?;
        let num_batches_tracked =
            Var::from_tensor(&vb.get_with_hints((), "num_batches_tracked", Init::Const(0.0))?)?;
        Ok(Self {
            weight,
            bias,
            running_mean,
            running_var,
            num_batches_tracked,
            eps: 1e-5,
            momentum: 0.1,
            name: vb.prefix(),
        })
    }

    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }

    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }

    pub fn num_batches_tracked(&self) -> &Tensor {
        self.num_batches_tracked.as_tensor()
    }

    pub fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        self.forward_impl(x, ctx, false)
    }

    /// `relu(self.forward(x))`, as one op in train mode on the CPU in f32.
    pub fn forward_relu(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        self.forward_impl(x, ctx, true)
    }

    fn forward_impl(&self, x: &Tensor, ctx: &mut ForwardCtx, with_relu: bool) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if c != self.weight.elem_count() {
            bail!(
                "BatchNorm2d {}: expected {} channels, got input {:?}",
                self.name,
                self.weight.elem_count(),
                x.dims()
            );
        }
        if !ctx.bn_train {
            return self.forward_eval(x, with_relu);
        }
        let n = b * h * w;
        if n < 2 {
            bail!(
                "BatchNorm2d {}: train mode needs more than one value per channel, got input {:?}",
                self.name,
                x.dims()
            );
        }
        let (y, stats) = if use_cpu_kernels(x, &[]) {
            let x = x.contiguous()?;
            let stats = x.apply_op1_no_bwd(&ChannelStats)?;
            let wb = Tensor::stack(&[&self.weight, &self.bias], 0)?;
            (
                x.apply_op3(
                    &stats,
                    &wb,
                    BatchNormTrainOp {
                        eps: self.eps as f32,
                        relu: with_relu,
                    },
                )?,
                stats,
            )
        } else {
            let y = batch_norm_train_composed(x, &self.weight, &self.bias, self.eps)?;
            (
                if with_relu { relu(&y)? } else { y },
                channel_stats_composed(x)?,
            )
        };
        self.update_running_stats(&stats, n)?;
        Ok(y)
    }

    fn forward_eval(&self, x: &Tensor, with_relu: bool) -> Result<Tensor> {
        let c = self.weight.elem_count();
        // Running statistics are state, not parameters: detached so that no
        // gradient is computed for them.
        let rstd = (self.running_var.as_detached_tensor() + self.eps)?
            .sqrt()?
            .recip()?;
        let scale = (&self.weight * rstd)?;
        let shift = (&self.bias - (self.running_mean.as_detached_tensor() * &scale)?)?;
        // Without a graph (evaluation on graph-free weights): one pass over
        // the map instead of a broadcast multiply, a broadcast add and a ReLU,
        // each allocating a map; the same two roundings, so the same bits.
        if graph_free_cpu(x, &[&scale, &shift]) {
            return x.contiguous()?.apply_op3_no_bwd(
                &scale,
                &shift,
                &ChannelScaleShift { relu: with_relu },
            );
        }
        let y = x
            .broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
            .broadcast_add(&shift.reshape((1, c, 1, 1))?)?;
        if with_relu {
            relu(&y)
        } else {
            Ok(y)
        }
    }

    fn update_running_stats(&self, stats: &Tensor, n: usize) -> Result<()> {
        let m = self.momentum;
        let mean = stats.get(0)?.to_dtype(self.running_mean.dtype())?;
        let unbiased =
            (stats.get(1)? * (n as f64 / (n as f64 - 1.0)))?.to_dtype(self.running_var.dtype())?;
        let new_mean = ((self.running_mean.as_detached_tensor() * (1.0 - m))? + (mean * m)?)?;
        let new_var = ((self.running_var.as_detached_tensor() * (1.0 - m))? + (unbiased * m)?)?;
        let new_count = (self.num_batches_tracked.as_detached_tensor() + 1.0)?;
        self.running_mean.set(&new_mean)?;
        self.running_var.set(&new_var)?;
        self.num_batches_tracked.set(&new_count)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::close;
    use super::super::test_util::randn;
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn batch_norm_f64_composed_path_matches_f32() {
        let x = randn(&[3, 2, 4, 4]);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut out = Vec::new();
        let mut stats = Vec::new();
        for dtype in [DType::F32, DType::F64] {
            let vm = VarMap::new();
            let bn =
                BatchNorm2d::new(2, VarBuilder::from_varmap(&vm, dtype, &Device::Cpu)).unwrap();
            let y = bn
                .forward(
                    &x.to_dtype(dtype).unwrap(),
                    &mut ForwardCtx::train(&mut rng),
                )
                .unwrap();
            out.push(y.to_dtype(DType::F32).unwrap());
            stats.push(bn.running_var().to_dtype(DType::F32).unwrap());
        }
        close(&out[1], &out[0], 1e-5, "batch_norm output");
        close(&stats[1], &stats[0], 1e-5, "batch_norm running_var");
    }

    /// The fused BatchNorm + ReLU equals ReLU after BatchNorm in value (bit for
    /// bit) and in the gradients of the input, weight and bias.
    /// Evaluation mode on graph-free statistics and weights (one fused pass)
    /// gives the bits of the composed path (multiply, add, ReLU), which the
    /// same layer takes when its weights are variables.
    #[test]
    fn eval_without_graph_is_the_composed_path() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let x = randn(&[2, 3, 5, 4]);
        let vm = VarMap::new();
        let vars =
            BatchNorm2d::new(3, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        let mut plain = std::collections::HashMap::new();
        for name in ["weight", "bias", "running_mean"] {
            plain.insert(name.to_string(), randn(&[3]));
        }
        plain.insert("running_var".to_string(), randn(&[3]).abs().unwrap());
        plain.insert(
            "num_batches_tracked".to_string(),
            Tensor::new(0f32, &Device::Cpu).unwrap(),
        );
        {
            let data = vm.data().lock().unwrap();
            for (name, var) in data.iter() {
                var.set(&plain[name.as_str()]).unwrap();
            }
        }
        let graph_free =
            BatchNorm2d::new(3, VarBuilder::from_tensors(plain, DType::F32, &Device::Cpu)).unwrap();
        assert!(!graph_free.weight.track_op() && vars.weight.track_op());
        for relu in [false, true] {
            let mut run = |bn: &BatchNorm2d| {
                let mut ctx = ForwardCtx::eval(&mut rng);
                let y = if relu {
                    bn.forward_relu(&x, &mut ctx)
                } else {
                    bn.forward(&x, &mut ctx)
                };
                y.unwrap()
            };
            let (fused, composed) = (run(&graph_free), run(&vars));
            assert_eq!(fused.dims(), x.dims());
            assert!(
                super::super::test_util::bits(&fused) == super::super::test_util::bits(&composed),
                "relu {relu}: values differ"
            );
        }
    }

    #[test]
    fn fused_relu_matches_separate_relu() {
        let x = candle_core::Var::from_tensor(&randn(&[2, 3, 5, 4])).unwrap();
        let upstream = randn(&[2, 3, 5, 4]);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let vm = VarMap::new();
        let bn =
            BatchNorm2d::new(3, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        // Non-trivial affine parameters, so both gradients are exercised.
        {
            let data = vm.data().lock().unwrap();
            for (name, var) in data.iter() {
                if name.ends_with("weight") || name.ends_with("bias") {
                    var.set(&randn(&[3])).unwrap();
                }
            }
        }
        let fused = bn
            .forward_relu(&x, &mut ForwardCtx::train(&mut rng))
            .unwrap();
        let separate = relu(&bn.forward(&x, &mut ForwardCtx::train(&mut rng)).unwrap()).unwrap();
        let bits = |t: &Tensor| {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        assert!(bits(&fused) == bits(&separate), "values differ");
        let zeros = fused
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .filter(|v| **v == 0.0)
            .count();
        assert!(
            zeros > 0 && zeros < fused.elem_count(),
            "the ReLU must cut some values ({zeros})"
        );
        let gf = (&fused * &upstream)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gs = (&separate * &upstream)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        close(
            gf.get(&x).unwrap(),
            gs.get(&x).unwrap(),
            1e-5,
            "input gradient",
        );
        for t in [&bn.weight, &bn.bias] {
            close(
                gf.get(t).unwrap(),
                gs.get(t).unwrap(),
                1e-5,
                "weight/bias gradient",
            );
        }
    }
}
