//! The EMA teacher update (`lhoyer/MIC seg/mmseg/models/uda/dacs.py`
//! `DACS._init_ema_weights` / `DACS._update_ema`).
//!
//! Parameters only: BatchNorm running statistics are not averaged.
//!
//! For `f32` parameters on the CPU the update is one fused in-place pass
//! (`fused_update::EmaKernel`), bit-identical to the composed Candle
//! expression used elsewhere.

use candle_core::Result;
use candle_nn::VarMap;

use crate::nn::is_buffer;
use crate::train::fused_update::{self, EmaKernel};

/// α_t = min(1 − 1/(t+1), α) for iteration t ≥ 1.
pub fn ema_alpha(t: usize, alpha: f64) -> f64 {
    (1.0 - 1.0 / (t as f64 + 1.0)).min(alpha)
}

/// Copy every parameter of `student` into `teacher` (iteration 0).
pub fn copy_parameters(teacher: &VarMap, student: &VarMap) -> Result<()> {
    for_each_pair(teacher, student, |t, s| t.set(&s.as_tensor().detach()))
}

/// θ' ← α·θ' + (1−α)·θ for every parameter.
pub fn ema_update(teacher: &VarMap, student: &VarMap, alpha: f64) -> Result<()> {
    let kernel = EmaKernel::new(alpha);
    for_each_pair(teacher, student, |t, s| {
        if fused_update::applies(&[t.as_tensor(), s.as_tensor()]) {
            t.as_tensor().inplace_op2(s.as_tensor(), &kernel)
        } else {
            t.set(&ema_composed(t.as_tensor(), s.as_tensor(), alpha)?)
        }
    })
}

/// [`ema_update`] as composed Candle ops on every device: the reference the
/// fused CPU kernel is timed (`omuda bench`) and tested against.
pub fn ema_update_composed(teacher: &VarMap, student: &VarMap, alpha: f64) -> Result<()> {
    for_each_pair(teacher, student, |t, s| {
        t.set(&ema_composed(t.as_tensor(), s.as_tensor(), alpha)?)
    })
}

/// α·θ' + (1−α)·θ as composed Candle ops (any device or dtype).
fn ema_composed(
    teacher: &candle_core::Tensor,
    student: &candle_core::Tensor,
    alpha: f64,
) -> Result<candle_core::Tensor> {
    (teacher * alpha)? + (student.detach() * (1.0 - alpha))?
}

fn for_each_pair(
    teacher: &VarMap,
    student: &VarMap,
    mut f: impl FnMut(&candle_core::Var, &candle_core::Var) -> Result<()>,
) -> Result<()> {
    let t_data = teacher
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("teacher VarMap lock poisoned".into()))?;
    let s_data = student
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("student VarMap lock poisoned".into()))?;
    for (name, s) in s_data.iter() {
        if is_buffer(name) {
            continue;
        }
        let t = t_data.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("EMA: teacher has no parameter `{name}`"))
        })?;
        if t.shape() != s.shape() {
            candle_core::bail!(
                "EMA: parameter `{name}` has shape {:?} in the teacher, {:?} in the student",
                t.shape(),
                s.shape()
            );
        }
        f(t, s)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    #[test]
    fn alpha_golden_values() {
        // `DACS._update_ema`: α_t = min(1 − 1/(t+1), α), so α_1 = 0.5, α_2 = 0.6667,
        // α_9 = 0.9, α_99 = 0.99.
        assert!((ema_alpha(1, 0.99) - 0.5).abs() < 1e-12);
        assert!((ema_alpha(2, 0.99) - 2.0 / 3.0).abs() < 1e-12);
        assert!((ema_alpha(9, 0.99) - 0.9).abs() < 1e-12);
        assert!((ema_alpha(99, 0.99) - 0.99).abs() < 1e-12);
        assert!((ema_alpha(5000, 0.99) - 0.99).abs() < 1e-12);
        assert!((ema_alpha(999, 0.999) - 0.999).abs() < 1e-12);
        assert!(ema_alpha(998, 0.999) < 0.999);
    }

    fn varmap(values: &[(&str, f32)]) -> VarMap {
        let vm = VarMap::new();
        for (name, v) in values {
            vm.get(
                (2,),
                name,
                candle_nn::Init::Const(*v as f64),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
        }
        vm
    }

    fn value(vm: &VarMap, name: &str) -> Vec<f32> {
        let data = vm.data().lock().unwrap();
        data.get(name)
            .unwrap()
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap()
    }

    #[test]
    fn update_touches_parameters_only() {
        let student = varmap(&[("w", 1.0), ("bn.running_mean", 5.0)]);
        let teacher = varmap(&[("w", 0.0), ("bn.running_mean", 7.0)]);
        ema_update(&teacher, &student, 0.75).unwrap();
        assert_eq!(value(&teacher, "w"), vec![0.25, 0.25]);
        assert_eq!(value(&teacher, "bn.running_mean"), vec![7.0, 7.0]);
        copy_parameters(&teacher, &student).unwrap();
        assert_eq!(value(&teacher, "w"), vec![1.0, 1.0]);
        assert_eq!(value(&teacher, "bn.running_mean"), vec![7.0, 7.0]);
    }

    #[test]
    fn missing_teacher_parameter_is_an_error() {
        let student = varmap(&[("w", 1.0), ("v", 1.0)]);
        let teacher = varmap(&[("w", 0.0)]);
        let err = ema_update(&teacher, &student, 0.5).unwrap_err().to_string();
        assert!(err.contains("`v`"), "{err}");
        let _ = Tensor::zeros(1, DType::F32, &Device::Cpu);
    }

    /// The fused CPU kernel gives the same bits as the composed expression,
    /// on a parameter larger than one kernel task.
    #[test]
    fn fused_update_is_bit_identical_to_composed() {
        let dev = Device::Cpu;
        let make = || {
            let vm = VarMap::new();
            vm.get(70_001, "w", candle_nn::Init::Const(0.0), DType::F32, &dev)
                .unwrap();
            let v = vm.data().lock().unwrap()["w"].clone();
            v.set(&Tensor::randn(0f32, 1.0, 70_001, &dev).unwrap())
                .unwrap();
            (vm, v)
        };
        let (teacher, t) = make();
        let (student, s) = make();
        let mut want = t.as_tensor().copy().unwrap();
        for alpha in [0.5, 2.0 / 3.0, 0.999] {
            ema_update(&teacher, &student, alpha).unwrap();
            want = ema_composed(&want, s.as_tensor(), alpha).unwrap();
        }
        let bits = |x: &Tensor| {
            x.to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        assert!(bits(t.as_tensor()) == bits(&want));
    }
}
