//! SegFormer all-MLP decode head (Hugging Face `SegformerDecodeHead`, prefix
//! `decode_head`): per-level linear embedding, bilinear resize to the finest
//! level, concatenation in reverse level order, 1x1 fusion conv + BatchNorm +
//! ReLU, channel dropout and a 1x1 classifier.
//!
//! [`SegformerHead::forward`] evaluates the embedding and fusion in a cheaper,
//! mathematically equal order (see its docs); [`SegformerHead::forward_unfused`]
//! is the literal order and the reference it is tested against.

use candle_core::{bail, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::layers::{
    add, channels_first_affine, may_overwrite, BatchNorm2d, Conv2d, ConvCfg, Dropout2d, Linear,
};
use super::ForwardCtx;
use crate::ops::{resize_bilinear, resize_bilinear_accumulate};

/// The all-MLP head over four encoder levels.
#[derive(Debug, Clone)]
pub struct SegformerHead {
    linear_c: Vec<Linear>,
    linear_fuse: Conv2d,
    batch_norm: BatchNorm2d,
    dropout: Dropout2d,
    classifier: Conv2d,
    num_classes: usize,
}

impl SegformerHead {
    /// `in_channels`: channels of the encoder levels, finest first; `dim`: the
    /// decoder width D; `dropout`: Dropout2d rate before the classifier.
    pub fn new(
        in_channels: &[usize],
        dim: usize,
        num_classes: usize,
        dropout: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        if in_channels.is_empty() || num_classes == 0 || dim == 0 {
            bail!(
                "SegformerHead: needs at least one input level, D > 0 and classes > 0 (got {in_channels:?}, D={dim}, K={num_classes})"
            );
        }
        let linear_c = in_channels
            .iter()
            .enumerate()
            .map(|(i, &c)| Linear::new(c, dim, vb.pp("linear_c").pp(i).pp("proj")))
            .collect::<Result<Vec<_>>>()?;
        let n = in_channels.len();
        let linear_fuse = Conv2d::new(
            n * dim,
            dim,
            1,
            ConvCfg::default(),
            false,
            vb.pp("linear_fuse"),
        )?;
        let batch_norm = BatchNorm2d::new(dim, vb.pp("batch_norm"))?;
        let classifier = Conv2d::with_init(
            dim,
            num_classes,
            1,
            ConvCfg::default(),
            true,
            Init::Randn {
                mean: 0.0,
                stdev: 0.01,
            },
            vb.pp("classifier"),
        )?;
        Ok(Self {
            linear_c,
            linear_fuse,
            batch_norm,
            dropout: Dropout2d::new(dropout)?,
            classifier,
            num_classes,
        })
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Features (B, C_i, h_i, w_i), finest first → logits (B, K, h_1, w_1).
    ///
    /// Computes the same function as [`SegformerHead::forward_unfused`] in a cheaper
    /// order. The fusion conv over the concatenation is a sum of per-level 1x1
    /// maps, `Σ_i W_i · resize(L_i x_i + b_i)`, and a 1x1 map commutes with bilinear
    /// resizing (a per-channel linear map whose weights sum to one, so biases
    /// commute too). Each level therefore goes through `W_i·L_i` and `W_i·b_i` at
    /// its own resolution and only D channels are resized and summed: no
    /// 4D-channel tensor at 1/4 resolution, and the D×4D fusion matmul over every
    /// 1/4-resolution pixel disappears. Gradients reach `linear_c`, `linear_fuse`
    /// through the products.
    pub fn forward(&self, features: &[Tensor], ctx: &mut ForwardCtx) -> Result<Tensor> {
        let n = self.linear_c.len();
        if features.len() != n {
            bail!(
                "SegformerHead: expected {n} feature maps, got {}",
                features.len()
            );
        }
        let (_, _, h, w) = features[0].dims4()?;
        let wf = self.linear_fuse.weight();
        let (d, nd, _, _) = wf.dims4()?;
        let wf = wf.reshape((d, nd))?;
        let mut fused: Option<Tensor> = None;
        for (i, (f, lin)) in features.iter().zip(&self.linear_c).enumerate() {
            // HF concatenates the levels coarsest first, [F4, F3, F2, F1]: level i
            // (finest first) meets fuse-weight block n−1−i.
            let wi = wf.narrow(1, (n - 1 - i) * d, d)?;
            let bias = match lin.bias() {
                Some(b) => Some(wi.matmul(&b.unsqueeze(1)?)?.squeeze(1)?),
                None => None,
            };
            let (_, c_in) = lin.weight().dims2()?;
            let e = if c_in <= d {
                // One D×C_i map: cheaper than L_i then W_i per pixel.
                channels_first_affine(f, &wi.matmul(lin.weight())?, bias.as_ref())?
            } else {
                channels_first_affine(&lin.forward_channels_first(f)?, &wi, None)?
            };
            fused = Some(match fused {
                // Outside a graph the sum is accumulated in place, resized as it
                // is added (same values).
                Some(acc) if may_overwrite(&acc, &[&e]) && e.dtype() == acc.dtype() => {
                    resize_bilinear_accumulate(&acc, &e)?;
                    acc
                }
                Some(acc) => add(&acc, &resize_bilinear(&e, h, w)?)?,
                None => resize_bilinear(&e, h, w)?,
            });
        }
        let Some(fused) = fused else {
            bail!("SegformerHead: no input levels")
        };
        self.finish(&fused, ctx)
    }

    /// The literal HF order: embed every level, resize the D-channel maps to
    /// level 1, concatenate [F4, F3, F2, F1], fuse with the 1x1 conv. Same
    /// function as [`SegformerHead::forward`], slower; kept as its reference.
    pub fn forward_unfused(&self, features: &[Tensor], ctx: &mut ForwardCtx) -> Result<Tensor> {
        if features.len() != self.linear_c.len() {
            bail!(
                "SegformerHead: expected {} feature maps, got {}",
                self.linear_c.len(),
                features.len()
            );
        }
        let (_, _, h, w) = features[0].dims4()?;
        let mut embedded = Vec::with_capacity(features.len());
        for (f, lin) in features.iter().zip(&self.linear_c).rev() {
            // The per-token linear layer, applied channels-first (no transposes).
            let e = lin.forward_channels_first(f)?;
            embedded.push(resize_bilinear(&e, h, w)?);
        }
        let fused = self.linear_fuse.forward(&Tensor::cat(&embedded, 1)?)?;
        self.finish(&fused, ctx)
    }

    /// BatchNorm → ReLU → Dropout2d → classifier.
    fn finish(&self, fused: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let x = self.batch_norm.forward_relu(fused, ctx)?;
        let x = self.dropout.forward(&x, ctx)?;
        self.classifier.forward(&x)
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
    fn head_shapes_names_and_concat_order() {
        let dev = Device::Cpu;
        let mut varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let head = SegformerHead::new(&[4, 6, 8, 10], 5, 3, 0.1, vb.pp("decode_head")).unwrap();
        {
            let d = varmap.data().lock().unwrap();
            assert_eq!(d["decode_head.linear_c.0.proj.weight"].dims(), &[5, 4]);
            assert_eq!(d["decode_head.linear_c.3.proj.weight"].dims(), &[5, 10]);
            assert_eq!(d["decode_head.linear_fuse.weight"].dims(), &[5, 20, 1, 1]);
            assert!(!d.contains_key("decode_head.linear_fuse.bias"));
            assert!(d.contains_key("decode_head.batch_norm.running_var"));
            assert_eq!(d["decode_head.classifier.weight"].dims(), &[3, 5, 1, 1]);
            assert!(d.contains_key("decode_head.classifier.bias"));
        }
        let feats: Vec<Tensor> = [(4, 16, 32), (6, 8, 16), (8, 4, 8), (10, 2, 4)]
            .iter()
            .map(|&(c, h, w)| Tensor::randn(0f32, 1.0, (2, c, h, w), &dev).unwrap())
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let out = head
            .forward(&feats, &mut ForwardCtx::eval(&mut rng))
            .unwrap();
        assert_eq!(out.dims(), &[2, 3, 16, 32]);

        // Concat order: the first D input channels of linear_fuse must belong to
        // the coarsest level. Zero all fuse weights except block 0 and check that
        // only F4 influences the output.
        let mut w = vec![0f32; 5 * 20];
        for o in 0..5 {
            w[o * 20 + o] = 1.0;
        }
        varmap
            .set_one(
                "decode_head.linear_fuse.weight",
                Tensor::from_vec(w, (5, 20, 1, 1), &dev).unwrap(),
            )
            .unwrap();
        let base = head
            .forward(&feats, &mut ForwardCtx::eval(&mut rng))
            .unwrap();
        let mut changed = feats.clone();
        changed[0] = (&feats[0] * 3.0).unwrap();
        let same = head
            .forward(&changed, &mut ForwardCtx::eval(&mut rng))
            .unwrap();
        let d0 = (&base - &same)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d0 < 1e-6, "F1 leaked into the first fuse block: {d0}");
        changed = feats.clone();
        changed[3] = (&feats[3] * 3.0).unwrap();
        let diff = head
            .forward(&changed, &mut ForwardCtx::eval(&mut rng))
            .unwrap();
        let d3 = (&base - &diff)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d3 > 1e-3, "F4 does not reach the first fuse block: {d3}");
    }
}
