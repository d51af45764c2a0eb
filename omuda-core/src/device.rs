//! Choosing the compute device: `cpu`, `cuda` or `cuda:N`, from the command
//! line (`--device`), the config (`device = …`) or, in tests, the
//! `OMUDA_TEST_DEVICE` environment variable.
//!
//! Asking for CUDA from a binary built without the `cuda` feature, or on a
//! machine without an NVIDIA driver or GPU, is an error that says which of
//! the two it is and what to do.

use candle_core::Device;

use crate::{Error, Result};

/// A parsed device request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    /// Parse `cpu`, `cuda` (= `cuda:0`) or `cuda:N`; `origin` names where the
    /// text came from (a flag, a config key) in the error.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let t = text.trim().to_ascii_lowercase();
        if t == "cpu" {
            return Ok(DeviceSpec::Cpu);
        }
        if t == "cuda" || t == "gpu" {
            return Ok(DeviceSpec::Cuda(0));
        }
        if let Some(n) = t.strip_prefix("cuda:") {
            if let Ok(ordinal) = n.parse::<usize>() {
                return Ok(DeviceSpec::Cuda(ordinal));
            }
        }
        Err(Error::Config {
            origin: origin.into(),
            message: format!(
                "device {text:?}: expected \"cpu\", \"cuda\" or \"cuda:N\" (N = GPU ordinal)"
            ),
        })
    }

    /// Open the device.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(ordinal) => open_cuda(ordinal),
        }
    }
}

/// True when this build includes the CUDA backend.
pub const fn cuda_compiled() -> bool {
    cfg!(feature = "cuda")
}

/// Parse and open a device in one call.
pub fn device_from_str(text: &str, origin: &str) -> Result<Device> {
    DeviceSpec::parse(text, origin)?.open()
}

/// The device tests run on: `OMUDA_TEST_DEVICE` (`cpu`, `cuda`, `cuda:N`),
/// CPU when unset. Errors when the variable asks for a device that cannot be
/// opened, so a GPU test run never silently falls back to the CPU.
pub fn test_device() -> Result<Device> {
    match std::env::var("OMUDA_TEST_DEVICE") {
        Ok(v) if !v.trim().is_empty() => device_from_str(&v, "OMUDA_TEST_DEVICE"),
        _ => Ok(Device::Cpu),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| {
        // The driver's message without Candle's backtrace (shown when RUST_BACKTRACE is set).
        let text = match e {
            candle_core::Error::WithBacktrace { inner, .. } => inner.to_string(),
            other => other.to_string(),
        };
        let why = if text.contains("STUB_LIBRARY") || text.contains("NO_DEVICE") || text.contains("stub library") {
            "no NVIDIA driver or GPU was found on this machine"
        } else if text.contains("INVALID_DEVICE") {
            "there is no GPU with this ordinal"
        } else {
            "the CUDA driver reported an error"
        };
        Error::msg(format!(
            "cannot open CUDA device {ordinal}: {why} ({text}); check `nvidia-smi`, or run with --device cpu"
        ))
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(ordinal: usize) -> Result<Device> {
    Err(Error::msg(format!(
        "device cuda:{ordinal} was asked for, but this omuda binary was built without CUDA support; \
         build the CUDA binary with `scripts/cuda-toolchain.sh` and `cargo build --release --features cuda` \
         (docs/cuda.md), or run with --device cpu"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(DeviceSpec::parse("cpu", "x").unwrap(), DeviceSpec::Cpu);
        assert_eq!(DeviceSpec::parse("CUDA", "x").unwrap(), DeviceSpec::Cuda(0));
        assert_eq!(
            DeviceSpec::parse("cuda:3", "x").unwrap(),
            DeviceSpec::Cuda(3)
        );
    }

    #[test]
    fn bad_text_names_origin_and_forms() {
        let e = DeviceSpec::parse("tpu", "--device")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--device") && e.contains("tpu") && e.contains("cuda:N"),
            "{e}"
        );
        assert!(DeviceSpec::parse("cuda:x", "d").is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_from_cpu_build_says_so() {
        let e = device_from_str("cuda", "--device").unwrap_err().to_string();
        assert!(
            e.contains("built without CUDA support") && e.contains("--features cuda"),
            "{e}"
        );
    }
}
