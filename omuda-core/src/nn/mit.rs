//! Mix Transformer (MiT) encoder of SegFormer, trainable, with the parameter
//! names of Hugging Face `SegformerModel` under the caller's prefix
//! (`segformer.encoder` in a full segmentation model).
//!
//! Inside the encoder everything stays channels-last: tokens (B, H·W, C) are a
//! (B, H, W, C) map, and the patch embeddings, spatial-reduction convs and the
//! Mix-FFN depthwise convs work on that layout directly, so the only transposes
//! are the four NCHW feature maps handed to the decode head.

use candle_core::{bail, Result, Tensor};
use candle_nn::VarBuilder;

use super::layers::{
    add_owned, attention_context, attention_probs, transpose_last2, Conv2d, ConvCfg,
    DepthwiseConv2d, DropPath, LayerNorm, Linear,
};
use super::ForwardCtx;

/// Hyper-parameters of a MiT encoder (four stages).
#[derive(Debug, Clone, PartialEq)]
pub struct MitConfig {
    pub in_channels: usize,
    pub hidden_sizes: [usize; 4],
    pub depths: [usize; 4],
    pub num_heads: [usize; 4],
    pub sr_ratios: [usize; 4],
    pub patch_sizes: [usize; 4],
    pub strides: [usize; 4],
    /// Hidden width of each stage's Mix-FFN over its channels (Hugging Face
    /// `mlp_ratios`; 4 in every published MiT).
    pub mlp_ratios: [usize; 4],
    /// Channels of the all-MLP decode head that goes with this encoder.
    pub decoder_hidden_size: usize,
    /// eps of the block and stage LayerNorms (mmseg MiT: 1e-6; HF modules default to 1e-5).
    pub block_ln_eps: f64,
    /// eps of the patch-embedding and spatial-reduction LayerNorms.
    pub embed_ln_eps: f64,
}

impl MitConfig {
    /// Valid names for [`MitConfig::by_name`].
    pub const NAMES: [&'static str; 7] = ["tiny", "b0", "b1", "b2", "b3", "b4", "b5"];

    fn base(hidden_sizes: [usize; 4], depths: [usize; 4], decoder_hidden_size: usize) -> Self {
        Self {
            in_channels: 3,
            hidden_sizes,
            depths,
            num_heads: [1, 2, 5, 8],
            sr_ratios: [8, 4, 2, 1],
            patch_sizes: [7, 3, 3, 3],
            strides: [4, 2, 2, 2],
            mlp_ratios: [4; 4],
            decoder_hidden_size,
            block_ln_eps: 1e-6,
            embed_ln_eps: 1e-5,
        }
    }

    /// A very small MiT for fast CPU tests and smoke runs (not a published model).
    pub fn tiny() -> Self {
        Self {
            num_heads: [1, 2, 4, 8],
            ..Self::base([16, 32, 64, 128], [1, 1, 1, 1], 64)
        }
    }

    pub fn b0() -> Self {
        Self::base([32, 64, 160, 256], [2, 2, 2, 2], 256)
    }

    pub fn b1() -> Self {
        Self::base([64, 128, 320, 512], [2, 2, 2, 2], 256)
    }

    pub fn b2() -> Self {
        Self::base([64, 128, 320, 512], [3, 4, 6, 3], 768)
    }

    pub fn b3() -> Self {
        Self::base([64, 128, 320, 512], [3, 4, 18, 3], 768)
    }

    pub fn b4() -> Self {
        Self::base([64, 128, 320, 512], [3, 8, 27, 3], 768)
    }

    pub fn b5() -> Self {
        Self::base([64, 128, 320, 512], [3, 6, 40, 3], 768)
    }

    /// The encoder of a Hugging Face `SegformerConfig` (`config.json`):
    /// every per-stage list (`hidden_sizes`, `depths`, `num_attention_heads`,
    /// `sr_ratios`, `patch_sizes`, `strides`, `mlp_ratios`) with four entries,
    /// `num_channels`, `decoder_hidden_size` and `layer_norm_eps` (the block
    /// and stage norms; the embedding norms keep 1e-5, as in `transformers`).
    /// A missing or malformed key is an error naming it.
    pub fn from_hf_config(json: &serde_json::Value) -> Result<Self> {
        fn stages(json: &serde_json::Value, key: &str) -> Result<[usize; 4]> {
            let v: Vec<usize> = json
                .get(key)
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_u64().map(|x| x as usize))
                        .collect()
                })
                .unwrap_or_default();
            match <[usize; 4]>::try_from(v.as_slice()) {
                Ok(a) => Ok(a),
                Err(_) => bail!(
                    "Segformer config: `{key}` must be a list of 4 positive integers, got {:?}",
                    json.get(key)
                ),
            }
        }
        let num = |key: &str| json.get(key).and_then(|v| v.as_u64()).map(|v| v as usize);
        let cfg = Self {
            in_channels: num("num_channels").unwrap_or(3),
            hidden_sizes: stages(json, "hidden_sizes")?,
            depths: stages(json, "depths")?,
            num_heads: stages(json, "num_attention_heads")?,
            sr_ratios: stages(json, "sr_ratios")?,
            patch_sizes: stages(json, "patch_sizes")?,
            strides: stages(json, "strides")?,
            mlp_ratios: stages(json, "mlp_ratios")?,
            decoder_hidden_size: num("decoder_hidden_size").unwrap_or(256),
            block_ln_eps: json
                .get("layer_norm_eps")
                .and_then(|v| v.as_f64())
                .unwrap_or(1e-6),
            embed_ln_eps: 1e-5,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// `"tiny"`, `"b0"` … `"b5"` (also accepted with a `mit_`/`mit` prefix).
    pub fn by_name(name: &str) -> Result<Self> {
        let key = name.trim_start_matches("mit_").trim_start_matches("mit");
        Ok(match key {
            "tiny" => Self::tiny(),
            "b0" => Self::b0(),
            "b1" => Self::b1(),
            "b2" => Self::b2(),
            "b3" => Self::b3(),
            "b4" => Self::b4(),
            "b5" => Self::b5(),
            _ => bail!(
                "unknown MiT variant {name:?}; valid names: {}",
                Self::NAMES.join(", ")
            ),
        })
    }

    fn validate(&self) -> Result<()> {
        for i in 0..4 {
            let (c, h) = (self.hidden_sizes[i], self.num_heads[i]);
            if h == 0 || c % h != 0 {
                bail!("MitConfig stage {i}: hidden size {c} is not divisible by {h} heads");
            }
            if self.sr_ratios[i] == 0 || self.strides[i] == 0 || self.patch_sizes[i] == 0 {
                bail!("MitConfig stage {i}: sr ratio, stride and patch size must be positive");
            }
        }
        Ok(())
    }
}

/// Overlapping patch embedding: conv (k, stride s, padding k/2) + LayerNorm.
#[derive(Debug, Clone)]
struct OverlapPatchEmbed {
    proj: Conv2d,
    layer_norm: LayerNorm,
}

impl OverlapPatchEmbed {
    fn new(
        in_c: usize,
        out_c: usize,
        patch: usize,
        stride: usize,
        eps: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let cfg = ConvCfg {
            stride,
            padding: patch / 2,
            dilation: 1,
        };
        Ok(Self {
            proj: Conv2d::new(in_c, out_c, patch, cfg, true, vb.pp("proj"))?,
            layer_norm: LayerNorm::new(out_c, eps, vb.pp("layer_norm"))?,
        })
    }

    /// Channels-last (B, H, W, C_in) → tokens (B, h·w, C), h, w.
    fn forward(&self, x: &Tensor) -> Result<(Tensor, usize, usize)> {
        let y = self.proj.forward_nhwc(x)?;
        let (b, h, w, c) = y.dims4()?;
        let tokens = y.reshape((b, h * w, c))?;
        Ok((self.layer_norm.forward(&tokens)?, h, w))
    }
}

/// Tokens (B, h·w, C) viewed as a channels-last map (B, h, w, C) (no copy).
fn tokens_as_nhwc(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, n, c) = x.dims3()?;
    if n != h * w {
        bail!("MiT: {n} tokens do not form a {h}x{w} map");
    }
    x.reshape((b, h, w, c))
}

/// Tokens (B, h·w, C) → NCHW map (B, C, h, w) (a transposed copy).
fn tokens_to_nchw(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, n, c) = x.dims3()?;
    if n != h * w {
        bail!("MiT: {n} tokens do not form a {h}x{w} map");
    }
    transpose_last2(x)?.reshape((b, c, h, w))
}

/// Multi-head attention whose keys and values come from a spatially reduced
/// copy of the tokens (strided conv with kernel = stride = sr, then LayerNorm).
#[derive(Debug, Clone)]
struct EfficientSelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    sr: Option<(Conv2d, LayerNorm)>,
    heads: usize,
    scale: f64,
}

impl EfficientSelfAttention {
    fn new(dim: usize, heads: usize, sr_ratio: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let sr = if sr_ratio > 1 {
            let cfg = ConvCfg {
                stride: sr_ratio,
                padding: 0,
                dilation: 1,
            };
            Some((
                Conv2d::new(dim, dim, sr_ratio, cfg, true, vb.pp("sr"))?,
                LayerNorm::new(dim, eps, vb.pp("layer_norm"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            query: Linear::new(dim, dim, vb.pp("query"))?,
            key: Linear::new(dim, dim, vb.pp("key"))?,
            value: Linear::new(dim, dim, vb.pp("value"))?,
            sr,
            heads,
            scale: ((dim / heads) as f64).powf(-0.5),
        })
    }

    /// (B, N, C) → (B, heads, N, C/heads), contiguous for the batched matmuls.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        if self.heads == 1 {
            return x.reshape((b, 1, n, c));
        }
        x.reshape((b, n, self.heads, c / self.heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn forward(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let kv_in = match &self.sr {
            Some((conv, ln)) => {
                let reduced = conv.forward_nhwc(&tokens_as_nhwc(x, h, w)?)?;
                let (_, rh, rw, _) = reduced.dims4()?;
                ln.forward(&reduced.reshape((b, rh * rw, c))?)?
            }
            None => x.clone(),
        };
        // Scaling q (N·C values) instead of the scores (N·N' values) is cheaper and equal.
        let q = (self.query.forward(x)? * self.scale)?;
        let k = self.key.forward(&kv_in)?;
        let v = self.value.forward(&kv_in)?;
        // Without a graph: every head in one pass over blocks of query rows.
        if let Some(ctx) = attention_context(&q, &k, &v, self.heads)? {
            return Ok(ctx);
        }
        let (q, k, v) = (
            self.split_heads(&q)?,
            self.split_heads(&k)?,
            self.split_heads(&v)?,
        );
        // softmax(q·kᵀ) in one op: the graph keeps the probabilities, not the
        // scores as well (and our softmax has a backward; Candle's has none).
        let probs = attention_probs(&q, &k)?;
        let ctx = probs.matmul(&v)?; // (B, heads, N, C/heads)
        if self.heads == 1 {
            ctx.reshape((b, n, c))
        } else {
            ctx.transpose(1, 2)?.contiguous()?.reshape((b, n, c))
        }
    }
}

/// HF `SegformerAttention`: efficient self-attention + output projection.
#[derive(Debug, Clone)]
struct Attention {
    attn: EfficientSelfAttention,
    dense: Linear,
}

impl Attention {
    fn new(dim: usize, heads: usize, sr_ratio: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            attn: EfficientSelfAttention::new(dim, heads, sr_ratio, eps, vb.pp("self"))?,
            dense: Linear::new(dim, dim, vb.pp("output").pp("dense"))?,
        })
    }

    fn forward(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        self.dense.forward(&self.attn.forward(x, h, w)?)
    }
}

/// Mix-FFN: Linear → depthwise 3x3 conv → GELU → Linear.
#[derive(Debug, Clone)]
struct MixFfn {
    dense1: Linear,
    dwconv: DepthwiseConv2d,
    dense2: Linear,
}

impl MixFfn {
    fn new(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            dense1: Linear::new(dim, hidden, vb.pp("dense1"))?,
            dwconv: DepthwiseConv2d::new(hidden, 3, 1, 1, true, vb.pp("dwconv").pp("dwconv"))?,
            dense2: Linear::new(hidden, dim, vb.pp("dense2"))?,
        })
    }

    fn forward(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let y = self.dense1.forward(x)?;
        let y = self.dwconv.forward_nhwc_gelu(&tokens_as_nhwc(&y, h, w)?)?;
        let (b, n, hidden) = (y.dim(0)?, h * w, y.dim(3)?);
        self.dense2.forward(&y.reshape((b, n, hidden))?)
    }
}

/// One transformer block (HF `SegformerLayer`), pre-norm with drop-path residuals.
#[derive(Debug, Clone)]
struct Block {
    layer_norm_1: LayerNorm,
    attention: Attention,
    layer_norm_2: LayerNorm,
    mlp: MixFfn,
    drop_path: DropPath,
}

impl Block {
    fn new(cfg: &MitConfig, stage: usize, drop_path: f64, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.hidden_sizes[stage];
        Ok(Self {
            layer_norm_1: LayerNorm::new(dim, cfg.block_ln_eps, vb.pp("layer_norm_1"))?,
            attention: Attention::new(
                dim,
                cfg.num_heads[stage],
                cfg.sr_ratios[stage],
                cfg.embed_ln_eps,
                vb.pp("attention"),
            )?,
            layer_norm_2: LayerNorm::new(dim, cfg.block_ln_eps, vb.pp("layer_norm_2"))?,
            mlp: MixFfn::new(dim, dim * cfg.mlp_ratios[stage], vb.pp("mlp"))?,
            drop_path: DropPath::new(drop_path)?,
        })
    }

    fn forward(&self, x: &Tensor, h: usize, w: usize, ctx: &mut ForwardCtx) -> Result<Tensor> {
        // The branch outputs are fresh tensors, dropped once summed: outside a
        // graph the residual sums overwrite them.
        let a = {
            let a = self
                .attention
                .forward(&self.layer_norm_1.forward(x)?, h, w)?;
            self.drop_path.forward(&a, ctx)?
        };
        let x = add_owned(x, a)?;
        let m = {
            let m = self.mlp.forward(&self.layer_norm_2.forward(&x)?, h, w)?;
            self.drop_path.forward(&m, ctx)?
        };
        add_owned(&x, m)
    }
}

/// One encoder stage: patch embedding, blocks, final LayerNorm.
#[derive(Debug, Clone)]
struct Stage {
    embed: OverlapPatchEmbed,
    blocks: Vec<Block>,
    norm: LayerNorm,
}

impl Stage {
    /// Channels-last input → (channels-last output (B, h, w, C), NCHW copy).
    fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<(Tensor, Tensor)> {
        let (mut t, h, w) = self.embed.forward(x)?;
        for block in &self.blocks {
            t = block.forward(&t, h, w, ctx)?;
        }
        let t = self.norm.forward(&t)?;
        Ok((tokens_as_nhwc(&t, h, w)?, tokens_to_nchw(&t, h, w)?))
    }
}

/// The MiT encoder: four stages at strides 4, 8, 16, 32.
#[derive(Debug, Clone)]
pub struct MixTransformer {
    cfg: MitConfig,
    stages: Vec<Stage>,
}

/// Per-block drop-path rates, `torch.linspace(0, rate, total)`.
pub fn drop_path_schedule(rate: f64, total: usize) -> Vec<f64> {
    match total {
        0 => vec![],
        1 => vec![0.0],
        n => (0..n).map(|i| rate * i as f64 / (n - 1) as f64).collect(),
    }
}

impl MixTransformer {
    /// `vb` is the encoder prefix (`segformer.encoder` in a segmentation model).
    pub fn new(cfg: &MitConfig, vb: VarBuilder, drop_path_rate: f64) -> Result<Self> {
        cfg.validate()?;
        let total: usize = cfg.depths.iter().sum();
        let rates = drop_path_schedule(drop_path_rate, total);
        let mut stages = Vec::with_capacity(4);
        let mut block_idx = 0;
        let mut in_c = cfg.in_channels;
        for i in 0..4 {
            let c = cfg.hidden_sizes[i];
            let embed = OverlapPatchEmbed::new(
                in_c,
                c,
                cfg.patch_sizes[i],
                cfg.strides[i],
                cfg.embed_ln_eps,
                vb.pp("patch_embeddings").pp(i),
            )?;
            let blocks = (0..cfg.depths[i])
                .map(|j| Block::new(cfg, i, rates[block_idx + j], vb.pp("block").pp(i).pp(j)))
                .collect::<Result<Vec<_>>>()?;
            block_idx += cfg.depths[i];
            let norm = LayerNorm::new(c, cfg.block_ln_eps, vb.pp("layer_norm").pp(i))?;
            stages.push(Stage {
                embed,
                blocks,
                norm,
            });
            in_c = c;
        }
        Ok(Self {
            cfg: cfg.clone(),
            stages,
        })
    }

    pub fn config(&self) -> &MitConfig {
        &self.cfg
    }

    /// Output channels of the four stages.
    pub fn out_channels(&self) -> [usize; 4] {
        self.cfg.hidden_sizes
    }

    /// (B, 3, H, W) → four maps (B, C_i, H/s_i, W/s_i), finest first.
    pub fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Vec<Tensor>> {
        let (b, c, h, w) = x.dims4()?;
        if c != self.cfg.in_channels {
            bail!(
                "MixTransformer: expected {} input channels, got input {:?}",
                self.cfg.in_channels,
                x.dims()
            );
        }
        let mut feats = Vec::with_capacity(4);
        // The image is the only NCHW → channels-last copy (3 channels, no gradient).
        let mut cur = transpose_last2(&x.reshape((b, c, h * w))?)?.reshape((b, h, w, c))?;
        for stage in &self.stages {
            let (nhwc, nchw) = stage.forward(&cur, ctx)?;
            feats.push(nchw);
            cur = nhwc;
        }
        Ok(feats)
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
    fn presets_and_names() {
        assert_eq!(
            MitConfig::by_name("b0").unwrap().hidden_sizes,
            [32, 64, 160, 256]
        );
        assert_eq!(MitConfig::by_name("mit_b5").unwrap().depths, [3, 6, 40, 3]);
        // `lhoyer/DAFormer mmseg/models/backbones/mix_transformer.py::mit_b5`, shared by
        // B1-B5 except the depths.
        let b5 = MitConfig::b5();
        assert_eq!(b5.hidden_sizes, [64, 128, 320, 512]);
        assert_eq!(b5.num_heads, [1, 2, 5, 8]);
        assert_eq!(b5.sr_ratios, [8, 4, 2, 1]);
        assert_eq!((b5.patch_sizes, b5.strides), ([7, 3, 3, 3], [4, 2, 2, 2]));
        assert_eq!(b5.mlp_ratios, [4; 4]);
        assert_eq!((b5.block_ln_eps, b5.embed_ln_eps), (1e-6, 1e-5));
        let depths: Vec<_> = ["b0", "b1", "b2", "b3", "b4"]
            .iter()
            .map(|n| MitConfig::by_name(n).unwrap().depths)
            .collect();
        assert_eq!(
            depths,
            vec![
                [2, 2, 2, 2],
                [2, 2, 2, 2],
                [3, 4, 6, 3],
                [3, 4, 18, 3],
                [3, 8, 27, 3]
            ]
        );
        assert_eq!(MitConfig::by_name("b2").unwrap().decoder_hidden_size, 768);
        assert_eq!(
            MitConfig::by_name("tiny").unwrap().hidden_sizes,
            [16, 32, 64, 128]
        );
        let err = MitConfig::by_name("b9").unwrap_err().to_string();
        assert!(err.contains("b0") && err.contains("tiny"), "{err}");
    }

    #[test]
    fn drop_path_rates_match_linspace() {
        let r = drop_path_schedule(0.1, 5);
        let expected = [0.0, 0.025, 0.05, 0.075, 0.1];
        for (a, b) in r.iter().zip(expected) {
            assert!((a - b).abs() < 1e-12);
        }
        assert_eq!(drop_path_schedule(0.1, 1), vec![0.0]);
    }

    #[test]
    fn tiny_encoder_shapes_and_hf_names() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let enc =
            MixTransformer::new(&MitConfig::tiny(), vb.pp("segformer").pp("encoder"), 0.1).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 64, 128), &Device::Cpu).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let feats = enc.forward(&x, &mut ForwardCtx::train(&mut rng)).unwrap();
        let shapes: Vec<_> = feats.iter().map(|f| f.dims().to_vec()).collect();
        assert_eq!(
            shapes,
            vec![
                vec![2, 16, 16, 32],
                vec![2, 32, 8, 16],
                vec![2, 64, 4, 8],
                vec![2, 128, 2, 4]
            ]
        );
        let names = varmap.data().lock().unwrap();
        for n in [
            "segformer.encoder.patch_embeddings.0.proj.weight",
            "segformer.encoder.patch_embeddings.3.layer_norm.bias",
            "segformer.encoder.block.0.0.layer_norm_1.weight",
            "segformer.encoder.block.0.0.attention.self.query.weight",
            "segformer.encoder.block.0.0.attention.self.sr.weight",
            "segformer.encoder.block.0.0.attention.self.layer_norm.weight",
            "segformer.encoder.block.2.0.attention.output.dense.bias",
            "segformer.encoder.block.1.0.mlp.dwconv.dwconv.weight",
            "segformer.encoder.block.1.0.mlp.dense2.weight",
            "segformer.encoder.layer_norm.3.weight",
        ] {
            assert!(names.contains_key(n), "missing {n}");
        }
        // sr = 1 in the last stage: no reduction conv.
        assert!(!names.contains_key("segformer.encoder.block.3.0.attention.self.sr.weight"));
        assert_eq!(
            names["segformer.encoder.block.1.0.mlp.dwconv.dwconv.weight"].dims(),
            &[128, 1, 3, 3]
        );
    }

    /// Odd input sizes follow PyTorch's floor arithmetic of the strided convs.
    #[test]
    fn odd_input_sizes() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let enc = MixTransformer::new(&MitConfig::tiny(), vb, 0.0).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 3, 70, 50), &Device::Cpu).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let feats = enc.forward(&x, &mut ForwardCtx::eval(&mut rng)).unwrap();
        // 70 → 18 → 9 → 5 → 3 ; 50 → 13 → 7 → 4 → 2 (k=7,s=4,p=3 then k=3,s=2,p=1).
        let hw: Vec<_> = feats
            .iter()
            .map(|f| (f.dim(2).unwrap(), f.dim(3).unwrap()))
            .collect();
        assert_eq!(hw, vec![(18, 13), (9, 7), (5, 4), (3, 2)]);
    }

    #[test]
    fn a_hugging_face_config_with_per_stage_mlp_ratios_builds() {
        let json = serde_json::json!({
            "num_channels": 3,
            "hidden_sizes": [8, 16, 24, 32],
            "depths": [1, 1, 2, 1],
            "num_attention_heads": [1, 2, 3, 4],
            "sr_ratios": [8, 4, 2, 1],
            "patch_sizes": [7, 3, 3, 3],
            "strides": [4, 2, 2, 2],
            "mlp_ratios": [4, 2, 3, 1],
            "decoder_hidden_size": 32,
            "layer_norm_eps": 1e-6
        });
        let cfg = MitConfig::from_hf_config(&json).unwrap();
        assert_eq!(cfg.mlp_ratios, [4, 2, 3, 1]);
        let vm = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(
            &vm,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        );
        MixTransformer::new(&cfg, vb, 0.0).unwrap();
        let shapes: std::collections::HashMap<String, Vec<usize>> = vm
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.dims().to_vec()))
            .collect();
        for (stage, (dim, ratio)) in [(8, 4), (16, 2), (24, 3), (32, 1)].into_iter().enumerate() {
            let key = format!("block.{stage}.0.mlp.dense1.weight");
            let found = shapes
                .iter()
                .find(|(k, _)| k.ends_with(&key))
                .map(|(_, s)| s.clone());
            assert_eq!(found, Some(vec![dim * ratio, dim]), "{key}");
        }
        let mut bad = json.clone();
        bad["mlp_ratios"] = serde_json::json!([4, 4, 4]);
        let e = MitConfig::from_hf_config(&bad).unwrap_err().to_string();
        assert!(e.contains("mlp_ratios"), "{e}");
    }
}
