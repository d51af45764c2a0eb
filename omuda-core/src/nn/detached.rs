//! A network built on detached views of trainable weights, for forwards that
//! never backpropagate (evaluation, prediction, the EMA teacher, frozen
//! encoders). Candle records the graph of every op whose input is a
//! variable, and keeps each intermediate alive until the result is dropped;
//! a view built on [`Tensor::detach`] shares the weights' storage (so it
//! always sees their current values, also after in-place optimizer and EMA
//! updates) but records nothing. Batch-norm running statistics stay the
//! variables themselves, so a forward in training mode (the teacher's)
//! updates them in place as the trainable network would.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::{build_segmentor, ModelConfig, SegModel};
use crate::{Error, Result};

/// The network `config` on detached views of `vars` (its f32 weights and
/// buffers): the same outputs as the trainable model, without a graph.
pub fn detached_model(
    config: &ModelConfig,
    vars: &VarMap,
    device: &Device,
) -> Result<Box<dyn SegModel>> {
    let tensors: HashMap<String, Tensor> = {
        let data = vars
            .data()
            .lock()
            .map_err(|_| Error::msg("VarMap lock poisoned"))?;
        data.iter()
            .map(|(n, v)| {
                // Batch-norm statistics stay the variables themselves: a
                // forward in training mode (the EMA teacher's, as in the
                // reference) updates them in place, and they are only ever
                // read detached, so they record no graph either.
                let t = if super::is_buffer(n) {
                    v.as_tensor().clone()
                } else {
                    v.as_tensor().detach()
                };
                (n.clone(), t)
            })
            .collect()
    };
    Ok(build_segmentor(
        config,
        VarBuilder::from_tensors(tensors, DType::F32, device),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{seeded_var_builder, ForwardCtx};
    use rand::SeedableRng;

    /// A teacher-mode forward (batch statistics, running statistics
    /// updated) on the view updates the statistics stored in the VarMap.
    #[test]
    fn teacher_forward_updates_the_stored_norm_statistics() {
        let dev = Device::Cpu;
        let cfg = ModelConfig {
            weights: None,
            ..ModelConfig::default()
        };
        let vars = VarMap::new();
        let _model = build_segmentor(&cfg, seeded_var_builder(&vars, 3, DType::F32, &dev)).unwrap();
        let stat = |name: &str| -> Vec<f32> {
            let data = vars.data().lock().unwrap();
            let (_, v) = data
                .iter()
                .find(|(n, _)| n.ends_with(name))
                .unwrap_or_else(|| panic!("no {name}"));
            v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
        };
        let before = stat("running_mean");
        let view = detached_model(&cfg, &vars, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 64), &dev).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        view.forward(&x, &mut ForwardCtx::teacher(&mut rng))
            .unwrap();
        assert_ne!(stat("running_mean"), before);
        // Evaluation mode leaves them alone.
        let after = stat("running_mean");
        view.forward(&x, &mut ForwardCtx::eval(&mut rng)).unwrap();
        assert_eq!(stat("running_mean"), after);
    }

    #[test]
    fn same_logits_as_the_trainable_model_and_no_graph() {
        let dev = Device::Cpu;
        let cfg = ModelConfig {
            weights: None,
            ..ModelConfig::default()
        };
        let vars = VarMap::new();
        let model = build_segmentor(&cfg, seeded_var_builder(&vars, 3, DType::F32, &dev)).unwrap();
        let view = detached_model(&cfg, &vars, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 3, 32, 64), &dev).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let a = model.forward(&x, &mut ForwardCtx::eval(&mut rng)).unwrap();
        let b = view.forward(&x, &mut ForwardCtx::eval(&mut rng)).unwrap();
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(a, b);
        // The view records no graph: nothing to backpropagate.
        let y = view.forward(&x, &mut ForwardCtx::eval(&mut rng)).unwrap();
        assert!(y.sum_all().unwrap().backward().unwrap().get(&x).is_none());
        let trainable = model
            .forward(&x, &mut ForwardCtx::eval(&mut rng))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        // A trained weight (`all_vars` comes in hash order and also holds the
        // BatchNorm statistics, which get no gradient).
        let var = vars.data().lock().unwrap()["decode_head.classifier.weight"].clone();
        assert!(trainable.get(var.as_tensor()).is_some());
        assert!(y
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
            .get(var.as_tensor())
            .is_none());
        // A later change of the weights is seen by the view (shared storage).
        var.set(&var.as_tensor().ones_like().unwrap()).unwrap();
        let c = view.forward(&x, &mut ForwardCtx::eval(&mut rng)).unwrap();
        let d = model.forward(&x, &mut ForwardCtx::eval(&mut rng)).unwrap();
        assert_eq!(
            c.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            d.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}
