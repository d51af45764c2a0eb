//! DAFormer decode head (context-aware fusion), with the parameter names of
//! mmseg's `DAFormerHead` under the caller's prefix (`decode_head`), so that
//! DAFormer checkpoints load unchanged:
//!
//! - `embed_layers.{i}.proj`: per-level linear embedding C_i → C (no norm, no
//!   activation), bilinearly resized to the level-1 size (H/4);
//! - concatenation in level order **[F1, F2, F3, F4]** (SegFormer concatenates
//!   the reverse order);
//! - `fuse_layer`: depthwise-separable ASPP. Dilation 1 is a 1x1 conv + BN +
//!   ReLU (`aspp_modules.0.{conv,bn}`); every other dilation d is a 3x3
//!   depthwise conv (dilation d, padding d) + BN + ReLU followed by a 1x1 conv +
//!   BN + ReLU (`aspp_modules.k.depthwise_conv.{conv,bn}`,
//!   `aspp_modules.k.pointwise_conv.{conv,bn}`). The branch outputs are
//!   concatenated and fused by a 3x3 conv + BN + ReLU (`bottleneck.{conv,bn}`);
//! - Dropout2d, then `conv_seg`, a 1x1 conv with bias, weight N(0, 0.01).
//!
//! Follows `mmseg/models/decode_heads/daformer_head.py` (`DAFormerHead.forward`,
//! `ASPPWrapper`) and `sep_aspp_head.py` (`DepthwiseSeparableASPPModule`) of
//! lhoyer/DAFormer; the convolutions of `ConvModule`s with a norm have no bias.

use candle_core::{bail, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::layers::{BatchNorm2d, Conv2d, ConvCfg, DepthwiseConv2d, Dropout2d, Linear};
use super::ForwardCtx;
use crate::ops::resize_bilinear;

/// Width and ASPP dilations of a [`DaformerHead`].
#[derive(Debug, Clone, PartialEq)]
pub struct DaformerHeadConfig {
    /// Channels C of the embeddings, the ASPP branches and the bottleneck (256 in DAFormer).
    pub channels: usize,
    /// ASPP dilations (DAFormer: 1, 6, 12, 18). Dilation 1 is a plain 1x1 branch.
    pub dilations: Vec<usize>,
    /// Dropout2d rate before `conv_seg` (0.1).
    pub dropout: f64,
}

impl DaformerHeadConfig {
    /// The head of DAFormer (`daformer_sepaspp_mitb5.py`): C = 256, dilations 1/6/12/18.
    pub fn daformer(dropout: f64) -> Self {
        Self {
            channels: 256,
            dilations: vec![1, 6, 12, 18],
            dropout,
        }
    }
}

/// mmcv `ConvModule` with BatchNorm and ReLU: conv (no bias) → BN → ReLU.
#[derive(Debug, Clone)]
struct ConvBnRelu {
    conv: ConvKind,
    bn: BatchNorm2d,
}

#[derive(Debug, Clone)]
enum ConvKind {
    Dense(Conv2d),
    Depthwise(DepthwiseConv2d),
}

impl ConvBnRelu {
    fn dense(in_c: usize, out_c: usize, kernel: usize, vb: VarBuilder) -> Result<Self> {
        let cfg = ConvCfg {
            stride: 1,
            padding: kernel / 2,
            dilation: 1,
        };
        Ok(Self {
            conv: ConvKind::Dense(Conv2d::new(in_c, out_c, kernel, cfg, false, vb.pp("conv"))?),
            bn: BatchNorm2d::new(out_c, vb.pp("bn"))?,
        })
    }

    fn depthwise(channels: usize, dilation: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: ConvKind::Depthwise(DepthwiseConv2d::new(
                channels,
                3,
                dilation,
                dilation,
                false,
                vb.pp("conv"),
            )?),
            bn: BatchNorm2d::new(channels, vb.pp("bn"))?,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let y = match &self.conv {
            ConvKind::Dense(c) => c.forward(x)?,
            ConvKind::Depthwise(c) => c.forward(x)?,
        };
        self.bn.forward_relu(&y, ctx)
    }
}

/// One ASPP branch.
#[derive(Debug, Clone)]
enum AsppBranch {
    /// Dilation 1: 1x1 conv + BN + ReLU.
    Point(ConvBnRelu),
    /// Dilation d > 1: depthwise 3x3 (dilation d) + BN + ReLU, then 1x1 + BN + ReLU.
    Separable {
        depthwise: ConvBnRelu,
        pointwise: ConvBnRelu,
    },
}

impl AsppBranch {
    fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        match self {
            AsppBranch::Point(c) => c.forward(x, ctx),
            AsppBranch::Separable {
                depthwise,
                pointwise,
            } => pointwise.forward(&depthwise.forward(x, ctx)?, ctx),
        }
    }
}

/// How the concatenated embeddings are fused.
#[derive(Debug, Clone)]
enum Fusion {
    /// DAFormer's depthwise-separable ASPP + 3x3 bottleneck (`fuse_layer.aspp_modules.*`, `fuse_layer.bottleneck`).
    Aspp {
        branches: Vec<AsppBranch>,
        bottleneck: ConvBnRelu,
    },
    /// One 1x1 `ConvModule` + BN + ReLU (`fuse_layer.{conv,bn}`): the
    /// `daformer_conv1` variant, used by HRDA's scale-attention head.
    Conv1x1(ConvBnRelu),
}

/// The DAFormer decode head over four encoder levels.
#[derive(Debug, Clone)]
pub struct DaformerHead {
    embed: Vec<Linear>,
    fusion: Fusion,
    dropout: Dropout2d,
    conv_seg: Conv2d,
    num_classes: usize,
}

impl DaformerHead {
    /// `in_channels`: channels of the encoder levels, finest first.
    pub fn new(
        in_channels: &[usize],
        cfg: &DaformerHeadConfig,
        num_classes: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let c = cfg.channels;
        if in_channels.is_empty() || num_classes == 0 || c == 0 || cfg.dilations.is_empty() {
            bail!(
                "DaformerHead: needs input levels, channels > 0, classes > 0 and dilations (got {in_channels:?}, C={c}, K={num_classes}, dilations {:?})",
                cfg.dilations
            );
        }
        let embed = in_channels
            .iter()
            .enumerate()
            .map(|(i, &ci)| Linear::new(ci, c, vb.pp("embed_layers").pp(i).pp("proj")))
            .collect::<Result<Vec<_>>>()?;
        let cat_c = in_channels.len() * c;
        let fuse = vb.pp("fuse_layer");
        let mut branches = Vec::with_capacity(cfg.dilations.len());
        for (k, &d) in cfg.dilations.iter().enumerate() {
            let vk = fuse.pp("aspp_modules").pp(k);
            branches.push(match d {
                0 => bail!("DaformerHead: dilation 0 in {:?}", cfg.dilations),
                1 => AsppBranch::Point(ConvBnRelu::dense(cat_c, c, 1, vk)?),
                d => AsppBranch::Separable {
                    depthwise: ConvBnRelu::depthwise(cat_c, d, vk.pp("depthwise_conv"))?,
                    pointwise: ConvBnRelu::dense(cat_c, c, 1, vk.pp("pointwise_conv"))?,
                },
            });
        }
        let bottleneck = ConvBnRelu::dense(cfg.dilations.len() * c, c, 3, fuse.pp("bottleneck"))?;
        Self::assemble(
            embed,
            Fusion::Aspp {
                branches,
                bottleneck,
            },
            c,
            cfg.dropout,
            num_classes,
            vb,
        )
    }

    /// The head with a single 1x1 `ConvModule` fusion instead of the ASPP
    /// (`fusion_cfg = dict(type='conv', kernel_size=1)`): HRDA's scale-attention
    /// head (`lhoyer/HRDA mmseg/models/decode_heads/hrda_head.py::HRDAHead.__init__`).
    /// Parameter names: `embed_layers.{i}.proj`, `fuse_layer.{conv,bn}`, `conv_seg`.
    pub fn with_conv1x1_fusion(
        in_channels: &[usize],
        channels: usize,
        dropout: f64,
        num_classes: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        if in_channels.is_empty() || num_classes == 0 || channels == 0 {
            bail!(
                "DaformerHead (1x1 fusion): needs input levels, channels > 0 and classes > 0 (got {in_channels:?}, C={channels}, K={num_classes})"
            );
        }
        let embed = in_channels
            .iter()
            .enumerate()
            .map(|(i, &ci)| Linear::new(ci, channels, vb.pp("embed_layers").pp(i).pp("proj")))
            .collect::<Result<Vec<_>>>()?;
        let fuse = ConvBnRelu::dense(
            in_channels.len() * channels,
            channels,
            1,
            vb.pp("fuse_layer"),
        )?;
        Self::assemble(
            embed,
            Fusion::Conv1x1(fuse),
            channels,
            dropout,
            num_classes,
            vb,
        )
    }

    fn assemble(
        embed: Vec<Linear>,
        fusion: Fusion,
        c: usize,
        dropout: f64,
        num_classes: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let conv_seg = Conv2d::with_init(
            c,
            num_classes,
            1,
            ConvCfg::default(),
            true,
            Init::Randn {
                mean: 0.0,
                stdev: 0.01,
            },
            vb.pp("conv_seg"),
        )?;
        Ok(Self {
            embed,
            fusion,
            dropout: Dropout2d::new(dropout)?,
            conv_seg,
            num_classes,
        })
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Features (B, C_i, h_i, w_i), finest first → logits (B, K, h_1, w_1).
    pub fn forward(&self, features: &[Tensor], ctx: &mut ForwardCtx) -> Result<Tensor> {
        if features.len() != self.embed.len() {
            bail!(
                "DaformerHead: expected {} feature maps, got {}",
                self.embed.len(),
                features.len()
            );
        }
        let (_, _, h, w) = features[0].dims4()?;
        let mut embedded = Vec::with_capacity(features.len());
        for (f, lin) in features.iter().zip(&self.embed) {
            let e = lin.forward_channels_first(f)?;
            let (_, _, hi, wi) = e.dims4()?;
            embedded.push(if (hi, wi) == (h, w) {
                e
            } else {
                resize_bilinear(&e, h, w)?
            });
        }
        let x = Tensor::cat(&embedded, 1)?;
        let y = match &self.fusion {
            Fusion::Aspp {
                branches,
                bottleneck,
            } => {
                let outs = branches
                    .iter()
                    .map(|b| b.forward(&x, ctx))
                    .collect::<Result<Vec<_>>>()?;
                bottleneck.forward(&Tensor::cat(&outs, 1)?, ctx)?
            }
            Fusion::Conv1x1(conv) => conv.forward(&x, ctx)?,
        };
        let y = self.dropout.forward(&y, ctx)?;
        self.conv_seg.forward(&y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn shapes_and_mmseg_names() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let cfg = DaformerHeadConfig {
            channels: 6,
            dilations: vec![1, 2, 3],
            dropout: 0.1,
        };
        let head = DaformerHead::new(&[4, 5, 7, 8], &cfg, 3, vb.pp("decode_head")).unwrap();
        {
            let d = vm.data().lock().unwrap();
            let shape = |n: &str| d[n].dims().to_vec();
            assert_eq!(shape("decode_head.embed_layers.2.proj.weight"), vec![6, 7]);
            assert_eq!(
                shape("decode_head.fuse_layer.aspp_modules.0.conv.weight"),
                vec![6, 24, 1, 1]
            );
            assert_eq!(
                shape("decode_head.fuse_layer.aspp_modules.1.depthwise_conv.conv.weight"),
                vec![24, 1, 3, 3]
            );
            assert_eq!(
                shape("decode_head.fuse_layer.aspp_modules.2.pointwise_conv.conv.weight"),
                vec![6, 24, 1, 1]
            );
            assert!(d.contains_key(
                "decode_head.fuse_layer.aspp_modules.2.depthwise_conv.bn.running_var"
            ));
            assert_eq!(
                shape("decode_head.fuse_layer.bottleneck.conv.weight"),
                vec![6, 18, 3, 3]
            );
            assert_eq!(shape("decode_head.conv_seg.weight"), vec![3, 6, 1, 1]);
            assert!(d.contains_key("decode_head.conv_seg.bias"));
            assert!(!d.contains_key("decode_head.fuse_layer.bottleneck.conv.bias"));
        }
        let feats: Vec<Tensor> = [(4, 8, 12), (5, 4, 6), (7, 2, 3), (8, 1, 2)]
            .iter()
            .map(|&(c, h, w)| Tensor::randn(0f32, 1.0, (2, c, h, w), &dev).unwrap())
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let y = head
            .forward(&feats, &mut ForwardCtx::train(&mut rng))
            .unwrap();
        assert_eq!(y.dims(), &[2, 3, 8, 12]);
        assert!(head
            .forward(&feats[..3], &mut ForwardCtx::eval(&mut rng))
            .is_err());
    }
}
