//! `omuda bench --compare-pytorch`: runs `bench/pytorch_reference.py` right
//! after omuda's own measurement (same model, crop, batch, repetitions and
//! thread count) and prints the omuda/PyTorch ratios.
//!
//! The Python is `$OMUDA_TORCH_PYTHON` when set, else `<repo>/.bench-venv`
//! (created with `python3 -m venv` and `pip install torch` when absent or when
//! it cannot import torch).

use std::path::{Path, PathBuf};
use std::process::Command;

use omuda::{Error, Result};
use serde::Deserialize;

/// The variable naming a Python with torch.
pub const PYTHON_ENV: &str = "OMUDA_TORCH_PYTHON";

/// Where the torch Python comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TorchPython {
    /// `$OMUDA_TORCH_PYTHON`, used as given.
    FromEnv(PathBuf),
    /// The local venv's interpreter, which exists already.
    Venv(PathBuf),
    /// No venv yet: create this folder and install torch into it.
    CreateVenv(PathBuf),
}

/// Decides which Python runs the reference: `env` is the value of
/// [`PYTHON_ENV`] (an empty value counts as unset), `repo` the repository root.
pub fn choose_python(env: Option<&str>, repo: &Path) -> Result<TorchPython> {
    if let Some(p) = env.filter(|s| !s.trim().is_empty()) {
        let path = PathBuf::from(p);
        if !path.is_file() {
            return Err(Error::Config {
                origin: PYTHON_ENV.into(),
                message: format!(
                    "{p:?} is not a file; expected the path of a Python interpreter with torch"
                ),
            });
        }
        return Ok(TorchPython::FromEnv(path));
    }
    let venv = repo.join(".bench-venv");
    let python = venv.join("bin").join("python");
    Ok(if python.is_file() {
        TorchPython::Venv(python)
    } else {
        TorchPython::CreateVenv(venv)
    })
}

/// The repository root holding `bench/pytorch_reference.py`: the source tree the
/// binary was built from, else the current folder.
pub fn repo_root() -> Result<PathBuf> {
    let candidates = [
        PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        PathBuf::from("."),
    ];
    candidates
        .into_iter()
        .find(|d| d.join("bench/pytorch_reference.py").is_file())
        .ok_or_else(|| Error::Config {
            origin: "omuda bench --compare-pytorch".into(),
            message: format!(
                "bench/pytorch_reference.py not found under {} or the current folder",
                env!("CARGO_MANIFEST_DIR")
            ),
        })
}

fn run_checked(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .map_err(|e| Error::msg(format!("{what}: cannot start: {e}")))?;
    if !status.success() {
        return Err(Error::msg(format!("{what}: failed ({status})")));
    }
    Ok(())
}

fn imports_torch(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import torch"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A Python that imports torch, installing it into the local venv if needed.
pub fn torch_python(repo: &Path) -> Result<PathBuf> {
    let env = std::env::var(PYTHON_ENV).ok();
    let python = match choose_python(env.as_deref(), repo)? {
        TorchPython::FromEnv(p) => {
            if !imports_torch(&p) {
                return Err(Error::Config {
                    origin: PYTHON_ENV.into(),
                    message: format!("{} cannot `import torch`", p.display()),
                });
            }
            return Ok(p);
        }
        TorchPython::Venv(p) => p,
        TorchPython::CreateVenv(dir) => {
            eprintln!("bench: creating {} (python3 -m venv)", dir.display());
            run_checked(
                Command::new("python3").arg("-m").arg("venv").arg(&dir),
                "python3 -m venv",
            )?;
            dir.join("bin").join("python")
        }
    };
    if !imports_torch(&python) {
        eprintln!(
            "bench: installing torch into {} (pip install torch)",
            python.display()
        );
        run_checked(
            Command::new(&python).args(["-m", "pip", "install", "torch"]),
            "pip install torch",
        )?;
    }
    Ok(python)
}

/// The fields of the reference's JSON report that the ratios need.
#[derive(Debug, Deserialize)]
pub struct TorchReport {
    pub framework: String,
    pub parameters: usize,
    pub threads: usize,
    pub eval_forward_s: f64,
    pub train_step_s: f64,
    pub uda_iteration_s: Option<f64>,
    pub peak_rss_mib: f64,
    pub cpu_s: TorchCpu,
}

/// Median process CPU times of the reference's measurements, s.
#[derive(Debug, Deserialize, serde::Serialize)]
pub struct TorchCpu {
    pub eval_forward: f64,
    pub train_step: f64,
    pub uda_iteration: Option<f64>,
}

/// Arguments of one reference run.
pub struct TorchRun<'a> {
    pub model: &'a str,
    pub crop: [usize; 2],
    pub batch: usize,
    pub iters: usize,
    pub warmup: usize,
    pub threads: usize,
    pub classes: usize,
    pub no_uda: bool,
}

/// Runs the reference script and reads its JSON report.
pub fn run_reference(
    python: &Path,
    repo: &Path,
    run: &TorchRun,
    json: &Path,
) -> Result<TorchReport> {
    let mut cmd = Command::new(python);
    cmd.arg(repo.join("bench/pytorch_reference.py"))
        .args(["--model", run.model])
        .args(["--crop", &format!("{}x{}", run.crop[0], run.crop[1])])
        .args(["--batch", &run.batch.to_string()])
        .args(["--iters", &run.iters.to_string()])
        .args(["--warmup", &run.warmup.to_string()])
        .args(["--threads", &run.threads.to_string()])
        .args(["--classes", &run.classes.to_string()])
        .arg("--json")
        .arg(json);
    if run.no_uda {
        cmd.arg("--no-uda");
    }
    // OpenMP threads as many as omuda's rayon pool, and no GPU. Idle OpenMP
    // workers sleep instead of spinning (unless the caller chose otherwise), as
    // omuda's own pool does (`CANDLE_BARRIER_POOL_SPIN_LIMIT=0`): on a shared
    // machine spinning workers make PyTorch's step several times slower.
    cmd.env("OMP_NUM_THREADS", run.threads.to_string())
        .env("CUDA_VISIBLE_DEVICES", "");
    if std::env::var_os("OMP_WAIT_POLICY").is_none() {
        cmd.env("OMP_WAIT_POLICY", "PASSIVE");
    }
    run_checked(&mut cmd, "bench/pytorch_reference.py")?;
    let text = std::fs::read_to_string(json).map_err(|e| Error::file(json, e.to_string()))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::file(json, format!("not a reference report: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_choice_env_then_venv_then_create() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path();
        // Nothing there: create the venv.
        assert_eq!(
            choose_python(None, repo).unwrap(),
            TorchPython::CreateVenv(repo.join(".bench-venv"))
        );
        assert_eq!(
            choose_python(Some("  "), repo).unwrap(),
            TorchPython::CreateVenv(repo.join(".bench-venv"))
        );
        // A venv with an interpreter: use it.
        let py = repo.join(".bench-venv/bin/python");
        std::fs::create_dir_all(py.parent().unwrap()).unwrap();
        std::fs::write(&py, "").unwrap();
        assert_eq!(
            choose_python(None, repo).unwrap(),
            TorchPython::Venv(py.clone())
        );
        // The variable wins over the venv.
        let other = repo.join("my-python");
        std::fs::write(&other, "").unwrap();
        let got = choose_python(Some(other.to_str().unwrap()), repo).unwrap();
        assert_eq!(got, TorchPython::FromEnv(other));
        // A variable naming nothing is an error naming the variable.
        let err = choose_python(Some("/no/such/python"), repo)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(PYTHON_ENV) && err.contains("/no/such/python"),
            "{err}"
        );
    }
}
