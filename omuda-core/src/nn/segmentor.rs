//! A segmentation network: encoder + decode head, chosen by name.

use candle_core::{bail, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::mit::{MitConfig, MixTransformer};
use super::segformer_head::SegformerHead;
use super::ForwardCtx;

/// Which network to build. `name` is e.g. `"segformer_tiny"`, `"segformer_mitb0"` … `"segformer_mitb5"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub name: String,
    pub num_classes: usize,
    /// Stochastic depth rate, increased linearly over the encoder blocks.
    pub drop_path_rate: f64,
    /// Dropout2d rate before the classifier.
    pub dropout: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            name: "segformer_tiny".into(),
            num_classes: 19,
            drop_path_rate: 0.1,
            dropout: 0.1,
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
    /// Logits at the head's resolution.
    fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let f = self.features(x, ctx)?;
        self.decode(&f, ctx)
    }
}

/// Names accepted by [`build_segmentor`].
pub const SEGMENTOR_NAMES: [&str; 7] = [
    "segformer_tiny",
    "segformer_mitb0",
    "segformer_mitb1",
    "segformer_mitb2",
    "segformer_mitb3",
    "segformer_mitb4",
    "segformer_mitb5",
];

/// SegFormer: MiT encoder (`segformer.encoder`) + all-MLP head (`decode_head`),
/// the parameter layout of Hugging Face `SegformerForSemanticSegmentation`.
#[derive(Debug, Clone)]
pub struct SegFormer {
    encoder: MixTransformer,
    head: SegformerHead,
}

impl SegFormer {
    /// `vb` is the model root; the encoder lives under `segformer.encoder`, the
    /// head under `decode_head`.
    pub fn new(mit: &MitConfig, cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let encoder =
            MixTransformer::new(mit, vb.pp("segformer").pp("encoder"), cfg.drop_path_rate)?;
        let head = SegformerHead::new(
            &mit.hidden_sizes,
            mit.decoder_hidden_size,
            cfg.num_classes,
            cfg.dropout,
            vb.pp("decode_head"),
        )?;
        Ok(Self { encoder, head })
    }

    pub fn encoder(&self) -> &MixTransformer {
        &self.encoder
    }

    pub fn head(&self) -> &SegformerHead {
        &self.head
    }
}

impl SegModel for SegFormer {
    fn features(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Vec<Tensor>> {
        self.encoder.forward(x, ctx)
    }

    fn decode(&self, features: &[Tensor], ctx: &mut ForwardCtx) -> Result<Tensor> {
        self.head.forward(features, ctx)
    }

    fn num_classes(&self) -> usize {
        self.head.num_classes()
    }
}

/// Builds the network named by `cfg.name` (one of [`SEGMENTOR_NAMES`]) with its
/// parameters in `vb` (use `VarBuilder::from_varmap` for a trainable model).
pub fn build_segmentor(cfg: &ModelConfig, vb: VarBuilder) -> Result<Box<dyn SegModel>> {
    let variant = match cfg.name.as_str() {
        "segformer_tiny" => "tiny",
        "segformer_mitb0" => "b0",
        "segformer_mitb1" => "b1",
        "segformer_mitb2" => "b2",
        "segformer_mitb3" => "b3",
        "segformer_mitb4" => "b4",
        "segformer_mitb5" => "b5",
        other => bail!(
            "unknown model name {other:?}; valid names: {}",
            SEGMENTOR_NAMES.join(", ")
        ),
    };
    if cfg.num_classes == 0 {
        bail!("model {}: num_classes must be positive", cfg.name);
    }
    Ok(Box::new(SegFormer::new(
        &MitConfig::by_name(variant)?,
        cfg,
        vb,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn every_listed_name_has_a_config_and_tiny_builds() {
        for name in SEGMENTOR_NAMES {
            let variant = name
                .trim_start_matches("segformer_")
                .trim_start_matches("mit");
            assert!(MitConfig::by_name(variant).is_ok(), "{name}");
        }
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let cfg = ModelConfig {
            num_classes: 7,
            ..ModelConfig::default()
        };
        let model = build_segmentor(&cfg, vb).unwrap();
        assert_eq!(model.num_classes(), 7);
        let x = Tensor::randn(0f32, 1.0, (1, 3, 32, 64), &Device::Cpu).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let y = model.forward(&x, &mut ForwardCtx::eval(&mut rng)).unwrap();
        assert_eq!(y.dims(), &[1, 7, 8, 16]);
    }

    #[test]
    fn bad_configs_are_errors() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let cfg = ModelConfig {
            name: "segformer_b0".into(),
            ..ModelConfig::default()
        };
        let err = build_segmentor(&cfg, vb.clone())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("segformer_mitb0"), "{err}");
        let cfg = ModelConfig {
            num_classes: 0,
            ..ModelConfig::default()
        };
        assert!(build_segmentor(&cfg, vb.clone()).is_err());
        let cfg = ModelConfig {
            dropout: 1.0,
            ..ModelConfig::default()
        };
        assert!(build_segmentor(&cfg, vb).is_err());
    }
}
