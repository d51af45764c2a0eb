//! Runtime dispatch of the CPU kernels to the widest vector instructions the
//! processor has.
//!
//! The crate is compiled for the baseline of its target (x86-64: SSE2), so a
//! kernel's loops vectorise four `f32` lanes wide. Each kernel runs its work
//! (one rayon task's chunk) through [`wide`]: on a CPU with AVX-512 or AVX2 the
//! chunk is called from a function compiled for those instructions, the
//! chunk's loops are inlined there and vectorise 16 or 8 lanes wide. The GELU
//! forward of MiT-B0's Mix-FFN, for one, runs about 3x faster.
//!
//! The results do not change: Rust never contracts a multiply and an add into
//! a fused multiply-add on its own, and the kernels fix their summation order
//! (see `nn::layers::cpu`), so every path rounds every operation the same way.
//! The kernels' tests compare the wide path with the baseline bit for bit.

use std::sync::OnceLock;

/// The instruction sets [`wide`] can compile a chunk for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// The compilation target's own (SSE2 on x86-64; anything off x86-64).
    Baseline,
    /// AVX2 (and FMA, BMI): x86-64-v3.
    Avx2,
    /// AVX-512 F/BW/DQ/VL on top of AVX2: x86-64-v4.
    Avx512,
}

/// The level [`wide`] dispatches to on this CPU (detected once).
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Level {
    let v3 = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("bmi1")
        && is_x86_feature_detected!("bmi2")
        && is_x86_feature_detected!("lzcnt")
        && is_x86_feature_detected!("popcnt");
    let v4 = v3
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512vl");
    if v4 {
        Level::Avx512
    } else if v3 {
        Level::Avx2
    } else {
        Level::Baseline
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Level {
    Level::Baseline
}

/// Runs `f` compiled for the widest vector instructions of this CPU (see the
/// module docs). `f` should be the whole loop of a chunk, not one element:
/// each call costs a function call.
#[inline]
pub fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY: `level` detected every feature these functions enable.
        Level::Avx512 => return unsafe { avx512(f) },
        Level::Avx2 => return unsafe { avx2(f) },
        Level::Baseline => {}
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi1,bmi2,lzcnt,popcnt")]
unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt,popcnt")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sums, products, divisions and square roots in a vectorisable loop:
    /// the wide path gives the baseline's bits.
    #[test]
    fn wide_path_is_bit_identical() {
        let x: Vec<f32> = (0..4099)
            .map(|i| ((i as f32) * 0.731).sin() * 3.0)
            .collect();
        let kernel = |x: &[f32]| -> Vec<f32> {
            let mut acc = [0f32; 8];
            let mut out: Vec<f32> = x
                .iter()
                .map(|&v| (v * 1.7 + 0.3) / (1.0 + v * v).sqrt())
                .collect();
            for c in out.chunks_exact(8) {
                for i in 0..8 {
                    acc[i] += c[i] * c[i];
                }
            }
            out.push(acc.iter().sum());
            out
        };
        let base = kernel(&x);
        let fast = wide(
            #[inline(always)]
            || kernel(&x),
        );
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&base), bits(&fast));
    }
}
