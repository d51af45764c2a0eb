//! Learning-rate schedules: polynomial decay with linear warm-up.
//!
//! Semantics of mmcv 1.3.7 `PolyLrUpdaterHook` (`by_epoch=False`) with
//! `LrUpdaterHook.get_warmup_lr` in linear mode, as used by the `poly10warm`
//! schedule of DAFormer/HRDA/MIC (`lhoyer/MIC
//! seg/configs/_base_/schedules/poly10warm.py`). `t` is the 0-based
//! iteration, set before the iteration runs.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolySchedule {
    pub base_lr: f64,
    pub max_iters: usize,
    pub power: f64,
    pub min_lr: f64,
    /// Linear warm-up length in iterations (0 = none).
    pub warmup_iters: usize,
    /// lr(0) = regular(0) · warmup_ratio.
    pub warmup_ratio: f64,
}

impl Default for PolySchedule {
    /// `poly10warm`: 6e-5, 40k iterations, power 1, warm-up 1500 from 1e-6.
    fn default() -> Self {
        Self {
            base_lr: 6e-5,
            max_iters: 40_000,
            power: 1.0,
            min_lr: 0.0,
            warmup_iters: 1500,
            warmup_ratio: 1e-6,
        }
    }
}

impl PolySchedule {
    /// Learning rate of the base parameter group at iteration `t`.
    /// Groups with an lr multiplier scale this value (the warm-up is per group
    /// in mmcv, which is the same as scaling the base value).
    pub fn lr(&self, t: usize) -> f64 {
        let progress = (t as f64 / self.max_iters as f64).min(1.0);
        let regular =
            (self.base_lr - self.min_lr) * (1.0 - progress).powf(self.power) + self.min_lr;
        if t < self.warmup_iters {
            let k = (1.0 - t as f64 / self.warmup_iters as f64) * (1.0 - self.warmup_ratio);
            regular * (1.0 - k)
        } else {
            regular
        }
    }
}

/// The learning-rate schedule; its length is `train.iters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    pub lr: f64,
    pub power: f64,
    pub min_lr: f64,
    pub warmup_iters: usize,
    pub warmup_ratio: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        let p = PolySchedule::default();
        Self {
            lr: p.base_lr,
            power: p.power,
            min_lr: p.min_lr,
            warmup_iters: p.warmup_iters,
            warmup_ratio: p.warmup_ratio,
        }
    }
}

impl ScheduleConfig {
    pub fn poly(&self, max_iters: usize) -> PolySchedule {
        PolySchedule {
            base_lr: self.lr,
            max_iters,
            power: self.power,
            min_lr: self.min_lr,
            warmup_iters: self.warmup_iters,
            warmup_ratio: self.warmup_ratio,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    /// Golden values of the `poly10warm` formula above (base group of DAFormer's
    /// schedule).
    #[test]
    fn poly10warm_golden_values() {
        let s = PolySchedule::default();
        let golden = [
            (0, 6.0e-11),
            (49, 1.957657e-06),
            (749, 2.939903e-05),
            (1499, 5.771300e-05),
            (1500, 5.775e-05),
            (20000, 3.0e-05),
            (39999, 1.5e-09),
        ];
        for (t, want) in golden {
            let got = s.lr(t);
            assert!(close(got, want, 1e-5), "lr({t}) = {got:e}, want {want:e}");
        }
    }

    #[test]
    fn head_group_is_ten_times_base() {
        let s = PolySchedule::default();
        let head = PolySchedule {
            base_lr: 6e-4,
            ..s.clone()
        };
        for t in [0, 10, 1499, 1500, 30000] {
            assert!(close(head.lr(t), 10.0 * s.lr(t), 1e-12));
        }
    }

    #[test]
    fn no_warmup_and_min_lr() {
        let s = PolySchedule {
            base_lr: 1.0,
            max_iters: 10,
            power: 1.0,
            min_lr: 0.1,
            warmup_iters: 0,
            warmup_ratio: 1e-6,
        };
        assert!(close(s.lr(0), 1.0, 1e-12));
        assert!(close(s.lr(5), 0.55, 1e-12));
        assert!(close(s.lr(10), 0.1, 1e-12));
        assert!(
            close(s.lr(20), 0.1, 1e-12),
            "past the end the schedule stays at min_lr"
        );
    }
}
