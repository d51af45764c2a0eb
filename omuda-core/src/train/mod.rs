//! Training: the `UdaMethod` trait, the shared self-training step and its hook
//! points, EMA teacher, optimizer, LR schedule, checkpoints and the trainer loop.

pub mod checkpoint;
pub mod ema;
pub mod frozen_encoder;
mod fused_update;
pub mod hooks;
pub mod masked_consistency;
pub mod method;
pub mod multires;
pub mod objective;
pub mod observers;
pub mod optimizer;
pub mod pretrain;
pub mod schedule;
pub mod spec;
pub mod step;
pub mod trainer;

pub use hooks::{
    class_balanced_weight, ChaCha8Rng, NamedLoss, StepHook, StepView, TargetAveraging,
};
pub use method::{StepLog, UdaMethod};
pub use spec::{SelfTrainingSpec, UdaConfig};
pub use step::SelfTraining;
