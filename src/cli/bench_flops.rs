//! FLOP count of one forward pass of a `segformer_*` / `daformer_*` network,
//! for the GFLOP/s column of `omuda bench`.
//!
//! Counts what `torch.utils.flop_counter.FlopCounterMode` counts on the same
//! network (`bench/pytorch_reference.py` prints its number): 2 FLOPs per
//! multiply-add of every convolution (depthwise included) and matrix product,
//! nothing for normalisations, activations, resizes and the loss. The counted
//! layout is the published one (the SegFormer head embeds every level to D and
//! fuses at H/4), whatever cheaper order omuda evaluates it in. A training step
//! is counted as 3x the forward (forward + two products per layer in the
//! backward), a DACS iteration as 7x (two student steps and a teacher forward).

use omuda::core::nn::mit::MitConfig;

/// Forward FLOPs of `model` on a batch of `batch` images of `h`x`w`, or `None`
/// for networks this counter does not know (DeepLabV2).
pub fn forward_flops(model: &str, batch: usize, h: usize, w: usize, classes: usize) -> Option<f64> {
    let (head, enc) = model.split_once('_')?;
    let mit = MitConfig::by_name(enc).ok()?;
    let (encoder, levels) = mit_flops(&mit, h, w);
    let n1 = levels[0].0 as f64;
    let head = match head {
        "segformer" => {
            let d = mit.decoder_hidden_size as f64;
            let embed: f64 = levels.iter().map(|&(n, c)| (n * c) as f64 * d).sum();
            embed + n1 * 4.0 * d * d + n1 * d * classes as f64
        }
        "daformer" => {
            // C = 256 for every MiT (`DaformerHeadConfig::daformer`), 64 for `tiny`.
            let c = if enc == "tiny" {
                mit.decoder_hidden_size
            } else {
                256
            } as f64;
            let embed: f64 = levels.iter().map(|&(n, ci)| (n * ci) as f64 * c).sum();
            let cat = 4.0 * c;
            // ASPP: 1x1 branch, three depthwise 3x3 + pointwise branches, 3x3 bottleneck.
            let aspp = n1 * cat * c + 3.0 * (n1 * cat * 9.0 + n1 * cat * c) + n1 * cat * c * 9.0;
            embed + aspp + n1 * c * classes as f64
        }
        _ => return None,
    };
    Some(2.0 * batch as f64 * (encoder + head))
}

/// Multiply-adds of one image through the MiT encoder, and (tokens, channels)
/// of its four output levels.
fn mit_flops(cfg: &MitConfig, h: usize, w: usize) -> (f64, Vec<(usize, usize)>) {
    let (mut h, mut w, mut cin) = (h, w, cfg.in_channels);
    let mut macs = 0.0;
    let mut levels = Vec::with_capacity(4);
    for i in 0..4 {
        let (k, s, c) = (cfg.patch_sizes[i], cfg.strides[i], cfg.hidden_sizes[i]);
        // Patch embedding: padding k/2.
        h = (h + 2 * (k / 2) - k) / s + 1;
        w = (w + 2 * (k / 2) - k) / s + 1;
        let n = (h * w) as f64;
        let cf = c as f64;
        macs += n * cf * (cin * k * k) as f64;
        let r = cfg.sr_ratios[i];
        let nr = if r > 1 {
            ((h - r) / r + 1) * ((w - r) / r + 1)
        } else {
            h * w
        } as f64;
        let hidden = cf * cfg.mlp_ratios[i] as f64;
        let mut block = n * cf * cf; // query
        if r > 1 {
            block += nr * cf * cf * (r * r) as f64; // spatial-reduction conv
        }
        block += 2.0 * nr * cf * cf; // key, value
        block += 2.0 * n * nr * cf; // scores and context over all heads
        block += n * cf * cf; // output projection
        block += n * cf * hidden + n * hidden * 9.0 + n * hidden * cf; // Mix-FFN
        macs += block * cfg.depths[i] as f64;
        levels.push((h * w, c));
        cin = c;
    }
    (macs, levels)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand count for `segformer_tiny` at 32x32, batch 1, 2 classes: every
    /// stage is small enough to add up by hand.
    #[test]
    fn segformer_tiny_by_hand() {
        // Levels: 8x8 (16 ch, sr 8 → 1 token), 4x4 (32, sr 4 → 1), 2x2 (64, sr 2 → 1), 1x1 (128, sr 1 → 1).
        let stage = |n: f64, c: f64, cin: f64, k: f64, nr: f64, r: f64| {
            let sr = if r > 1.0 { nr * c * c * r * r } else { 0.0 };
            n * c * cin * k * k
                + n * c * c
                + sr
                + 2.0 * nr * c * c
                + 2.0 * n * nr * c
                + n * c * c
                + n * c * 4.0 * c * 2.0
                + n * 4.0 * c * 9.0
        };
        let enc = stage(64.0, 16.0, 3.0, 7.0, 1.0, 8.0)
            + stage(16.0, 32.0, 16.0, 3.0, 1.0, 4.0)
            + stage(4.0, 64.0, 32.0, 3.0, 1.0, 2.0)
            + stage(1.0, 128.0, 64.0, 3.0, 1.0, 1.0);
        let d = 64.0;
        let head = (64.0 * 16.0 + 16.0 * 32.0 + 4.0 * 64.0 + 128.0) * d
            + 64.0 * 4.0 * d * d
            + 64.0 * d * 2.0;
        let got = forward_flops("segformer_tiny", 1, 32, 32, 2).unwrap();
        assert_eq!(got, 2.0 * (enc + head));
        assert_eq!(
            forward_flops("segformer_tiny", 3, 32, 32, 2).unwrap(),
            3.0 * got
        );
        assert!(forward_flops("dlv2_r101", 1, 32, 32, 2).is_none());
        // FlopCounterMode on the same network (bench/pytorch_reference.py).
        assert_eq!(got, 4_744_704.0);
    }

    /// `daformer_mitb0`, 256x256, batch 2, 19 classes: the count that
    /// `torch.utils.flop_counter.FlopCounterMode` gives for the same network in
    /// `bench/pytorch_reference.py` (torch 2.15).
    #[test]
    fn daformer_mitb0_matches_torch_flop_counter() {
        let got = forward_flops("daformer_mitb0", 2, 256, 256, 19).unwrap();
        assert_eq!(got, TORCH_DAFORMER_MITB0_256_B2);
        // segformer_mitb0 and daformer_tiny (64x64, batch 1, 2 classes) likewise.
        assert_eq!(
            forward_flops("segformer_mitb0", 2, 256, 256, 19).unwrap(),
            7_058_227_200.0
        );
        assert_eq!(
            forward_flops("daformer_tiny", 1, 64, 64, 2).unwrap(),
            123_273_216.0
        );
    }

    /// Printed by `python bench/pytorch_reference.py --model daformer_mitb0 --crop 256 --batch 2`.
    const TORCH_DAFORMER_MITB0_256_B2: f64 = 59_050_819_584.0;
}
