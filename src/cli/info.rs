//! `omuda info`: how this binary was built, and whether the chosen device opens.

use omuda::core::device::{cuda_compiled, DeviceSpec};
use omuda::Result;

pub fn run(device: Option<&str>) -> Result<()> {
    println!("omuda {}", env!("CARGO_PKG_VERSION"));
    println!(
        "backends: cpu{}",
        if cuda_compiled() {
            ", cuda"
        } else {
            " (built without the `cuda` feature)"
        }
    );
    println!("cpu threads: {}", rayon_threads());
    let text = device.unwrap_or("cpu");
    let spec = DeviceSpec::parse(text, "--device")?;
    let dev = spec.open()?;
    // A small op proves the device works, not only that it opened.
    let x = candle_core::Tensor::arange(0f32, 4., &dev)?;
    let s = x.sum_all()?.to_scalar::<f32>()?;
    if s != 6.0 {
        return Err(omuda::Error::msg(format!(
            "device {text}: a test sum gave {s}, expected 6"
        )));
    }
    println!("device {text}: ok ({dev:?})");
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
