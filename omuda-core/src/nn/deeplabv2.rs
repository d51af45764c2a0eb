//! DeepLabV2 as used by DACS in mmseg (`dlv2red` + ResNet V1c): the dilated
//! ResNet of [`super::resnet`] under `backbone`, and the DLV2 head under
//! `decode_head`: one 3x3 conv (bias, no BN, no dropout) per dilation on the last
//! ResNet layer, outputs summed. DACS uses dilations (6, 12): the original
//! DeepLabV2 code returned after the second branch, and mmseg's `DLV2Head` keeps
//! only those two (`decode_heads/dlv2_head.py::DLV2Head.forward` of lhoyer/DAFormer).
//! Parameter names `decode_head.aspp_modules.{i}.conv.{weight,bias}`, weight
//! N(0, 0.01), bias 0.

use candle_core::{bail, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::layers::{Conv2d, ConvCfg};
use super::model::{ModelConfig, SegModel};
use super::resnet::{ResNet, ResNetConfig};
use super::ForwardCtx;

/// The DLV2 classifier: summed dilated 3x3 convolutions.
#[derive(Debug, Clone)]
pub struct Dlv2Head {
    branches: Vec<Conv2d>,
    num_classes: usize,
}

impl Dlv2Head {
    pub fn new(
        in_channels: usize,
        dilations: &[usize],
        num_classes: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        if dilations.is_empty() || dilations.contains(&0) || num_classes == 0 {
            bail!("Dlv2Head: needs positive dilations and classes (got {dilations:?}, K={num_classes})");
        }
        let branches = dilations
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                let cfg = ConvCfg {
                    stride: 1,
                    padding: d,
                    dilation: d,
                };
                Conv2d::with_init(
                    in_channels,
                    num_classes,
                    3,
                    cfg,
                    true,
                    Init::Randn {
                        mean: 0.0,
                        stdev: 0.01,
                    },
                    vb.pp("aspp_modules").pp(i).pp("conv"),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            branches,
            num_classes,
        })
    }

    /// (B, C, h, w) → (B, K, h, w).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut out: Option<Tensor> = None;
        for b in &self.branches {
            let y = b.forward(x)?;
            out = Some(match out {
                Some(acc) => (acc + y)?,
                None => y,
            });
        }
        match out {
            Some(o) => Ok(o),
            None => bail!("Dlv2Head: no branches"),
        }
    }
}

/// DeepLabV2: ResNet V1c (`backbone`) + DLV2 head (`decode_head`), output stride 8.
#[derive(Debug, Clone)]
pub struct DeepLabV2 {
    backbone: ResNet,
    head: Dlv2Head,
}

impl DeepLabV2 {
    /// DACS head dilations.
    pub const DILATIONS: [usize; 2] = [6, 12];

    pub fn new(resnet: &ResNetConfig, cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let backbone = ResNet::new(resnet, vb.pp("backbone"))?;
        let head = Dlv2Head::new(
            resnet.out_channels()[3],
            &Self::DILATIONS,
            cfg.num_classes,
            vb.pp("decode_head"),
        )?;
        Ok(Self { backbone, head })
    }

    pub fn backbone(&self) -> &ResNet {
        &self.backbone
    }
}

impl SegModel for DeepLabV2 {
    /// The four ResNet layer outputs (strides 4, 8, 8, 8).
    fn features(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Vec<Tensor>> {
        self.backbone.forward(x, ctx)
    }

    /// Logits at stride 8 from the last feature map.
    fn decode(&self, features: &[Tensor], _ctx: &mut ForwardCtx) -> Result<Tensor> {
        match features.last() {
            Some(f) => self.head.forward(f),
            None => bail!("DeepLabV2: no feature maps"),
        }
    }

    fn num_classes(&self) -> usize {
        self.head.num_classes
    }
}
