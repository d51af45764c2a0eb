//! Dilated ResNet V1c (mmseg `ResNetV1c`), trainable, with mmseg parameter names
//! under the caller's prefix (`backbone` in a segmentation model):
//! `stem.{0,3,6}` (convs) / `stem.{1,4,7}` (BatchNorms), `layer{1..4}.{j}.conv{1,2,3}`,
//! `bn{1,2,3}`, `downsample.0` (1x1 conv) / `downsample.1` (BN).
//!
//! - Deep stem: three 3x3 convs (3 → s/2 stride 2, s/2 → s/2, s/2 → s), each
//!   with BN and ReLU, then max-pool 3x3 / stride 2 / padding 1.
//! - Bottleneck blocks, "pytorch" style: the stride is on the 3x3 conv, which
//!   also carries the dilation (padding = dilation); expansion 4; the first block
//!   of a layer has a projection shortcut when the stride or width changes.
//! - Dilated layers with contract dilation: the first block of a layer with
//!   dilation d > 1 uses d / 2 (DeepLabV2 / DACS: strides (1, 2, 1, 1),
//!   dilations (1, 1, 2, 4), output stride 8).
//!
//! Follows `mmseg/models/backbones/resnet.py` (`ResNet`, `ResNetV1c`,
//! `Bottleneck`) and `mmseg/models/utils/res_layer.py` (`ResLayer`,
//! `contract_dilation`). BatchNorm is trainable and follows `ForwardCtx::bn_train`.

use candle_core::{bail, Result, Tensor};
use candle_nn::VarBuilder;

use super::layers::{max_pool2d, relu, BatchNorm2d, Conv2d, ConvCfg};
use super::ForwardCtx;

/// Depths, widths, strides and dilations of a [`ResNet`].
#[derive(Debug, Clone, PartialEq)]
pub struct ResNetConfig {
    /// Bottleneck blocks per layer (R50: 3, 4, 6, 3; R101: 3, 4, 23, 3).
    pub depths: [usize; 4],
    /// Output channels of the deep stem (64); its first two convs have half.
    pub stem_channels: usize,
    /// Bottleneck width of layer 1 (64), doubled per layer; outputs are 4x.
    pub base_channels: usize,
    pub strides: [usize; 4],
    pub dilations: [usize; 4],
    /// The first block of a dilated layer uses half the dilation.
    pub contract_dilation: bool,
}

impl ResNetConfig {
    /// ResNet-101 V1c for DeepLabV2 (output stride 8).
    pub fn r101_v1c() -> Self {
        Self {
            depths: [3, 4, 23, 3],
            ..Self::r50_v1c()
        }
    }

    /// ResNet-50 V1c for DeepLabV2 (output stride 8).
    pub fn r50_v1c() -> Self {
        Self {
            depths: [3, 4, 6, 3],
            stem_channels: 64,
            base_channels: 64,
            strides: [1, 2, 1, 1],
            dilations: [1, 1, 2, 4],
            contract_dilation: true,
        }
    }

    /// A very small V1c (one or two blocks per layer, base width 2) for tests and
    /// smoke runs; same structure as R101.
    pub fn tiny() -> Self {
        Self {
            depths: [1, 1, 2, 2],
            stem_channels: 8,
            base_channels: 2,
            ..Self::r50_v1c()
        }
    }

    /// Channels of the four layer outputs.
    pub fn out_channels(&self) -> [usize; 4] {
        [0, 1, 2, 3].map(|i| self.base_channels * 4 * (1 << i))
    }

    fn validate(&self) -> Result<()> {
        if self.stem_channels < 2
            || !self.stem_channels.is_multiple_of(2)
            || self.base_channels == 0
        {
            bail!("ResNetConfig: stem channels must be even and ≥ 2, base channels > 0 (got {self:?})");
        }
        if self.depths.contains(&0) || self.strides.contains(&0) || self.dilations.contains(&0) {
            bail!("ResNetConfig: depths, strides and dilations must be positive (got {self:?})");
        }
        Ok(())
    }
}

/// Conv (no bias) + BatchNorm.
#[derive(Debug, Clone)]
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn new(
        in_c: usize,
        out_c: usize,
        kernel: usize,
        cfg: ConvCfg,
        conv_vb: VarBuilder,
        bn_vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::new(in_c, out_c, kernel, cfg, false, conv_vb)?,
            bn: BatchNorm2d::new(out_c, bn_vb)?,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        self.bn.forward(&self.conv.forward(x)?, ctx)
    }
}

/// Bottleneck block: 1x1 → 3x3 (stride, dilation) → 1x1 (4x width), residual.
#[derive(Debug, Clone)]
struct Bottleneck {
    c1: ConvBn,
    c2: ConvBn,
    c3: ConvBn,
    downsample: Option<ConvBn>,
}

impl Bottleneck {
    fn new(
        in_c: usize,
        planes: usize,
        stride: usize,
        dilation: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let out_c = planes * 4;
        let one = ConvCfg::default();
        let downsample = if stride != 1 || in_c != out_c {
            let cfg = ConvCfg {
                stride,
                padding: 0,
                dilation: 1,
            };
            let d = vb.pp("downsample");
            Some(ConvBn::new(in_c, out_c, 1, cfg, d.pp(0), d.pp(1))?)
        } else {
            None
        };
        let mid = ConvCfg {
            stride,
            padding: dilation,
            dilation,
        };
        Ok(Self {
            c1: ConvBn::new(in_c, planes, 1, one, vb.pp("conv1"), vb.pp("bn1"))?,
            c2: ConvBn::new(planes, planes, 3, mid, vb.pp("conv2"), vb.pp("bn2"))?,
            c3: ConvBn::new(planes, out_c, 1, one, vb.pp("conv3"), vb.pp("bn3"))?,
            downsample,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let identity = match &self.downsample {
            Some(d) => d.forward(x, ctx)?,
            None => x.clone(),
        };
        let y = relu(&self.c1.forward(x, ctx)?)?;
        let y = relu(&self.c2.forward(&y, ctx)?)?;
        let y = self.c3.forward(&y, ctx)?;
        relu(&(y + identity)?)
    }
}

/// The ResNet V1c backbone.
#[derive(Debug, Clone)]
pub struct ResNet {
    cfg: ResNetConfig,
    stem: Vec<ConvBn>,
    layers: Vec<Vec<Bottleneck>>,
}

impl ResNet {
    /// `vb` is the backbone prefix (`backbone` in a segmentation model).
    pub fn new(cfg: &ResNetConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let s = cfg.stem_channels;
        let st = vb.pp("stem");
        let first = ConvCfg {
            stride: 2,
            padding: 1,
            dilation: 1,
        };
        let same = ConvCfg {
            stride: 1,
            padding: 1,
            dilation: 1,
        };
        // nn.Sequential(conv, bn, relu) x3: convs at 0, 3, 6 and norms at 1, 4, 7.
        let stem = vec![
            ConvBn::new(3, s / 2, 3, first, st.pp(0), st.pp(1))?,
            ConvBn::new(s / 2, s / 2, 3, same, st.pp(3), st.pp(4))?,
            ConvBn::new(s / 2, s, 3, same, st.pp(6), st.pp(7))?,
        ];
        let mut in_c = s;
        let mut layers = Vec::with_capacity(4);
        for i in 0..4 {
            let planes = cfg.base_channels << i;
            let lv = vb.pp(format!("layer{}", i + 1));
            let d = cfg.dilations[i];
            let mut blocks = Vec::with_capacity(cfg.depths[i]);
            for j in 0..cfg.depths[i] {
                let (stride, dil) = if j == 0 {
                    let first_d = if cfg.contract_dilation && d > 1 {
                        d / 2
                    } else {
                        d
                    };
                    (cfg.strides[i], first_d)
                } else {
                    (1, d)
                };
                blocks.push(Bottleneck::new(in_c, planes, stride, dil, lv.pp(j))?);
                in_c = planes * 4;
            }
            layers.push(blocks);
        }
        Ok(Self {
            cfg: cfg.clone(),
            stem,
            layers,
        })
    }

    pub fn config(&self) -> &ResNetConfig {
        &self.cfg
    }

    /// (B, 3, H, W) → the four layer outputs, finest first (strides 4, 8, 8, 8
    /// for DeepLabV2).
    pub fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Vec<Tensor>> {
        let (_, c, _, _) = x.dims4()?;
        if c != 3 {
            bail!(
                "ResNet: expected 3 input channels, got input {:?}",
                x.dims()
            );
        }
        let mut y = x.clone();
        for conv in &self.stem {
            y = relu(&conv.forward(&y, ctx)?)?;
        }
        y = max_pool2d(&y, 3, 2, 1)?;
        let mut outs = Vec::with_capacity(4);
        for layer in &self.layers {
            for block in layer {
                y = block.forward(&y, ctx)?;
            }
            outs.push(y.clone());
        }
        Ok(outs)
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
    fn r101_names_shapes_and_output_stride() {
        let cfg = ResNetConfig::r101_v1c();
        assert_eq!(cfg.out_channels(), [256, 512, 1024, 2048]);
        // Only the tiny variant is built (R101 is ~43 M parameters).
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let net = ResNet::new(&ResNetConfig::tiny(), vb.pp("backbone")).unwrap();
        {
            let d = vm.data().lock().unwrap();
            assert_eq!(d["backbone.stem.0.weight"].dims(), &[4, 3, 3, 3]);
            assert_eq!(d["backbone.stem.6.weight"].dims(), &[8, 4, 3, 3]);
            assert!(d.contains_key("backbone.stem.7.running_mean"));
            // Layer 1 keeps the stem width (8 = 2 × 4): no projection shortcut.
            assert!(!d.contains_key("backbone.layer1.0.downsample.0.weight"));
            assert_eq!(
                d["backbone.layer2.0.downsample.0.weight"].dims(),
                &[16, 8, 1, 1]
            );
            assert!(d.contains_key("backbone.layer2.0.downsample.1.running_var"));
            assert_eq!(d["backbone.layer4.1.conv3.weight"].dims(), &[64, 16, 1, 1]);
            assert!(!d.contains_key("backbone.layer4.1.downsample.0.weight"));
        }
        let x = Tensor::randn(0f32, 1.0, (1, 3, 64, 48), &Device::Cpu).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let outs = net.forward(&x, &mut ForwardCtx::train(&mut rng)).unwrap();
        let dims: Vec<_> = outs.iter().map(|o| o.dims().to_vec()).collect();
        assert_eq!(
            dims,
            vec![
                vec![1, 8, 16, 12],
                vec![1, 16, 8, 6],
                vec![1, 32, 8, 6],
                vec![1, 64, 8, 6]
            ]
        );
    }
}
