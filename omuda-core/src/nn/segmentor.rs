//! A segmentation network: encoder + decode head, chosen by name.

use super::daformer_head::{DaformerHead, DaformerHeadConfig};
use super::deeplabv2::DeepLabV2;
use super::mit::{MitConfig, MixTransformer};
use super::model::{ModelConfig, SegModel};
use super::resnet::ResNetConfig;
use super::segformer_head::SegformerHead;
use super::ForwardCtx;
use candle_core::{bail, Result, Tensor};
use candle_nn::VarBuilder;

/// Names accepted by [`build_segmentor`].
pub const SEGMENTOR_NAMES: [&str; 17] = [
    "segformer_tiny",
    "segformer_mitb0",
    "segformer_mitb1",
    "segformer_mitb2",
    "segformer_mitb3",
    "segformer_mitb4",
    "segformer_mitb5",
    "daformer_tiny",
    "daformer_mitb0",
    "daformer_mitb1",
    "daformer_mitb2",
    "daformer_mitb3",
    "daformer_mitb4",
    "daformer_mitb5",
    "dlv2_tiny",
    "dlv2_r50",
    "dlv2_r101",
];

/// The network family and hyper-parameters a model name stands for.
#[derive(Debug, Clone, PartialEq)]
pub enum Architecture {
    /// MiT encoder + SegFormer all-MLP head.
    SegFormer(MitConfig),
    /// MiT encoder + DAFormer context-aware fusion head.
    DaFormer(MitConfig, DaformerHeadConfig),
    /// ResNet V1c (dilated, output stride 8) + DLV2 head.
    DeepLabV2(ResNetConfig),
}

/// The architecture of `cfg.name`, or an error listing the valid names.
pub fn architecture(cfg: &ModelConfig) -> Result<Architecture> {
    let name = cfg.name.as_str();
    let unknown = || {
        candle_core::Error::Msg(format!(
            "unknown model name {name:?}; valid names: {}",
            SEGMENTOR_NAMES.join(", ")
        ))
    };
    if !SEGMENTOR_NAMES.contains(&name) {
        return Err(unknown());
    }
    if let Some(v) = name.strip_prefix("segformer_") {
        return Ok(Architecture::SegFormer(MitConfig::by_name(v)?));
    }
    if let Some(v) = name.strip_prefix("daformer_") {
        let mit = MitConfig::by_name(v)?;
        let mut head = DaformerHeadConfig::daformer(cfg.dropout);
        if v == "tiny" {
            head.channels = mit.decoder_hidden_size;
        }
        return Ok(Architecture::DaFormer(mit, head));
    }
    match name {
        "dlv2_tiny" => Ok(Architecture::DeepLabV2(ResNetConfig::tiny())),
        "dlv2_r50" => Ok(Architecture::DeepLabV2(ResNetConfig::r50_v1c())),
        "dlv2_r101" => Ok(Architecture::DeepLabV2(ResNetConfig::r101_v1c())),
        _ => Err(unknown()),
    }
}

/// A decode head over the four MiT feature levels.
pub trait MitHead: std::fmt::Debug + Clone + Send + Sync {
    fn forward(&self, features: &[Tensor], ctx: &mut ForwardCtx) -> Result<Tensor>;
    fn num_classes(&self) -> usize;
}

impl MitHead for SegformerHead {
    fn forward(&self, features: &[Tensor], ctx: &mut ForwardCtx) -> Result<Tensor> {
        SegformerHead::forward(self, features, ctx)
    }
    fn num_classes(&self) -> usize {
        SegformerHead::num_classes(self)
    }
}

impl MitHead for DaformerHead {
    fn forward(&self, features: &[Tensor], ctx: &mut ForwardCtx) -> Result<Tensor> {
        DaformerHead::forward(self, features, ctx)
    }
    fn num_classes(&self) -> usize {
        DaformerHead::num_classes(self)
    }
}

/// MiT encoder (`segformer.encoder`, the Hugging Face names, so MiT ImageNet
/// checkpoints load unchanged) + a decode head (`decode_head`).
#[derive(Debug, Clone)]
pub struct MitSegmentor<H: MitHead> {
    encoder: MixTransformer,
    head: H,
    /// HRDA's scale-attention head (`decode_head.scale_attention`).
    attention: Option<DaformerHead>,
}

/// SegFormer: MiT + all-MLP head, the parameter layout of Hugging Face
/// `SegformerForSemanticSegmentation`.
pub type SegFormer = MitSegmentor<SegformerHead>;

/// DAFormer: MiT + DAFormer head (mmseg names under `decode_head`).
pub type DaFormer = MitSegmentor<DaformerHead>;

fn mit_encoder(mit: &MitConfig, cfg: &ModelConfig, vb: &VarBuilder) -> Result<MixTransformer> {
    MixTransformer::new(mit, vb.pp("segformer").pp("encoder"), cfg.drop_path_rate)
}

impl MitSegmentor<SegformerHead> {
    /// `vb` is the model root; the encoder lives under `segformer.encoder`, the
    /// head under `decode_head`.
    pub fn new(mit: &MitConfig, cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let encoder = mit_encoder(mit, cfg, &vb)?;
        let head = SegformerHead::new(
            &mit.hidden_sizes,
            mit.decoder_hidden_size,
            cfg.num_classes,
            cfg.dropout,
            vb.pp("decode_head"),
        )?;
        if cfg.scale_attention {
            bail!(
                "model {}: model.scale_attention needs a daformer_* model",
                cfg.name
            );
        }
        Ok(Self {
            encoder,
            head,
            attention: None,
        })
    }
}

impl MitSegmentor<DaformerHead> {
    pub fn new(
        mit: &MitConfig,
        head: &DaformerHeadConfig,
        cfg: &ModelConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        let encoder = mit_encoder(mit, cfg, &vb)?;
        let attention = if cfg.scale_attention {
            // HRDA copies the head's config (same width and dropout) and
            // replaces the ASPP fusion by a 1x1 ConvModule.
            let classes = if cfg.scale_attention_classwise {
                cfg.num_classes
            } else {
                1
            };
            Some(DaformerHead::with_conv1x1_fusion(
                &mit.hidden_sizes,
                head.channels,
                head.dropout,
                classes,
                vb.pp("decode_head").pp("scale_attention"),
            )?)
        } else {
            None
        };
        let head = DaformerHead::new(
            &mit.hidden_sizes,
            head,
            cfg.num_classes,
            vb.pp("decode_head"),
        )?;
        Ok(Self {
            encoder,
            head,
            attention,
        })
    }
}

impl<H: MitHead> MitSegmentor<H> {
    pub fn encoder(&self) -> &MixTransformer {
        &self.encoder
    }

    pub fn head(&self) -> &H {
        &self.head
    }
}

impl<H: MitHead> SegModel for MitSegmentor<H> {
    fn features(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Vec<Tensor>> {
        self.encoder.forward(x, ctx)
    }

    fn decode(&self, features: &[Tensor], ctx: &mut ForwardCtx) -> Result<Tensor> {
        self.head.forward(features, ctx)
    }

    fn num_classes(&self) -> usize {
        self.head.num_classes()
    }

    fn scale_attention(&self, features: &[Tensor], ctx: &mut ForwardCtx) -> Result<Option<Tensor>> {
        self.attention
            .as_ref()
            .map(|a| a.forward(features, ctx))
            .transpose()
    }
}

/// Builds the network named by `cfg.name` (one of [`SEGMENTOR_NAMES`]) with its
/// parameters in `vb` (use `VarBuilder::from_varmap` for a trainable model).
pub fn build_segmentor(cfg: &ModelConfig, vb: VarBuilder) -> Result<Box<dyn SegModel>> {
    let arch = architecture(cfg)?;
    if cfg.num_classes == 0 {
        bail!("model {}: num_classes must be positive", cfg.name);
    }
    if cfg.scale_attention && !matches!(arch, Architecture::DaFormer(..)) {
        bail!(
            "model {}: model.scale_attention needs a daformer_* model",
            cfg.name
        );
    }
    Ok(match arch {
        Architecture::SegFormer(mit) => Box::new(SegFormer::new(&mit, cfg, vb)?),
        Architecture::DaFormer(mit, head) => Box::new(DaFormer::new(&mit, &head, cfg, vb)?),
        Architecture::DeepLabV2(resnet) => Box::new(DeepLabV2::new(&resnet, cfg, vb)?),
    })
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
            let cfg = ModelConfig {
                name: name.into(),
                ..ModelConfig::default()
            };
            assert!(architecture(&cfg).is_ok(), "{name}");
        }
        for name in ["daformer_tiny", "dlv2_tiny"] {
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
            let cfg = ModelConfig {
                name: name.into(),
                num_classes: 4,
                ..ModelConfig::default()
            };
            let model = build_segmentor(&cfg, vb).unwrap();
            let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            let y = model.forward(&x, &mut ForwardCtx::train(&mut rng)).unwrap();
            assert_eq!(y.dims()[..2], [2, 4], "{name}");
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
    fn weights_keys_round_trip_and_the_default_serialises_as_before() {
        let text = toml::to_string(&ModelConfig::default()).unwrap();
        assert!(
            !text.contains("weights") && !text.contains("strict"),
            "{text}"
        );
        let cfg: ModelConfig = toml::from_str(
            "name = \"daformer_mitb5\"\nweights = \"hf:nvidia/mit-b5\"\nstrict = false\n",
        )
        .unwrap();
        assert_eq!(cfg.weights.as_deref(), Some("hf:nvidia/mit-b5"));
        assert!(!cfg.strict);
        let back: ModelConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
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
