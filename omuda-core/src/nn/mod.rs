//! Trainable segmentation networks: SegFormer and DAFormer (MiT encoder), and
//! DeepLabV2 (ResNet V1c). Weight names are the layouts of the published
//! checkpoints: Hugging Face `transformers` for the MiT encoder and the SegFormer
//! head (`segformer.encoder...`, `decode_head...`), mmseg for the DAFormer and
//! DLV2 heads and the ResNet (`decode_head.fuse_layer...`, `backbone.layer1...`).
//! [`weights`] maps the other published layouts onto these names.
//!
//! Every layer here has a working backward pass: Candle's fused `LayerNorm` and
//! `softmax_last_dim` silently cut the graph and are never used.

pub mod autocast;
pub mod daformer_head;
pub mod deeplabv2;
pub mod detached;
pub mod init;
pub mod layers;
pub mod mit;
pub mod model;
pub mod resnet;
pub mod segformer_head;
pub mod segmentor;
pub mod varmap_io;
pub mod weights;

pub use init::seeded_var_builder;
pub use model::{ModelConfig, SegModel};
pub use segmentor::build_segmentor;

use rand_chacha::ChaCha8Rng;

/// How a forward pass runs. Passed explicitly so that every random draw of a
/// run (dropout, drop-path) comes from a generator the caller owns and can save.
pub struct ForwardCtx<'a> {
    /// Dropout, Dropout2d and drop-path are active.
    pub stochastic: bool,
    /// BatchNorm normalises with the statistics of the current batch (train mode)
    /// and updates its running statistics; otherwise it uses the running statistics.
    pub bn_train: bool,
    /// Source of every random draw of the forward pass.
    pub rng: &'a mut ChaCha8Rng,
}

impl<'a> ForwardCtx<'a> {
    /// Student in training: dropout/drop-path on, batch statistics.
    pub fn train(rng: &'a mut ChaCha8Rng) -> Self {
        Self {
            stochastic: true,
            bn_train: true,
            rng,
        }
    }
    /// The EMA teacher of the reference code: dropout/drop-path off, but
    /// BatchNorm still in train mode (`lhoyer/MIC
    /// seg/mmseg/models/uda/dacs.py::DACS.forward_train` switches only the
    /// `_DropoutNd` and `DropPath` modules of the teacher to eval).
    pub fn teacher(rng: &'a mut ChaCha8Rng) -> Self {
        Self {
            stochastic: false,
            bn_train: true,
            rng,
        }
    }
    /// Evaluation: deterministic, running statistics.
    pub fn eval(rng: &'a mut ChaCha8Rng) -> Self {
        Self {
            stochastic: false,
            bn_train: false,
            rng,
        }
    }
}

/// Names of tensors that are state but not parameters (BatchNorm running
/// statistics). They get no optimizer update and are not EMA-averaged.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean")
        || name.ends_with("running_var")
        || name.ends_with("num_batches_tracked")
}
