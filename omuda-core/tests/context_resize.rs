//! HRDA's context downscale against PyTorch (`tests/fixtures/context_resize.safetensors`,
//! written by `tests/fixtures/gen_context_resize.py`):
//! `F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)` at
//! odd sizes, where PyTorch's 1/s coordinate map differs from in/out, for
//! the op (`resize_bilinear_scale_factor`) and through
//! `MultiResolution::context_image`, values and input gradients.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use omuda_core::nn::layers::max_rel_diff;
use omuda_core::ops::resize_bilinear_scale_factor;
use omuda_core::train::multires::{HrdaConfig, MultiResolution};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/context_resize.safetensors"
);

/// (case, scale) as `gen_context_resize.py` names them.
const CASES: [(&str, f64); 6] = [
    ("17x13_s50", 0.5),
    ("33x21_s50", 0.5),
    ("16x24_s50", 0.5),
    ("15x9_s25", 0.25),
    ("11x19_s75", 0.75),
    ("7x10_s30", 0.3),
];

fn fixtures() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(FIXTURES, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot load {FIXTURES}: {e} (run gen_context_resize.py)"))
}

fn check(what: &str, got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let want = want.to_dtype(DType::F32).unwrap();
    let d = max_rel_diff(&got.to_dtype(DType::F32).unwrap(), &want).unwrap();
    eprintln!("{what}: max relative difference {d:.2e}");
    assert!(d <= 1e-5, "{what}: relative difference {d}");
    d
}

#[test]
fn scale_factor_resize_matches_pytorch_at_odd_sizes() {
    let f = fixtures();
    let mut worst = 0f32;
    for (case, s) in CASES {
        let get = |k: &str| f[&format!("{case}.{k}")].clone();
        let x = Var::from_tensor(&get("x")).unwrap();
        let y = resize_bilinear_scale_factor(x.as_tensor(), s).unwrap();
        worst = worst.max(check(&format!("{case} y"), &y, &get("y")));
        let grads = (y * get("g"))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let dx = grads.get(x.as_tensor()).expect("no input gradient");
        worst = worst.max(check(&format!("{case} dx"), dx, &get("dx")));
    }
    eprintln!("worst relative difference {worst:.2e}");
}

#[test]
fn hrda_context_image_is_the_pytorch_downscale() {
    let f = fixtures();
    for (case, s) in CASES {
        let hrda = MultiResolution::new(HrdaConfig {
            context_scale: s,
            hr_crop: [4, 4],
            test_crop: [8, 8],
            test_stride: [4, 4],
            ..HrdaConfig::default()
        })
        .unwrap();
        let x = &f[&format!("{case}.x")];
        let y = hrda.context_image(x).unwrap();
        check(
            &format!("{case} context image"),
            &y,
            &f[&format!("{case}.y")],
        );
    }
}
