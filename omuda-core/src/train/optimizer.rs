//! AdamW with parameter groups and saveable state.
//!
//! Candle's `AdamW` applies one learning rate and one weight decay to every
//! variable and keeps its moments private, so runs could not resume exactly.
//! This one follows torch's `AdamW` update (decoupled decay, bias correction,
//! eps added after the square root) and mmcv's `paramwise_cfg.custom_keys`
//! rule for groups (mmcv 1.3.7 `DefaultOptimizerConstructor.add_params`, with
//! the keys of `lhoyer/DAFormer
//! configs/daformer/gta2cs_uda_warm_fdthings_rcs_croppl_a999_daformer_mitb5_s0.py`).
//!
//! For `f32` parameters on the CPU the step is one fused in-place pass per
//! parameter (`fused_update::AdamWKernel`) with the moments in host memory;
//! elsewhere it is the composed Candle expression. Both give bit-identical
//! parameters.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::nn::is_buffer;
use crate::train::fused_update::{self, AdamWKernel, AdamWScalars};
use crate::{Error, Result};

/// An lr / weight-decay multiplier for every parameter whose full name contains `key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRule {
    pub key: String,
    #[serde(default = "one")]
    pub lr_mult: f64,
    #[serde(default = "one")]
    pub decay_mult: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Matched as substrings of the parameter name; the longest key is tried
    /// first (ties alphabetically) and the first match wins, as in mmcv.
    pub custom_keys: Vec<GroupRule>,
}

impl Default for AdamWConfig {
    /// The DAFormer/HRDA/MIC recipe: wd 0.01, head ×10 lr, no decay on norms.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            custom_keys: vec![
                GroupRule {
                    key: "head".into(),
                    lr_mult: 10.0,
                    decay_mult: 1.0,
                },
                GroupRule {
                    key: "pos_block".into(),
                    lr_mult: 1.0,
                    decay_mult: 0.0,
                },
                GroupRule {
                    key: "norm".into(),
                    lr_mult: 1.0,
                    decay_mult: 0.0,
                },
            ],
        }
    }
}

impl AdamWConfig {
    /// (lr multiplier, decay multiplier) for a parameter name.
    pub fn multipliers(&self, name: &str) -> (f64, f64) {
        let mut rules: Vec<&GroupRule> = self.custom_keys.iter().collect();
        rules.sort_by(|a, b| {
            b.key
                .len()
                .cmp(&a.key.len())
                .then_with(|| a.key.cmp(&b.key))
        });
        rules
            .into_iter()
            .find(|r| name.contains(&r.key))
            .map(|r| (r.lr_mult, r.decay_mult))
            .unwrap_or((1.0, 1.0))
    }
}

struct Param {
    name: String,
    var: Var,
    lr_mult: f64,
    decay_mult: f64,
    moments: Moments,
}

/// First and second moments of one parameter.
enum Moments {
    /// `f32` parameter on the CPU: updated in place by the fused kernel.
    Host { m: Vec<f32>, v: Vec<f32> },
    /// Any other device or dtype: the composed Candle update.
    Tensors { m: Tensor, v: Tensor },
}

impl Moments {
    fn zeros(var: &Var, fused: bool) -> Result<Self> {
        if fused && fused_update::applies(&[var.as_tensor()]) {
            let n = var.elem_count();
            Ok(Moments::Host {
                m: vec![0.0; n],
                v: vec![0.0; n],
            })
        } else {
            let m = var.as_tensor().zeros_like()?;
            let v = var.as_tensor().zeros_like()?;
            Ok(Moments::Tensors { m, v })
        }
    }

    /// (m, v) as tensors of the parameter's shape (copies for `Host`).
    fn tensors(&self, var: &Var) -> Result<(Tensor, Tensor)> {
        match self {
            Moments::Host { m, v } => Ok((
                Tensor::from_slice(m, var.shape(), &Device::Cpu)?,
                Tensor::from_slice(v, var.shape(), &Device::Cpu)?,
            )),
            Moments::Tensors { m, v } => Ok((m.clone(), v.clone())),
        }
    }

    /// Replace the moments with saved ones of the parameter's shape.
    fn set(&mut self, var: &Var, m: &Tensor, v: &Tensor) -> Result<()> {
        match self {
            Moments::Host { m: hm, v: hv } => {
                *hm = m
                    .to_device(&Device::Cpu)?
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1()?;
                *hv = v
                    .to_device(&Device::Cpu)?
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1()?;
            }
            Moments::Tensors { m: tm, v: tv } => {
                *tm = m.to_device(var.device())?.to_dtype(var.dtype())?;
                *tv = v.to_device(var.device())?.to_dtype(var.dtype())?;
            }
        }
        Ok(())
    }
}

pub struct AdamW {
    cfg: AdamWConfig,
    params: Vec<Param>,
    /// Number of optimizer steps taken (torch's `state['step']`, shared here
    /// because every parameter is stepped together).
    steps: usize,
}

impl AdamW {
    /// One entry per trainable variable of `vars` (buffers excluded), in name order.
    pub fn new(vars: &VarMap, cfg: AdamWConfig) -> Result<Self> {
        Self::build(vars, cfg, true)
    }

    /// The same optimizer with the composed Candle update on every device:
    /// the reference the fused CPU kernel is timed (`omuda bench`) and tested against.
    pub fn new_composed(vars: &VarMap, cfg: AdamWConfig) -> Result<Self> {
        Self::build(vars, cfg, false)
    }

    fn build(vars: &VarMap, cfg: AdamWConfig, fused: bool) -> Result<Self> {
        let data = vars
            .data()
            .lock()
            .map_err(|_| Error::msg("VarMap lock poisoned"))?;
        let mut names: Vec<&String> = data.keys().filter(|n| !is_buffer(n)).collect();
        names.sort();
        let mut params = Vec::with_capacity(names.len());
        for name in names {
            let var = data[name].clone();
            let (lr_mult, decay_mult) = cfg.multipliers(name);
            let moments = Moments::zeros(&var, fused)?;
            params.push(Param {
                name: name.clone(),
                var,
                lr_mult,
                decay_mult,
                moments,
            });
        }
        Ok(Self {
            cfg,
            params,
            steps: 0,
        })
    }

    pub fn steps(&self) -> usize {
        self.steps
    }

    /// (name, lr multiplier, decay multiplier) of every parameter.
    pub fn groups(&self) -> Vec<(String, f64, f64)> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.lr_mult, p.decay_mult))
            .collect()
    }

    /// One AdamW step with base learning rate `lr`. Parameters without a
    /// gradient are left untouched (as torch skips `p.grad is None`).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bias1 = 1.0 - b1.powi(t);
        let bias2 = 1.0 - b2.powi(t);
        for p in self.params.iter_mut() {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let lr_p = lr * p.lr_mult;
            let wd = self.cfg.weight_decay * p.decay_mult;
            match &mut p.moments {
                Moments::Host { m, v } if g.dtype() == DType::F32 && g.device().is_cpu() => {
                    let g = g.contiguous()?;
                    let kernel = AdamWKernel {
                        scalars: AdamWScalars::new(b1, b2, self.cfg.eps, bias1, bias2, lr_p, wd),
                        m: RefCell::new(m.as_mut_slice()),
                        v: RefCell::new(v.as_mut_slice()),
                    };
                    p.var.as_tensor().inplace_op2(&g, &kernel).map_err(|e| Error::msg(format!("AdamW on `{}`: {e}", p.name)))?;
                }
                Moments::Host { .. } => {
                    return Err(Error::msg(format!(
                        "AdamW: gradient of `{}` is {:?} on {:?}, expected f32 on the CPU like the parameter",
                        p.name,
                        g.dtype(),
                        g.device()
                    )))
                }
                Moments::Tensors { m, v } => {
                    let (m2, v2, new) = composed_step(p.var.as_tensor(), g, m, v, (b1, b2, self.cfg.eps), (bias1, bias2), lr_p, wd)?;
                    *m = m2;
                    *v = v2;
                    p.var.set(&new)?;
                }
            }
        }
        Ok(())
    }

    /// The moments as named tensors (`m.<name>`, `v.<name>`) and the step count.
    pub fn state(&self) -> Result<(HashMap<String, Tensor>, usize)> {
        let mut map = HashMap::new();
        for p in &self.params {
            let (m, v) = p.moments.tensors(&p.var)?;
            map.insert(format!("m.{}", p.name), m);
            map.insert(format!("v.{}", p.name), v);
        }
        Ok((map, self.steps))
    }

    /// Restore moments and step count saved by [`AdamW::state`].
    pub fn set_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        steps: usize,
        origin: &str,
    ) -> Result<()> {
        // Check every tensor before changing anything: a bad file leaves the optimizer as it was.
        let mut loaded = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let [m, v] = ["m", "v"].map(|prefix| {
                let key = format!("{prefix}.{}", p.name);
                let t = tensors.get(&key).ok_or_else(|| {
                    Error::file(origin, format!("optimizer state has no tensor `{key}`"))
                })?;
                if t.shape() != p.var.shape() {
                    return Err(Error::file(
                        origin,
                        format!(
                            "optimizer tensor `{key}` has shape {:?}, expected {:?}",
                            t.shape(),
                            p.var.shape()
                        ),
                    ));
                }
                Ok(t)
            });
            loaded.push((m?, v?));
        }
        for (p, (m, v)) in self.params.iter_mut().zip(loaded) {
            p.moments.set(&p.var, m, v)?;
        }
        self.steps = steps;
        Ok(())
    }

    /// Save the moments as safetensors (the step count goes in the run's JSON state).
    pub fn save(&self, path: &Path) -> Result<()> {
        let (map, _) = self.state()?;
        candle_core::safetensors::save(&map, path).map_err(|e| Error::file(path, e.to_string()))
    }

    pub fn load(&mut self, path: &Path, steps: usize) -> Result<()> {
        let map = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
            .map_err(|e| Error::file(path, e.to_string()))?;
        self.set_state(&map, steps, &path.display().to_string())
    }
}

/// The composed Candle AdamW update: new (m, v, parameter). The fused kernel
/// evaluates exactly these expressions.
#[allow(clippy::too_many_arguments)]
fn composed_step(
    param: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    (b1, b2, eps): (f64, f64, f64),
    (bias1, bias2): (f64, f64),
    lr: f64,
    wd: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let m = ((m * b1)? + (g * (1.0 - b1))?)?;
    let v = ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
    let denom = ((v.sqrt()? / bias2.sqrt())? + eps)?;
    let update = ((&m / denom)? * (lr / bias1))?;
    let decayed = (param * (1.0 - lr * wd))?;
    let new = (decayed - update)?;
    Ok((m, v, new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn mmcv_key_order_first_match_wins() {
        let cfg = AdamWConfig::default();
        // `pos_block` (9 chars) is tried before `head` and `norm` (4 chars, then alphabetical).
        assert_eq!(
            cfg.multipliers("decode_head.batch_norm.weight"),
            (10.0, 1.0)
        );
        assert_eq!(
            cfg.multipliers("segformer.encoder.block.0.0.layer_norm_1.weight"),
            (1.0, 0.0)
        );
        assert_eq!(
            cfg.multipliers("segformer.encoder.block.0.0.attention.self.query.weight"),
            (1.0, 1.0)
        );
        assert_eq!(cfg.multipliers("x.pos_block.head.norm"), (1.0, 0.0));
    }

    /// One step on a single parameter, checked against torch.optim.AdamW by hand:
    /// p=1, g=0.5, lr=0.1, wd=0.01: p ← p·(1−0.001) − 0.1·(0.05/0.1)/(sqrt(0.00025/0.001)+1e-8)
    #[test]
    fn single_step_matches_torch_formula() {
        let vm = VarMap::new();
        let w = vm
            .get(
                (1,),
                "w",
                candle_nn::Init::Const(1.0),
                DType::F64,
                &Device::Cpu,
            )
            .unwrap();
        let cfg = AdamWConfig {
            custom_keys: vec![],
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(&vm, cfg).unwrap();
        let loss = (&w * 0.5).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        opt.step(&grads, 0.1).unwrap();
        let got = w.to_vec1::<f64>().unwrap()[0];
        let m_hat: f64 = 0.05 / 0.1;
        let v_hat: f64 = 0.00025 / (1.0 - 0.999);
        let want = 1.0 * (1.0 - 0.1 * 0.01) - 0.1 * m_hat / (v_hat.sqrt() + 1e-8);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    #[test]
    fn groups_and_state_round_trip() {
        let vm = VarMap::new();
        let a = vm
            .get(
                (3,),
                "decode_head.w",
                candle_nn::Init::Const(1.0),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
        let b = vm
            .get(
                (2,),
                "enc.norm.w",
                candle_nn::Init::Const(1.0),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
        vm.get(
            (2,),
            "bn.running_mean",
            candle_nn::Init::Const(0.0),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let mut opt = AdamW::new(&vm, AdamWConfig::default()).unwrap();
        assert_eq!(opt.groups().len(), 2, "buffers are not optimised");
        let loss = (a.sum_all().unwrap() + b.sqr().unwrap().sum_all().unwrap()).unwrap();
        opt.step(&loss.backward().unwrap(), 1e-3).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opt.safetensors");
        opt.save(&path).unwrap();
        let mut opt2 = AdamW::new(&vm, AdamWConfig::default()).unwrap();
        opt2.load(&path, opt.steps()).unwrap();
        let (s1, n1) = opt.state().unwrap();
        let (s2, n2) = opt2.state().unwrap();
        assert_eq!(n1, n2);
        for (k, t) in s1 {
            let d = (t - &s2[&k])
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(d, 0.0, "{k}");
        }
        let mut missing = HashMap::new();
        missing.insert(
            "m.decode_head.w".to_string(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
        let err = opt2
            .set_state(&missing, 1, "x.safetensors")
            .unwrap_err()
            .to_string();
        assert!(err.contains("v.decode_head.w"), "{err}");
    }

    /// The fused CPU kernel gives the same bits as the composed Candle
    /// expression, over several steps, groups and a parameter larger than one
    /// kernel task.
    #[test]
    fn fused_step_is_bit_identical_to_composed() {
        let dev = Device::Cpu;
        let shapes: [(&str, &[usize]); 3] = [
            ("decode_head.w", &[5, 7]),
            ("enc.norm.w", &[70_001]),
            ("enc.attn.w", &[3, 4, 3, 3]),
        ];
        let vm = VarMap::new();
        let mut reference = Vec::new();
        for (name, shape) in shapes {
            vm.get(shape, name, candle_nn::Init::Const(0.0), DType::F32, &dev)
                .unwrap();
            let var = vm.data().lock().unwrap()[name].clone();
            var.set(&Tensor::randn(0f32, 1.0, shape, &dev).unwrap())
                .unwrap();
            let p = var.as_tensor().copy().unwrap();
            reference.push((
                name,
                var,
                p.clone(),
                p.zeros_like().unwrap(),
                p.zeros_like().unwrap(),
            ));
        }
        let cfg = AdamWConfig::default();
        let mut opt = AdamW::new(&vm, cfg.clone()).unwrap();
        assert!(
            opt.params
                .iter()
                .all(|p| matches!(p.moments, Moments::Host { .. })),
            "f32 on the CPU takes the fused path"
        );
        for (t, lr) in [1e-3, 6e-3, 2e-2].into_iter().enumerate() {
            let mut loss = Tensor::zeros((), DType::F32, &dev).unwrap();
            let mut grads = Vec::new();
            for (_, var, ..) in &reference {
                let g = Tensor::randn(0f32, 1.0, var.shape(), &dev).unwrap();
                loss = (loss + (var.as_tensor() * &g).unwrap().sum_all().unwrap()).unwrap();
                grads.push(g);
            }
            opt.step(&loss.backward().unwrap(), lr).unwrap();
            let step = t as i32 + 1;
            let (bias1, bias2) = (1.0 - cfg.beta1.powi(step), 1.0 - cfg.beta2.powi(step));
            for ((name, _, p, m, v), g) in reference.iter_mut().zip(&grads) {
                let (lr_mult, decay_mult) = cfg.multipliers(name);
                let hyper = (cfg.beta1, cfg.beta2, cfg.eps);
                let (m2, v2, p2) = composed_step(
                    p,
                    g,
                    m,
                    v,
                    hyper,
                    (bias1, bias2),
                    lr * lr_mult,
                    cfg.weight_decay * decay_mult,
                )
                .unwrap();
                (*p, *m, *v) = (p2, m2, v2);
            }
        }
        let (state, _) = opt.state().unwrap();
        for (name, var, p, m, v) in &reference {
            let bits = |t: &Tensor| {
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect::<Vec<_>>()
            };
            assert!(
                bits(var.as_tensor()) == bits(p),
                "{name}: parameter bits differ"
            );
            assert!(
                bits(&state[&format!("m.{name}")]) == bits(m),
                "{name}: m bits differ"
            );
            assert!(
                bits(&state[&format!("v.{name}")]) == bits(v),
                "{name}: v bits differ"
            );
        }
    }

    /// A state file with a wrong shape is refused and leaves the moments as they were.
    #[test]
    fn bad_state_changes_nothing() {
        let vm = VarMap::new();
        let a = vm
            .get(
                (3,),
                "a",
                candle_nn::Init::Const(1.0),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
        let _ = vm
            .get(
                (2,),
                "b",
                candle_nn::Init::Const(1.0),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
        let mut opt = AdamW::new(&vm, AdamWConfig::default()).unwrap();
        opt.step(&a.sum_all().unwrap().backward().unwrap(), 1e-2)
            .unwrap();
        let (before, _) = opt.state().unwrap();
        let mut bad = before.clone();
        bad.insert(
            "v.b".into(),
            Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap(),
        );
        bad.insert(
            "m.a".into(),
            Tensor::ones(3, DType::F32, &Device::Cpu).unwrap(),
        );
        let err = opt
            .set_state(&bad, 7, "bad.safetensors")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("v.b") && err.contains("bad.safetensors"),
            "{err}"
        );
        let (after, steps) = opt.state().unwrap();
        assert_eq!(steps, 1);
        let m_a = after["m.a"].to_vec1::<f32>().unwrap();
        assert_eq!(m_a, before["m.a"].to_vec1::<f32>().unwrap());
        assert!(m_a.iter().all(|&x| x != 1.0));
    }
}
