//! Scalar maths of the fused activations, written with plain arithmetic (no
//! libm calls, no branches that block vectorisation) so that the element-wise
//! GELU and softmax loops vectorise: `f32::exp` and `erf` are scalar library calls.

/// erfc(z) for z ≥ 0, Chebyshev fit with fractional error < 1.2e-7 everywhere
/// (Numerical Recipes `erfcc`): relative accuracy also in the far tail.
#[inline(always)]
fn erfc_pos(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    t * exp_f32(poly)
}

/// Standard normal CDF Φ(x) = erfc(−x/√2)/2 (branch-free so that loops vectorise).
#[inline(always)]
pub(super) fn normal_cdf(x: f32) -> f32 {
    let half_tail = 0.5 * erfc_pos(x.abs() * std::f32::consts::FRAC_1_SQRT_2);
    if x <= 0.0 {
        half_tail
    } else {
        1.0 - half_tail
    }
}

/// e^x in f32 (Cephes `expf` polynomial, ≤ 2 ulp), written with plain arithmetic
/// so that the fused GELU / softmax loops vectorise; `f32::exp` is a scalar libm
/// call. Returns 0 below −87.3 (where the result would be subnormal).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Round-to-nearest by the 1.5·2^23 trick (no `floor`, which is a libm call
    // without SSE4.1).
    const MAGIC: f32 = 12_582_912.0;
    let xc = x.clamp(-87.3, 88.7);
    let shifted = xc * LOG2E + MAGIC;
    let n = shifted - MAGIC;
    // x − n·ln2 in two parts for precision.
    let r = xc - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let r2 = r * r;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 0.5)
        * r2
        + r
        + 1.0;
    // n as an integer, read from the mantissa of `shifted` (1.5·2^23 + n): a
    // saturating `as i32` cast would block vectorisation.
    let ni = (shifted.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    if x < -87.3 {
        0.0
    } else {
        p * scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_cdf_known_values() {
        // Φ(0) = 0.5, Φ(1) = 0.841344746, Φ(−3) = 0.001349898, Φ(−6) = 9.8659e-10.
        for (x, want) in [
            (0.0f32, 0.5f64),
            (1.0, 0.841_344_746),
            (-3.0, 0.001_349_898),
            (-6.0, 9.865_876e-10),
        ] {
            let got = normal_cdf(x) as f64;
            assert!(
                ((got - want) / want).abs() < 1e-6,
                "Φ({x}) = {got}, want {want}"
            );
        }
    }
}
