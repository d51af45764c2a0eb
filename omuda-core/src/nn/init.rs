//! Reproducible parameter initialisation.
//!
//! Candle's CPU random initialisers draw from an unseeded thread RNG, so two
//! runs with the same seed would start from different weights. This backend
//! creates each variable of a `VarMap` from a ChaCha8 generator seeded by
//! (run seed, variable name): the same seed gives bit-identical initial
//! weights whatever the construction order.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A `VarMap` whose new variables are initialised deterministically from `seed`.
pub struct SeededVarMap {
    vars: VarMap,
    seed: u64,
}

/// A trainable `VarBuilder` over `vars`, creating missing variables from `seed`.
pub fn seeded_var_builder(
    vars: &VarMap,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    let backend: Box<dyn SimpleBackend> = Box::new(SeededVarMap {
        vars: vars.clone(),
        seed,
    });
    VarBuilder::from_backend(backend, dtype, device.clone())
}

/// FNV-1a over the name, mixed with the seed: stable across platforms and runs.
fn name_seed(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Standard normal by Box–Muller (rand 0.8 has no normal distribution without rand_distr).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// The values of `init` for `shape`, drawn from `rng`.
pub fn init_values(init: &Init, shape: &Shape, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let n = shape.elem_count();
    match *init {
        Init::Const(c) => vec![c; n],
        Init::Uniform { lo, up } => (0..n)
            .map(|_| rng.gen_range(lo..up.max(lo + f64::EPSILON)))
            .collect(),
        Init::Randn { mean, stdev } => (0..n).map(|_| mean + stdev * normal(rng)).collect(),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape).max(1) as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    (0..n).map(|_| rng.gen_range(-bound..bound)).collect()
                }
                NormalOrUniform::Normal => (0..n).map(|_| std * normal(rng)).collect(),
            }
        }
    }
}

impl SimpleBackend for SeededVarMap {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data = self
            .vars
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
        if let Some(existing) = data.get(name) {
            let t = existing.as_tensor();
            if t.shape() != &s {
                candle_core::bail!(
                    "variable `{name}` exists with shape {:?}, requested {:?}",
                    t.shape(),
                    s
                );
            }
            return Ok(t.clone());
        }
        let mut rng = ChaCha8Rng::seed_from_u64(name_seed(self.seed, name));
        let values = init_values(&h, &s, &mut rng);
        let t = Tensor::from_vec(values, s, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(dev)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("variable `{name}`: a trainable VarMap needs a shape to create it")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vars
            .data()
            .lock()
            .map(|d| d.contains_key(name))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(seed: u64) -> VarMap {
        let vm = VarMap::new();
        let vb = seeded_var_builder(&vm, seed, DType::F32, &Device::Cpu);
        vb.pp("a")
            .get_with_hints(
                (3, 4),
                "weight",
                Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            )
            .unwrap();
        vb.pp("b")
            .get_with_hints(5, "weight", candle_nn::init::DEFAULT_KAIMING_UNIFORM)
            .unwrap();
        vb.pp("b")
            .get_with_hints(5, "bias", Init::Const(0.5))
            .unwrap();
        vm
    }

    fn values(vm: &VarMap, name: &str) -> Vec<f32> {
        vm.data().lock().unwrap()[name]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn same_seed_same_weights_and_variables_are_trainable() {
        let (a, b, c) = (build(3), build(3), build(4));
        assert_eq!(values(&a, "a.weight"), values(&b, "a.weight"));
        assert_ne!(values(&a, "a.weight"), values(&c, "a.weight"));
        assert_eq!(values(&a, "b.bias"), vec![0.5; 5]);
        let w = values(&a, "a.weight");
        let std = (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt();
        assert!(std > 0.005 && std < 0.05, "{std}");
        assert_eq!(a.all_vars().len(), 3);
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let vm = build(1);
        let vb = seeded_var_builder(&vm, 1, DType::F32, &Device::Cpu);
        let err = vb
            .pp("a")
            .get_with_hints((4, 4), "weight", Init::Const(0.0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.weight"), "{err}");
    }
}
