//! Checks `ops::resize_bilinear` and `ops::cross_entropy` against PyTorch
//! reference values (`tests/fixtures/ops.safetensors`, written by
//! `tests/fixtures/gen_ops.py`): forward values and gradients, on the fused CPU
//! path and on the device-generic composed path, in f32 and f64.

use std::collections::HashMap;

use candle_core::{DType, Result, Tensor, Var};
use omuda_core::ops::loss::{cross_entropy_composed, cross_entropy_per_pixel};
use omuda_core::ops::resize::resize_bilinear_composed;
use omuda_core::ops::{cross_entropy, resize_bilinear, CeReduction};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/ops.safetensors"
);

const RESIZE_CASES: [&str; 7] = [
    "up4",
    "down_half",
    "up_nonint",
    "down_nonint",
    "mixed",
    "one_to_5",
    "identity",
];
const CE_CASES: [&str; 2] = ["small", "large"];

/// Tolerance of the f32 paths: |a - b| <= TOL_F32 · max(1, |b|).
const TOL_F32: f64 = 1e-5;
/// Tolerance of the f64 paths (references are computed in f64).
const TOL_F64: f64 = 1e-10;

struct Fixtures(HashMap<String, Tensor>);

impl Fixtures {
    fn load() -> Self {
        let map =
            candle_core::safetensors::load(FIXTURES, &omuda_core::device::test_device().unwrap())
                .unwrap_or_else(|e| panic!("cannot load {FIXTURES}: {e} (run gen_ops.py)"));
        Self(map)
    }

    fn get(&self, key: &str) -> &Tensor {
        self.0
            .get(key)
            .unwrap_or_else(|| panic!("fixture {key} missing from {FIXTURES}"))
    }
}

/// Largest |a - b| / max(1, |b|) over all elements, after checking the shapes.
fn max_err(a: &Tensor, b: &Tensor, what: &str) -> Result<f64> {
    assert_eq!(a.dims(), b.dims(), "{what}: shape");
    let a = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f64::max))
}

fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) -> Result<f64> {
    let err = max_err(a, b, what)?;
    println!("{what}: max err {err:.3e}");
    assert!(err <= tol, "{what}: max err {err:.3e} > {tol:.0e}");
    Ok(err)
}

fn tol(dtype: DType) -> f64 {
    if dtype == DType::F64 {
        TOL_F64
    } else {
        TOL_F32
    }
}

type ResizeFn = fn(&Tensor, usize, usize) -> Result<Tensor>;

/// Forward output and d/dx of (y · g).sum() for every resize fixture.
fn check_resize(f: ResizeFn, path: &str, dtype: DType) -> Result<f64> {
    let fx = Fixtures::load();
    let mut worst = 0f64;
    for case in RESIZE_CASES {
        let key = |k: &str| format!("resize.{case}.{k}");
        let x = Var::from_tensor(&fx.get(&key("x")).to_dtype(dtype)?)?;
        let g = fx.get(&key("g")).to_dtype(dtype)?;
        let (_, _, oh, ow) = fx.get(&key("y")).dims4()?;
        let y = f(x.as_tensor(), oh, ow)?;
        assert_eq!(y.dtype(), dtype);
        let what = format!("{path} {dtype:?} resize {case}");
        worst = worst.max(assert_close(
            &y,
            fx.get(&key("y")),
            tol(dtype),
            &format!("{what} y"),
        )?);
        let grads = (y * &g)?.sum_all()?.backward()?;
        let dx = grads.get(x.as_tensor()).expect("x must get a gradient");
        worst = worst.max(assert_close(
            dx,
            fx.get(&key("dx")),
            tol(dtype),
            &format!("{what} dx"),
        )?);
    }
    Ok(worst)
}

#[test]
fn resize_custom_f32_matches_pytorch() -> Result<()> {
    let err = check_resize(resize_bilinear, "custom", DType::F32)?;
    println!("worst: {err:.3e}");
    Ok(())
}

#[test]
fn resize_custom_f64_matches_pytorch() -> Result<()> {
    let err = check_resize(resize_bilinear, "custom", DType::F64)?;
    println!("worst: {err:.3e}");
    Ok(())
}

#[test]
fn resize_composed_f32_matches_pytorch() -> Result<()> {
    let err = check_resize(resize_bilinear_composed, "composed", DType::F32)?;
    println!("worst: {err:.3e}");
    Ok(())
}

#[test]
fn resize_composed_f64_matches_pytorch() -> Result<()> {
    let err = check_resize(resize_bilinear_composed, "composed", DType::F64)?;
    println!("worst: {err:.3e}");
    Ok(())
}

#[test]
fn resize_non_contiguous_input_matches_pytorch() -> Result<()> {
    // The same input reached through a transposed view must give the same values
    // and the same gradient on both paths.
    let fx = Fixtures::load();
    let x0 = fx.get("resize.down_nonint.x");
    let (_, _, oh, ow) = fx.get("resize.down_nonint.y").dims4()?;
    let g = fx.get("resize.down_nonint.g");
    for (path, f) in [
        ("custom", resize_bilinear as ResizeFn),
        ("composed", resize_bilinear_composed as ResizeFn),
    ] {
        let xt = Var::from_tensor(&x0.transpose(2, 3)?.contiguous()?)?;
        let x = xt.as_tensor().transpose(2, 3)?;
        assert!(!x.is_contiguous());
        let y = f(&x, oh, ow)?;
        let what = format!("{path} non-contiguous");
        assert_close(
            &y,
            fx.get("resize.down_nonint.y"),
            TOL_F32,
            &format!("{what} y"),
        )?;
        let grads = (y * g)?.sum_all()?.backward()?;
        let dx = grads.get(xt.as_tensor()).expect("x must get a gradient");
        let want = fx.get("resize.down_nonint.dx").transpose(2, 3)?;
        assert_close(dx, &want, TOL_F32, &format!("{what} dx"))?;
    }
    Ok(())
}

type CeFn = fn(&Tensor, &Tensor, Option<&Tensor>, CeReduction) -> Result<Tensor>;

/// Loss and d loss / d logits for every CE fixture, both reductions, with and
/// without weights.
fn check_ce(f: CeFn, path: &str, dtype: DType) -> Result<f64> {
    let fx = Fixtures::load();
    let mut worst = 0f64;
    for case in CE_CASES {
        let key = |k: &str| format!("ce.{case}.{k}");
        let labels = fx.get(&key("labels"));
        let weight = fx.get(&key("weight"));
        for (red, rname) in [
            (CeReduction::MeanAll, "mean_all"),
            (CeReduction::MeanValid, "mean_valid"),
        ] {
            for (w, wname) in [(Some(weight), "w"), (None, "nw")] {
                let logits = Var::from_tensor(&fx.get(&key("logits")).to_dtype(dtype)?)?;
                let loss = f(logits.as_tensor(), labels, w, red)?;
                assert_eq!(loss.dims(), [0usize; 0], "loss must be a scalar");
                assert_eq!(loss.dtype(), dtype);
                let what = format!("{path} {dtype:?} ce {case} {rname} {wname}");
                let want = fx.get(&key(&format!("{rname}.{wname}.loss"))).reshape(())?;
                worst = worst.max(assert_close(
                    &loss,
                    &want,
                    tol(dtype),
                    &format!("{what} loss"),
                )?);
                let grads = loss.backward()?;
                let d = grads
                    .get(logits.as_tensor())
                    .expect("logits must get a gradient");
                let want = fx.get(&key(&format!("{rname}.{wname}.dlogits")));
                worst = worst.max(assert_close(
                    d,
                    want,
                    tol(dtype),
                    &format!("{what} dlogits"),
                )?);
            }
        }
    }
    Ok(worst)
}

#[test]
fn ce_fused_f32_matches_pytorch() -> Result<()> {
    let err = check_ce(cross_entropy, "fused", DType::F32)?;
    println!("worst: {err:.3e}");
    Ok(())
}

#[test]
fn ce_fused_f64_matches_pytorch() -> Result<()> {
    let err = check_ce(cross_entropy, "fused", DType::F64)?;
    println!("worst: {err:.3e}");
    Ok(())
}

#[test]
fn ce_composed_f32_matches_pytorch() -> Result<()> {
    let err = check_ce(cross_entropy_composed, "composed", DType::F32)?;
    println!("worst: {err:.3e}");
    Ok(())
}

#[test]
fn ce_composed_f64_matches_pytorch() -> Result<()> {
    let err = check_ce(cross_entropy_composed, "composed", DType::F64)?;
    println!("worst: {err:.3e}");
    Ok(())
}

#[test]
fn ce_per_pixel_matches_pytorch() -> Result<()> {
    let fx = Fixtures::load();
    for case in CE_CASES {
        let key = |k: &str| format!("ce.{case}.{k}");
        let logits = Var::from_tensor(fx.get(&key("logits")))?;
        let labels = fx.get(&key("labels"));
        let per_pixel = cross_entropy_per_pixel(logits.as_tensor(), labels)?;
        let what = format!("per-pixel ce {case}");
        assert_close(&per_pixel, fx.get(&key("per_pixel")), TOL_F32, &what)?;
        // Its sum / (B·H·W) is the unweighted mmseg loss, gradient included.
        let loss = per_pixel.mean_all()?;
        let want = fx.get(&key("mean_all.nw.loss")).reshape(())?;
        assert_close(&loss, &want, TOL_F32, &format!("{what} mean"))?;
        let grads = loss.backward()?;
        let d = grads
            .get(logits.as_tensor())
            .expect("logits must get a gradient");
        let want = fx.get(&key("mean_all.nw.dlogits"));
        assert_close(d, want, TOL_F32, &format!("{what} dlogits"))?;
    }
    Ok(())
}

#[test]
fn ce_fused_and_composed_agree_on_non_contiguous_logits() -> Result<()> {
    // Logits reached through a permuted view (channels-last storage), larger than
    // one kernel chunk so several parallel tasks run.
    let (b, k, h, w) = (2, 19, 48, 96);
    let dev = omuda_core::device::test_device().unwrap();
    let nhwc = Tensor::randn(0f32, 3., (b, h, w, k), &dev)?;
    let labels = Tensor::rand(0f32, 1., (b, h, w), &dev)?
        .affine(k as f64 + 3.0, 0.0)?
        .floor()?
        .to_dtype(DType::U32)?;
    // Values >= k become ignored pixels (~14%).
    let ignore = Tensor::full(255u32, (b, h, w), &dev)?;
    let labels = labels.ge(k as u32)?.where_cond(&ignore, &labels)?;
    let weight = Tensor::rand(0f32, 1., (b, h, w), &dev)?;
    for red in [CeReduction::MeanAll, CeReduction::MeanValid] {
        let mut results = Vec::new();
        for f in [cross_entropy as CeFn, cross_entropy_composed as CeFn] {
            let v = Var::from_tensor(&nhwc)?;
            let logits = v.as_tensor().permute((0, 3, 1, 2))?;
            assert!(!logits.is_contiguous());
            let loss = f(&logits, &labels, Some(&weight), red)?;
            let grads = loss.backward()?;
            let d = grads
                .get(v.as_tensor())
                .expect("logits must get a gradient")
                .clone();
            results.push((loss, d));
        }
        let what = format!("fused vs composed {red:?}");
        assert_close(
            &results[0].0,
            &results[1].0,
            TOL_F32,
            &format!("{what} loss"),
        )?;
        assert_close(
            &results[0].1,
            &results[1].1,
            TOL_F32,
            &format!("{what} dlogits"),
        )?;
    }
    Ok(())
}
