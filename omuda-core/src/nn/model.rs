//! What every network is: the [`SegModel`] trait the training step and the
//! objectives call, and the [`ModelConfig`] that chooses one by name.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use super::ForwardCtx;

/// Which network to build, and the weights it starts from. `name` is one of
/// [`SEGMENTOR_NAMES`], e.g. `"segformer_tiny"`, `"daformer_mitb5"`, `"dlv2_r101"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub name: String,
    pub num_classes: usize,
    /// Stochastic depth rate, increased linearly over the encoder blocks.
    pub drop_path_rate: f64,
    /// Dropout2d rate before the classifier.
    pub dropout: f64,
    /// Pretrained weights loaded over the initialisation: `"hf:org/name"` (the
    /// Hugging Face hub cache, downloading only when missing and
    /// `HF_HUB_OFFLINE` is unset), or a local `.safetensors` path. See
    /// `docs/models.md` and [`super::weights`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
    /// Fail on any missing, unexpected or shape-mismatched tensor (otherwise
    /// load the matching ones and report the rest). Written out only when
    /// false, so the default configuration serialises as before.
    #[serde(skip_serializing_if = "is_true")]
    pub strict: bool,
    /// Compute precision of the student's training forward: `"f32"`
    /// (default), `"bf16"` (CUDA) or `"f16"`; master weights stay f32
    /// ([`super::autocast`], docs/cuda.md). Written out only when not f32.
    #[serde(skip_serializing_if = "super::autocast::Autocast::is_f32")]
    pub autocast: super::autocast::Autocast,
    /// Add HRDA's scale-attention head (`decode_head.scale_attention.*`, the
    /// names of HRDA's checkpoints): a DAFormer head with a 1x1 fusion conv
    /// over the encoder features (`lhoyer/HRDA
    /// mmseg/models/decode_heads/hrda_head.py::HRDAHead.__init__`). `daformer_*` models only.
    /// Written out only when true.
    #[serde(skip_serializing_if = "is_false")]
    pub scale_attention: bool,
    /// One attention channel per class (HRDA `attention_classwise`), else one
    /// shared channel. Written out only when false.
    #[serde(skip_serializing_if = "is_true")]
    pub scale_attention_classwise: bool,
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            name: "segformer_tiny".into(),
            num_classes: 19,
            drop_path_rate: 0.1,
            dropout: 0.1,
            weights: None,
            strict: true,
            autocast: super::autocast::Autocast::F32,
            scale_attention: false,
            scale_attention_classwise: true,
        }
    }
}

/// A trainable segmentation network.
pub trait SegModel: Send + Sync {
    /// Encoder feature maps (B, C_i, H/s_i, W/s_i), finest first.
    fn features(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Vec<Tensor>>;
    /// Logits (B, K, h, w) at the head's output resolution (H/4 for SegFormer).
    fn decode(&self, features: &[Tensor], ctx: &mut ForwardCtx) -> Result<Tensor>;
    /// Number of classes K.
    fn num_classes(&self) -> usize;
    /// Scale-attention logits (B, A, h, w) (before the sigmoid; A = K or 1)
    /// from encoder `features`, for models built with a scale-attention head
    /// (HRDA); `None` otherwise.
    fn scale_attention(
        &self,
        _features: &[Tensor],
        _ctx: &mut ForwardCtx,
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// Logits at the head's resolution.
    fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let f = self.features(x, ctx)?;
        self.decode(&f, ctx)
    }
}
