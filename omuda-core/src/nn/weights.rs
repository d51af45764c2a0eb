//! Pretrained weights: where they come from, how their names map onto the
//! model's, and a strict load that names every tensor that does not fit.
//!
//! Sources ([`WeightSource`]):
//! - `hf:org/name[/file.safetensors][@revision]`: a file of a Hugging Face model
//!   repository (default `model.safetensors`, revision `main`). It is looked up
//!   in the hub cache first (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//!   `~/.cache/huggingface/hub`, the layout `models--org--name/snapshots/<commit>/file`
//!   with `refs/<revision>` holding the commit) and downloaded through `hf-hub`
//!   only when absent and `HF_HUB_OFFLINE` is not set;
//! - `builtin:NAME`: weights shipped inside the binary ([`BUILTIN_WEIGHTS`]);
//! - `none`: no weights (the network keeps its seeded initialisation);
//! - anything else: a local `.safetensors` file.
//!
//! Only safetensors are read, recognised by their structure (an 8-byte header
//! length and a JSON header of that length). PyTorch pickles (`.pth`, `.bin`)
//! are refused with the one-line conversion command ([`PTH_CONVERSION`]).
//!
//! Name mapping ([`map_checkpoint`]): the model's names are the published
//! Hugging Face layout for MiT / SegFormer and the mmseg layout for the DAFormer
//! and DLV2 heads and ResNet. Also accepted, and renamed:
//! - original SegFormer / mmseg MiT names, with or without `backbone.`:
//!   `patch_embed1.proj` → `segformer.encoder.patch_embeddings.0.proj`,
//!   `block1.0.attn.q` → `…block.0.0.attention.self.query`, `attn.kv` (key and
//!   value stacked) → `attention.self.key` + `attention.self.value`,
//!   `attn.proj`, `attn.sr`, `attn.norm`, `norm1`/`norm2`, `mlp.fc1`/`fc2`,
//!   stage `norm1..4` → `segformer.encoder.layer_norm.0..3`;
//! - mmseg SegFormer head: `decode_head.linear_c1..4`, `linear_fuse.conv`,
//!   `linear_fuse.bn`, `linear_pred`;
//! - `transformers` ≥ 5 in-memory names (`segformer.stages.0.blocks.0.attention.q_proj` …);
//! - ResNet names without `backbone.` (open-mmlab / torchvision: `stem.0`,
//!   `layer1.0.conv1`, `conv1`, `bn1`);
//! - wrappers: `module.` and `model.` are stripped; `ema_model.*` and
//!   `imnet_model.*` of DAFormer UDA checkpoints are ignored, as are ImageNet
//!   classifiers (`classifier.*`, `head.*`, `fc.*` at top level).
//!
//! Loading ([`plan_load`], [`load_into`]): every model tensor must come from the
//! file, with its shape, and every file tensor must be used; a checkpoint with no
//! `decode_head.*` tensor is a backbone checkpoint and leaves the head at its
//! initialisation. Integer tensors are accepted for buffers alone (BatchNorm
//! `num_batches_tracked`, int64 in PyTorch) and cast to the model's dtype; an
//! integer or boolean tensor for a float parameter, and any non-finite value,
//! is an error naming the file and the tensor, strict or not.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{bail, DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::model::ModelConfig;
use super::segmentor::build_segmentor;

/// The one-line command that converts a PyTorch checkpoint to safetensors.
pub const PTH_CONVERSION: &str = "python -c \"import sys,torch; from safetensors.torch import save_file; sd=torch.load(sys.argv[1],map_location='cpu',weights_only=True); sd=sd.get('state_dict',sd); save_file({k:v.clone().contiguous() for k,v in sd.items() if torch.is_tensor(v)},sys.argv[2])\" in.pth out.safetensors";

/// Where pretrained weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightSource {
    /// A file of a Hugging Face model repository.
    Hub {
        repo: String,
        file: String,
        revision: String,
    },
    /// A local safetensors file.
    File(PathBuf),
    /// Weights shipped inside the binary: a name of [`BUILTIN_WEIGHTS`].
    Builtin(&'static str),
}

/// The weights every network of the built-in benchmark starts from: the tiny
/// MiT encoder pretrained by `omuda pretrain` (shipped in the binary).
pub const BUILTIN_ENCODER: &str = "builtin:mit_tiny_synth";

/// Weights shipped inside the binary, by `builtin:` name: the encoder that
/// `omuda pretrain` trains on the built-in pretraining set, which every
/// `synth-*` preset starts from (`assets/pretrained/`, docs/datasets.md).
pub const BUILTIN_WEIGHTS: &[(&str, &[u8])] = &[(
    "mit_tiny_synth",
    include_bytes!("../../../assets/pretrained/mit_tiny_synth.safetensors"),
)];

impl WeightSource {
    /// `hf:org/name[/file][@revision]`, `builtin:NAME` or a path. (`none`
    /// is handled by the callers: it is no source.)
    pub fn parse(spec: &str) -> Result<Self> {
        if let Some(name) = spec.strip_prefix("builtin:") {
            return match BUILTIN_WEIGHTS.iter().find(|(n, _)| *n == name) {
                Some((n, _)) => Ok(WeightSource::Builtin(n)),
                None => bail!(
                    "weights {spec:?}: no built-in weights of that name (built in: {})",
                    BUILTIN_WEIGHTS
                        .iter()
                        .map(|(n, _)| format!("builtin:{n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
        }
        let Some(rest) = spec.strip_prefix("hf:") else {
            if spec.is_empty() {
                bail!("weights: empty path");
            }
            return Ok(WeightSource::File(PathBuf::from(spec)));
        };
        let (path, revision) = match rest.split_once('@') {
            Some((p, r)) if !r.is_empty() => (p, r.to_string()),
            Some(_) => bail!("weights {spec:?}: empty revision after '@'"),
            None => (rest, "main".to_string()),
        };
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() < 2 || parts[..2].iter().any(|p| p.is_empty()) {
            bail!("weights {spec:?}: expected hf:org/name[/file.safetensors][@revision]");
        }
        let file = if parts.len() > 2 {
            parts[2..].join("/")
        } else {
            "model.safetensors".to_string()
        };
        Ok(WeightSource::Hub {
            repo: format!("{}/{}", parts[0], parts[1]),
            file,
            revision,
        })
    }

    /// The local file: the path itself, or the hub file (cache first, then
    /// download). Built-in weights have none: use [`WeightSource::read`].
    pub fn resolve(&self) -> Result<PathBuf> {
        match self {
            WeightSource::File(p) => Ok(p.clone()),
            WeightSource::Builtin(n) => {
                bail!("weights builtin:{n} are inside the binary, not a file")
            }
            WeightSource::Hub {
                repo,
                file,
                revision,
            } => resolve_hub_file(&hub_cache_dir(), repo, file, revision, hub_offline()),
        }
    }

    /// The tensors of the source, sorted by name ([`read_safetensors`]).
    pub fn read(&self) -> Result<Vec<(String, Tensor)>> {
        match self {
            WeightSource::Builtin(n) => {
                let bytes = BUILTIN_WEIGHTS
                    .iter()
                    .find(|(m, _)| m == n)
                    .map(|(_, b)| *b)
                    .unwrap_or_default();
                safetensors_from_bytes(bytes, &format!("builtin:{n}"))
            }
            _ => read_safetensors(&self.resolve()?),
        }
    }
}

impl std::fmt::Display for WeightSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeightSource::File(p) => write!(f, "{}", p.display()),
            WeightSource::Builtin(n) => write!(f, "builtin:{n}"),
            WeightSource::Hub {
                repo,
                file,
                revision,
            } => write!(f, "hf:{repo}/{file}@{revision}"),
        }
    }
}

/// The hub cache folder: `$HF_HUB_CACHE`, else hf-hub's (`$HF_HOME/hub` or
/// `~/.cache/huggingface/hub`).
pub fn hub_cache_dir() -> PathBuf {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => hf_hub::Cache::from_env().path().clone(),
    }
}

/// `HF_HUB_OFFLINE` is set to a true value.
pub fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// The cached copy of `file` in `cache` (`models--org--name/snapshots/<commit>/file`,
/// where `refs/<revision>` names the commit, or `revision` is the commit itself).
pub fn cached_hub_file(cache: &Path, repo: &str, file: &str, revision: &str) -> Option<PathBuf> {
    let root = cache.join(hf_hub::Repo::model(repo.to_string()).folder_name());
    let commit = std::fs::read_to_string(root.join("refs").join(revision))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| revision.to_string());
    let p = root.join("snapshots").join(commit).join(file);
    p.is_file().then_some(p)
}

/// The local path of a hub file: from `cache`, else (unless `offline`) downloaded
/// into it by `hf-hub`.
pub fn resolve_hub_file(
    cache: &Path,
    repo: &str,
    file: &str,
    revision: &str,
    offline: bool,
) -> Result<PathBuf> {
    if let Some(p) = cached_hub_file(cache, repo, file, revision) {
        return Ok(p);
    }
    if offline {
        bail!(
            "weights hf:{repo}/{file}@{revision}: not in the hub cache {} and HF_HUB_OFFLINE is set",
            cache.display()
        );
    }
    let mut builder =
        hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(cache.to_path_buf()))
            .with_progress(true);
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint);
    }
    let api = builder
        .build()
        .map_err(|e| candle_core::Error::Msg(format!("weights hf:{repo}: hub client: {e}")))?;
    let repo_h = hf_hub::Repo::with_revision(
        repo.to_string(),
        hf_hub::RepoType::Model,
        revision.to_string(),
    );
    api.repo(repo_h).get(file).map_err(|e| {
        candle_core::Error::Msg(format!(
            "weights hf:{repo}/{file}@{revision}: download failed: {e} (cache {}; a repository without safetensors can be converted with: {PTH_CONVERSION})",
            cache.display()
        ))
    })
}

/// All tensors of a safetensors file, sorted by name. PyTorch pickles are
/// refused with the conversion command.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path)
        .map_err(|e| candle_core::Error::Msg(format!("weights {}: {e}", path.display())))?;
    safetensors_from_bytes(&bytes, &path.display().to_string())
}

/// What a file's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsFormat {
    /// An 8-byte little-endian header length `n`, then `n` bytes of a JSON object.
    Safetensors,
    /// A PyTorch checkpoint: a zip archive (`torch.save` since 1.6) or a
    /// pickle (protocol marker 0x80 followed by the protocol 2–5).
    PyTorch,
    Unknown,
}

/// The format of `bytes`, by structure: the safetensors header is checked
/// first (its first byte is the low byte of the header length and can be
/// anything, 0x80 included), the PyTorch signatures only when it fails.
pub fn detect_format(bytes: &[u8]) -> WeightsFormat {
    if bytes.len() >= 8 {
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[..8]);
        let n = u64::from_le_bytes(len);
        let header = usize::try_from(n)
            .ok()
            .and_then(|n| bytes.get(8..8usize.checked_add(n)?));
        if let Some(h) = header {
            if matches!(
                serde_json::from_slice::<serde_json::Value>(h),
                Ok(serde_json::Value::Object(_))
            ) {
                return WeightsFormat::Safetensors;
            }
        }
    }
    let zip = bytes.starts_with(b"PK\x03\x04");
    let pickle = bytes.len() >= 2 && bytes[0] == 0x80 && (2..=5).contains(&bytes[1]);
    if zip || pickle {
        WeightsFormat::PyTorch
    } else {
        WeightsFormat::Unknown
    }
}

/// The tensors of a safetensors file's bytes, sorted by name; `what` names
/// the file in errors.
pub fn safetensors_from_bytes(bytes: &[u8], what: &str) -> Result<Vec<(String, Tensor)>> {
    match detect_format(bytes) {
        WeightsFormat::Safetensors => {}
        WeightsFormat::PyTorch => bail!(
            "weights {what}: a PyTorch pickle checkpoint; only safetensors are read. Convert it with:\n  {PTH_CONVERSION}"
        ),
        WeightsFormat::Unknown => bail!(
            "weights {what}: not a safetensors file (expected an 8-byte header length followed by a JSON header)"
        ),
    }
    let map = candle_core::safetensors::load_buffer(bytes, &candle_core::Device::Cpu)
        .map_err(|e| candle_core::Error::Msg(format!("weights {what}: {e}")))?;
    let mut v: Vec<(String, Tensor)> = map.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

/// What one file name becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameMap {
    /// The model name.
    To(String),
    /// Stacked key/value projection: first half of dim 0 → `key`, second → `value`.
    SplitKv { key: String, value: String },
    /// Not a model tensor, for the given reason.
    Ignore(&'static str),
}

/// The first stage digit 1..=4 of `s` and the rest after `sep`.
fn stage_num<'a>(s: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let rest = s.strip_prefix(prefix)?;
    let d = rest.chars().next()?.to_digit(10)? as usize;
    if !(1..=4).contains(&d) {
        return None;
    }
    Some((d - 1, rest.get(1..)?))
}

/// Original MiT block-internal names → Hugging Face names.
fn mit_block_rest(rest: &str) -> Option<NameMap> {
    const TABLE: [(&str, &str); 10] = [
        ("norm1.", "layer_norm_1."),
        ("norm2.", "layer_norm_2."),
        ("attn.q.", "attention.self.query."),
        ("attn.proj.", "attention.output.dense."),
        ("attn.sr.", "attention.self.sr."),
        ("attn.norm.", "attention.self.layer_norm."),
        ("mlp.fc1.", "mlp.dense1."),
        ("mlp.fc2.", "mlp.dense2."),
        ("mlp.dwconv.dwconv.", "mlp.dwconv.dwconv."),
        ("attn.kv.", ""),
    ];
    for (from, to) in TABLE {
        if let Some(t) = rest.strip_prefix(from) {
            if from == "attn.kv." {
                return Some(NameMap::SplitKv {
                    key: format!("attention.self.key.{t}"),
                    value: format!("attention.self.value.{t}"),
                });
            }
            return Some(NameMap::To(format!("{to}{t}")));
        }
    }
    None
}

/// Original SegFormer / mmseg MiT name (without `backbone.`) → model name.
fn map_mit_original(n: &str) -> Option<NameMap> {
    const ENC: &str = "segformer.encoder.";
    if let Some((i, rest)) = stage_num(n, "patch_embed") {
        let rest = rest.strip_prefix('.')?;
        if let Some(t) = rest.strip_prefix("proj.") {
            return Some(NameMap::To(format!("{ENC}patch_embeddings.{i}.proj.{t}")));
        }
        if let Some(t) = rest.strip_prefix("norm.") {
            return Some(NameMap::To(format!(
                "{ENC}patch_embeddings.{i}.layer_norm.{t}"
            )));
        }
        return None;
    }
    if let Some((i, rest)) = stage_num(n, "block") {
        let rest = rest.strip_prefix('.')?;
        let (j, inner) = rest.split_once('.')?;
        j.parse::<usize>().ok()?;
        let p = format!("{ENC}block.{i}.{j}.");
        return Some(match mit_block_rest(inner)? {
            NameMap::To(t) => NameMap::To(format!("{p}{t}")),
            NameMap::SplitKv { key, value } => NameMap::SplitKv {
                key: format!("{p}{key}"),
                value: format!("{p}{value}"),
            },
            other => other,
        });
    }
    if let Some((i, rest)) = stage_num(n, "norm") {
        let t = rest.strip_prefix('.')?;
        return Some(NameMap::To(format!("{ENC}layer_norm.{i}.{t}")));
    }
    None
}

/// `transformers` ≥ 5 in-memory MiT names → published names.
fn map_hf5(n: &str) -> Option<String> {
    let rest = n.strip_prefix("segformer.stages.")?;
    let (i, rest) = rest.split_once('.')?;
    i.parse::<usize>().ok()?;
    let enc = "segformer.encoder.";
    if let Some(t) = rest.strip_prefix("patch_embeddings.") {
        return Some(format!("{enc}patch_embeddings.{i}.{t}"));
    }
    if let Some(t) = rest.strip_prefix("layer_norm.") {
        return Some(format!("{enc}layer_norm.{i}.{t}"));
    }
    let t = rest.strip_prefix("blocks.")?;
    const TABLE: [(&str, &str); 11] = [
        ("attention.q_proj.", "attention.self.query."),
        ("attention.k_proj.", "attention.self.key."),
        ("attention.v_proj.", "attention.self.value."),
        ("attention.o_proj.", "attention.output.dense."),
        (
            "attention.sequence_reduction.sequence_reduction.",
            "attention.self.sr.",
        ),
        (
            "attention.sequence_reduction.layer_norm.",
            "attention.self.layer_norm.",
        ),
        ("mlp.fc1.", "mlp.dense1."),
        ("mlp.fc2.", "mlp.dense2."),
        ("layernorm_before.", "layer_norm_1."),
        ("layernorm_after.", "layer_norm_2."),
        ("mlp.dwconv.", "mlp.dwconv."),
    ];
    let (j, inner) = t.split_once('.')?;
    for (from, to) in TABLE {
        if let Some(x) = inner.strip_prefix(from) {
            return Some(format!("{enc}block.{i}.{j}.{to}{x}"));
        }
    }
    None
}

/// mmseg SegFormer head names → Hugging Face names.
fn map_segformer_head(n: &str) -> Option<String> {
    let rest = n.strip_prefix("decode_head.")?;
    if let Some((i, t)) = stage_num(rest, "linear_c") {
        return Some(format!("decode_head.linear_c.{i}{t}"));
    }
    if let Some(t) = rest.strip_prefix("linear_projections.") {
        return Some(format!("decode_head.linear_c.{t}"));
    }
    if rest == "linear_fuse.conv.weight" {
        return Some("decode_head.linear_fuse.weight".into());
    }
    if let Some(t) = rest.strip_prefix("linear_fuse.bn.") {
        return Some(format!("decode_head.batch_norm.{t}"));
    }
    if let Some(t) = rest.strip_prefix("linear_pred.") {
        return Some(format!("decode_head.classifier.{t}"));
    }
    None
}

/// True for ResNet names (`stem.`, `layer1.`…`layer4.`, `conv1.`, `bn1.`).
fn is_resnet_name(n: &str) -> bool {
    n.starts_with("stem.")
        || n.starts_with("conv1.")
        || n.starts_with("bn1.")
        || stage_num(n, "layer").is_some_and(|(_, r)| r.starts_with('.'))
}

/// The model name(s) of one checkpoint name.
pub fn map_name(name: &str) -> NameMap {
    let mut n = name;
    for wrapper in ["module.", "model."] {
        if let Some(r) = n.strip_prefix(wrapper) {
            n = r;
        }
    }
    if n.starts_with("ema_model.") || n.starts_with("imnet_model.") {
        return NameMap::Ignore("EMA teacher / ImageNet copy of a UDA checkpoint");
    }
    if matches!(
        n,
        "classifier.weight"
            | "classifier.bias"
            | "head.weight"
            | "head.bias"
            | "fc.weight"
            | "fc.bias"
    ) {
        return NameMap::Ignore("ImageNet classification head");
    }
    // HRDA (`mmseg/models/decode_heads/hrda_head.py::HRDAHead`) wraps the
    // DAFormer head as `decode_head.head`; its scale-attention head is
    // `decode_head.scale_attention`, as ours.
    if let Some(rest) = n.strip_prefix("decode_head.head.") {
        return NameMap::To(format!("decode_head.{rest}"));
    }
    if let Some(m) = map_hf5(n) {
        return NameMap::To(m);
    }
    if let Some(m) = map_segformer_head(n) {
        return NameMap::To(m);
    }
    let bare = n.strip_prefix("backbone.").unwrap_or(n);
    if let Some(m) = map_mit_original(bare) {
        return m;
    }
    if is_resnet_name(bare) {
        return NameMap::To(format!("backbone.{bare}"));
    }
    NameMap::To(n.to_string())
}

/// One tensor of a checkpoint under its model name.
#[derive(Debug, Clone)]
pub struct MappedTensor {
    /// Name in the file.
    pub source: String,
    /// Name in the model.
    pub target: String,
    pub tensor: Tensor,
}

/// File tensors skipped on purpose: (file name, reason).
pub type Ignored = Vec<(String, &'static str)>;

/// A checkpoint's tensors under model names, and the ignored ones with the reason.
pub fn map_checkpoint(tensors: Vec<(String, Tensor)>) -> Result<(Vec<MappedTensor>, Ignored)> {
    let mut mapped = Vec::with_capacity(tensors.len());
    let mut ignored = Vec::new();
    for (source, tensor) in tensors {
        match map_name(&source) {
            NameMap::To(target) => mapped.push(MappedTensor {
                source,
                target,
                tensor,
            }),
            NameMap::SplitKv { key, value } => {
                let n = tensor.dim(0)?;
                if n % 2 != 0 {
                    bail!(
                        "weights: {source} stacks key and value, but its first dimension {n} (shape {:?}) is odd",
                        tensor.dims()
                    );
                }
                let h = n / 2;
                mapped.push(MappedTensor {
                    source: source.clone(),
                    target: key,
                    tensor: tensor.narrow(0, 0, h)?.contiguous()?,
                });
                mapped.push(MappedTensor {
                    source,
                    target: value,
                    tensor: tensor.narrow(0, h, h)?.contiguous()?,
                });
            }
            NameMap::Ignore(why) => ignored.push((source, why)),
        }
    }
    Ok((mapped, ignored))
}

/// What a load does, tensor by tensor.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// The weights, as given.
    pub source: String,
    /// Model tensors that receive a file tensor: (model name, file name).
    pub loaded: Vec<(String, String)>,
    /// Model tensors the file lacks: (name, model shape).
    pub missing: Vec<(String, Vec<usize>)>,
    /// File tensors the model does not use: (file name, mapped name, shape, reason).
    pub unexpected: Vec<(String, String, Vec<usize>, String)>,
    /// (model name, file name, model shape, file shape).
    pub mismatched: Vec<(String, String, Vec<usize>, Vec<usize>)>,
    /// File tensors skipped on purpose: (file name, reason).
    pub ignored: Ignored,
    /// Decode-head tensors kept at their initial values (backbone checkpoint).
    pub head_kept: Vec<String>,
    /// File tensors whose values cannot be parameters: (file name, what is
    /// wrong): non-finite values, or an integer or boolean tensor where the
    /// model has a float parameter. Always an error, strict or not.
    pub bad_values: Vec<(String, String)>,
}

impl LoadReport {
    /// Number of missing, unexpected, shape-mismatched and bad-valued tensors.
    pub fn problem_count(&self) -> usize {
        self.missing.len() + self.unexpected.len() + self.mismatched.len() + self.bad_values.len()
    }

    /// One line per problem.
    pub fn problems(&self) -> String {
        let mut s = String::new();
        for (n, why) in &self.bad_values {
            s.push_str(&format!("  values      {n}: {why}\n"));
        }
        for (n, shape) in &self.missing {
            s.push_str(&format!(
                "  missing     {n} (model shape {shape:?}): not in the file\n"
            ));
        }
        for (src, tgt, shape, why) in &self.unexpected {
            let as_name = if src == tgt {
                String::new()
            } else {
                format!(" (read as {tgt})")
            };
            s.push_str(&format!(
                "  unexpected  {src}{as_name} (file shape {shape:?}): {why}\n"
            ));
        }
        for (tgt, src, m, f) in &self.mismatched {
            let from = if src == tgt {
                String::new()
            } else {
                format!(" (file name {src})")
            };
            s.push_str(&format!(
                "  shape       {tgt}{from}: model {m:?}, file {f:?}\n"
            ));
        }
        s
    }

    /// A short summary for logs.
    pub fn summary(&self) -> String {
        let renamed = self.loaded.iter().filter(|(t, s)| t != s).count();
        let mut s = format!(
            "weights {}: loaded {} tensors ({renamed} renamed), {} missing, {} unexpected, {} shape mismatches, {} ignored",
            self.source,
            self.loaded.len(),
            self.missing.len(),
            self.unexpected.len(),
            self.mismatched.len(),
            self.ignored.len()
        );
        if !self.head_kept.is_empty() {
            s.push_str(&format!(
                "; backbone checkpoint: {} decode-head tensors keep their initial values",
                self.head_kept.len()
            ));
        }
        s
    }
}

/// Matches a mapped checkpoint against the model's tensors (name → shape)
/// without changing anything.
pub fn plan_load(
    source: &str,
    model: &BTreeMap<String, Vec<usize>>,
    mapped: &[MappedTensor],
    ignored: Ignored,
) -> LoadReport {
    let mut report = LoadReport {
        source: source.to_string(),
        ignored,
        ..LoadReport::default()
    };
    let has_head = mapped.iter().any(|m| m.target.starts_with("decode_head."));
    let mut taken: HashMap<&str, &str> = HashMap::new();
    for m in mapped {
        let shape = m.tensor.dims().to_vec();
        match model.get(&m.target) {
            None => report.unexpected.push((
                m.source.clone(),
                m.target.clone(),
                shape,
                "no tensor of the model has this name".into(),
            )),
            Some(_) if taken.contains_key(m.target.as_str()) => report.unexpected.push((
                m.source.clone(),
                m.target.clone(),
                shape,
                format!(
                    "duplicate: {} already provides it",
                    taken[m.target.as_str()]
                ),
            )),
            Some(want) if *want != shape => {
                taken.insert(&m.target, &m.source);
                report
                    .mismatched
                    .push((m.target.clone(), m.source.clone(), want.clone(), shape))
            }
            Some(_) => {
                taken.insert(&m.target, &m.source);
                report.loaded.push((m.target.clone(), m.source.clone()));
                if let Some(why) = bad_values(&m.target, &m.tensor) {
                    report.bad_values.push((m.source.clone(), why));
                }
            }
        }
    }
    for (name, shape) in model {
        if taken.contains_key(name.as_str()) {
            continue;
        }
        if !has_head && name.starts_with("decode_head.") {
            report.head_kept.push(name.clone());
        } else {
            report.missing.push((name.clone(), shape.clone()));
        }
    }
    report
}

/// Why `t` cannot be the value of model tensor `target`, if it cannot: an
/// integer or boolean tensor for a float parameter (buffers such as
/// `num_batches_tracked` may be integers), or non-finite values.
fn bad_values(target: &str, t: &Tensor) -> Option<String> {
    if !t.dtype().is_float() {
        return (!super::is_buffer(target)).then(|| {
            format!(
                "a {:?} tensor where the model has a float parameter",
                t.dtype()
            )
        });
    }
    let values = match t
        .to_dtype(DType::F32)
        .and_then(|v| v.flatten_all()?.to_vec1::<f32>())
    {
        Ok(v) => v,
        Err(e) => return Some(format!("cannot be read as f32: {e}")),
    };
    let nan = values.iter().filter(|v| v.is_nan()).count();
    let inf = values.iter().filter(|v| v.is_infinite()).count();
    (nan + inf > 0).then(|| {
        format!(
            "{nan} NaN and {inf} infinite value(s) among {}",
            values.len()
        )
    })
}

/// Name → shape of every tensor of `vars`.
pub fn var_shapes(vars: &VarMap) -> Result<BTreeMap<String, Vec<usize>>> {
    let data = vars
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
    Ok(data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().dims().to_vec()))
        .collect())
}

/// Name → shape of every tensor of the model `cfg` names (built once on the CPU).
pub fn model_tensor_shapes(cfg: &ModelConfig) -> Result<BTreeMap<String, Vec<usize>>> {
    let vars = VarMap::new();
    build_segmentor(
        cfg,
        VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
    )?;
    var_shapes(&vars)
}

/// Loads `tensors` (a checkpoint's, with file names) into `vars`. With `strict`,
/// any missing, unexpected or shape-mismatched tensor is an error naming each
/// one, and nothing is changed; otherwise the tensors that fit are loaded and the
/// report lists the rest. `what` names the model in messages.
pub fn load_into(
    vars: &VarMap,
    tensors: Vec<(String, Tensor)>,
    source: &str,
    what: &str,
    strict: bool,
) -> Result<LoadReport> {
    let (mapped, ignored) = map_checkpoint(tensors)?;
    let report = plan_load(source, &var_shapes(vars)?, &mapped, ignored);
    if !report.bad_values.is_empty() {
        let list: String = report
            .bad_values
            .iter()
            .map(|(n, why)| format!("\n  {n}: {why}"))
            .collect();
        bail!(
            "weights {source}: {} tensor(s) cannot be loaded into model {what}:{list}",
            report.bad_values.len()
        );
    }
    if strict && report.problem_count() > 0 {
        bail!(
            "weights {source} do not fit model {what}: {} problem(s)\n{}set `model.strict = false` to load the {} tensors that fit and keep the initial values of the others",
            report.problem_count(),
            report.problems(),
            report.loaded.len()
        );
    }
    // The first file tensor of each model name is the one `plan_load` took.
    let mut by_target: HashMap<&str, &MappedTensor> = HashMap::new();
    for m in &mapped {
        by_target.entry(m.target.as_str()).or_insert(m);
    }
    let data = vars
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
    for (target, source_name) in &report.loaded {
        let (Some(var), Some(m)) = (data.get(target), by_target.get(target.as_str())) else {
            bail!(
                "weights {source}: internal error, {target} ({source_name}) vanished while loading"
            );
        };
        let t = m.tensor.to_dtype(var.dtype())?.to_device(var.device())?;
        var.set(&t).map_err(|e| {
            candle_core::Error::Msg(format!(
                "weights {source}: setting {target} from {source_name}: {e}"
            ))
        })?;
    }
    Ok(report)
}

/// The network of `cfg` as a run starts it: the seeded initialisation of
/// `seed` (see [`super::seeded_var_builder`]), then the pretrained
/// `model.weights` if set. The student, the EMA teacher and every frozen copy
/// of the initial network (feature distance, FDM) are built by this one
/// function, so they start from the same weights.
pub fn build_initial(
    cfg: &ModelConfig,
    seed: u64,
    device: &Device,
) -> Result<(Box<dyn super::SegModel>, VarMap, Option<LoadReport>)> {
    let vars = VarMap::new();
    let model = build_segmentor(
        cfg,
        super::seeded_var_builder(&vars, seed, DType::F32, device),
    )?;
    let report = apply_model_weights(cfg, &vars)?;
    Ok((model, vars, report))
}

/// Loads `cfg.weights` (if any) into the model variables `vars` with
/// `cfg.strict`. Returns the report, `None` when no weights are configured.
pub fn apply_model_weights(cfg: &ModelConfig, vars: &VarMap) -> Result<Option<LoadReport>> {
    let Some(spec) = cfg.weights.as_deref().filter(|s| *s != "none") else {
        return Ok(None);
    };
    let tensors = WeightSource::parse(spec)?.read()?;
    load_into(vars, tensors, spec, &cfg.name, cfg.strict).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(n: &str) -> String {
        match map_name(n) {
            NameMap::To(t) => t,
            other => panic!("{n}: {other:?}"),
        }
    }

    #[test]
    fn original_mit_names() {
        assert_eq!(
            to("backbone.patch_embed1.proj.weight"),
            "segformer.encoder.patch_embeddings.0.proj.weight"
        );
        assert_eq!(
            to("patch_embed4.norm.bias"),
            "segformer.encoder.patch_embeddings.3.layer_norm.bias"
        );
        assert_eq!(
            to("block2.11.attn.q.weight"),
            "segformer.encoder.block.1.11.attention.self.query.weight"
        );
        assert_eq!(
            to("backbone.block3.0.norm1.weight"),
            "segformer.encoder.block.2.0.layer_norm_1.weight"
        );
        assert_eq!(
            to("block1.0.attn.sr.bias"),
            "segformer.encoder.block.0.0.attention.self.sr.bias"
        );
        assert_eq!(
            to("block1.0.attn.norm.weight"),
            "segformer.encoder.block.0.0.attention.self.layer_norm.weight"
        );
        assert_eq!(
            to("block1.0.attn.proj.weight"),
            "segformer.encoder.block.0.0.attention.output.dense.weight"
        );
        assert_eq!(
            to("block4.2.mlp.dwconv.dwconv.weight"),
            "segformer.encoder.block.3.2.mlp.dwconv.dwconv.weight"
        );
        assert_eq!(
            to("block4.2.mlp.fc2.bias"),
            "segformer.encoder.block.3.2.mlp.dense2.bias"
        );
        assert_eq!(
            to("backbone.norm3.weight"),
            "segformer.encoder.layer_norm.2.weight"
        );
        assert_eq!(
            map_name("model.backbone.block1.0.attn.kv.weight"),
            NameMap::SplitKv {
                key: "segformer.encoder.block.0.0.attention.self.key.weight".into(),
                value: "segformer.encoder.block.0.0.attention.self.value.weight".into(),
            }
        );
        // Published names are kept.
        let hf = "segformer.encoder.block.0.0.attention.self.query.weight";
        assert_eq!(to(hf), hf);
        assert_eq!(
            to("decode_head.fuse_layer.aspp_modules.1.depthwise_conv.conv.weight"),
            "decode_head.fuse_layer.aspp_modules.1.depthwise_conv.conv.weight"
        );
    }

    #[test]
    fn heads_resnet_and_ignored_names() {
        assert_eq!(
            to("decode_head.linear_c4.proj.weight"),
            "decode_head.linear_c.3.proj.weight"
        );
        assert_eq!(
            to("decode_head.linear_c.3.proj.weight"),
            "decode_head.linear_c.3.proj.weight"
        );
        assert_eq!(
            to("decode_head.linear_fuse.conv.weight"),
            "decode_head.linear_fuse.weight"
        );
        assert_eq!(
            to("decode_head.linear_fuse.bn.running_var"),
            "decode_head.batch_norm.running_var"
        );
        assert_eq!(
            to("decode_head.linear_pred.bias"),
            "decode_head.classifier.bias"
        );
        assert_eq!(
            to("segformer.stages.2.blocks.1.attention.q_proj.weight"),
            "segformer.encoder.block.2.1.attention.self.query.weight"
        );
        assert_eq!(
            to("segformer.stages.0.layer_norm.bias"),
            "segformer.encoder.layer_norm.0.bias"
        );
        assert_eq!(to("stem.3.weight"), "backbone.stem.3.weight");
        assert_eq!(
            to("model.decode_head.head.fuse_layer.bottleneck.conv.weight"),
            "decode_head.fuse_layer.bottleneck.conv.weight"
        );
        assert_eq!(
            to("model.decode_head.scale_attention.conv_seg.bias"),
            "decode_head.scale_attention.conv_seg.bias"
        );
        assert_eq!(
            to("layer3.22.conv2.weight"),
            "backbone.layer3.22.conv2.weight"
        );
        assert_eq!(
            to("backbone.layer1.0.downsample.1.running_mean"),
            "backbone.layer1.0.downsample.1.running_mean"
        );
        assert_eq!(
            to("module.layer1.0.bn1.weight"),
            "backbone.layer1.0.bn1.weight"
        );
        for n in [
            "fc.weight",
            "head.bias",
            "classifier.weight",
            "ema_model.backbone.norm1.weight",
        ] {
            assert!(matches!(map_name(n), NameMap::Ignore(_)), "{n}");
        }
        // Not a stage-indexed name: left alone.
        assert_eq!(to("layer10.weight"), "layer10.weight");
    }

    #[test]
    fn sources() {
        assert_eq!(
            WeightSource::parse("hf:nvidia/mit-b5").unwrap(),
            WeightSource::Hub {
                repo: "nvidia/mit-b5".into(),
                file: "model.safetensors".into(),
                revision: "main".into()
            }
        );
        assert_eq!(
            WeightSource::parse("hf:org/name/sub/w.safetensors@refs/pr/3").unwrap(),
            WeightSource::Hub {
                repo: "org/name".into(),
                file: "sub/w.safetensors".into(),
                revision: "refs/pr/3".into()
            }
        );
        assert_eq!(
            WeightSource::parse("ckpt/a.safetensors").unwrap(),
            WeightSource::File("ckpt/a.safetensors".into())
        );
        assert!(WeightSource::parse("hf:nvidia").is_err());
        assert!(WeightSource::parse("hf:a/b@").is_err());
    }
}
