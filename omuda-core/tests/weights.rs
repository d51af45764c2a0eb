//! Pretrained-weight loading: strict error report, backbone checkpoints,
//! hub-cache resolution without network, pickle refusal. Uses the DAFormer
//! weights of `tests/fixtures/models.safetensors` (original DAFormer names).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use omuda_core::nn::daformer_head::DaformerHeadConfig;
use omuda_core::nn::mit::MitConfig;
use omuda_core::nn::segmentor::DaFormer;
use omuda_core::nn::weights::{
    apply_model_weights, load_into, read_safetensors, resolve_hub_file, var_shapes, WeightSource,
};
use omuda_core::nn::ModelConfig;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/models.safetensors"
);

fn daformer_tensors() -> Vec<(String, Tensor)> {
    let all: HashMap<String, Tensor> =
        candle_core::safetensors::load(FIXTURES, &Device::Cpu).unwrap();
    let mut v: Vec<_> = all
        .into_iter()
        .filter_map(|(k, t)| k.strip_prefix("daformer.orig.").map(|n| (n.to_string(), t)))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn fixture_model() -> (VarMap, DaFormer) {
    fixture_model_with(false)
}

/// The fixture model, with HRDA's scale-attention head when `scale_attention`.
fn fixture_model_with(scale_attention: bool) -> (VarMap, DaFormer) {
    let mit = MitConfig {
        in_channels: 3,
        hidden_sizes: [8, 16, 24, 32],
        depths: [2, 2, 2, 2],
        num_heads: [1, 2, 3, 4],
        sr_ratios: [8, 4, 2, 1],
        patch_sizes: [7, 3, 3, 3],
        strides: [4, 2, 2, 2],
        mlp_ratios: [4; 4],
        decoder_hidden_size: 16,
        block_ln_eps: 1e-6,
        embed_ln_eps: 1e-5,
    };
    let head = DaformerHeadConfig {
        channels: 16,
        dilations: vec![1, 6, 12, 18],
        dropout: 0.1,
    };
    let cfg = ModelConfig {
        num_classes: 5,
        scale_attention,
        ..ModelConfig::default()
    };
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let model = DaFormer::new(&mit, &head, &cfg, vb).unwrap();
    (vm, model)
}

fn value(vm: &VarMap, name: &str) -> Vec<f32> {
    vm.data().lock().unwrap()[name]
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn removed_renamed_and_reshaped_tensors_are_all_named() {
    let (vm, _model) = fixture_model();
    let before = value(&vm, "decode_head.conv_seg.bias");
    let mut tensors = daformer_tensors();
    // One removed, one renamed, one reshaped.
    tensors.retain(|(n, _)| n != "backbone.block3.1.mlp.fc1.weight");
    for (n, t) in tensors.iter_mut() {
        if n == "backbone.block1.0.attn.q.bias" {
            *n = "backbone.block1.0.attn.qq.bias".into();
        }
        if n == "decode_head.conv_seg.weight" {
            *t = t.reshape((5, 4, 2, 2)).unwrap();
        }
    }
    let err = load_into(
        &vm,
        tensors.clone(),
        "broken.safetensors",
        "daformer_test",
        true,
    )
    .unwrap_err()
    .to_string();
    eprintln!("{err}");
    // The renamed tensor is both missing (under its model name) and unexpected.
    assert!(err.contains("4 problem(s)"), "{err}");
    assert!(
        err.contains(
            "missing     segformer.encoder.block.2.1.mlp.dense1.weight (model shape [96, 24])"
        ),
        "{err}"
    );
    assert!(
        err.contains("missing     segformer.encoder.block.0.0.attention.self.query.bias"),
        "{err}"
    );
    assert!(
        err.contains("unexpected  backbone.block1.0.attn.qq.bias"),
        "{err}"
    );
    assert!(
        err.contains(
            "shape       decode_head.conv_seg.weight: model [5, 16, 1, 1], file [5, 4, 2, 2]"
        ),
        "{err}"
    );
    assert!(
        err.contains("broken.safetensors") && err.contains("daformer_test"),
        "{err}"
    );
    // Strict failure changes nothing.
    assert_eq!(value(&vm, "decode_head.conv_seg.bias"), before);

    // Non-strict: the rest is loaded, the report lists the problems.
    let report = load_into(&vm, tensors, "broken.safetensors", "daformer_test", false).unwrap();
    assert_eq!(report.mismatched.len(), 1);
    assert_eq!(report.unexpected.len(), 1);
    assert_eq!(report.missing.len(), 2);
    assert_ne!(value(&vm, "decode_head.conv_seg.bias"), before);
}

#[test]
fn a_single_removed_tensor_is_the_only_problem() {
    let (vm, _m) = fixture_model();
    let mut tensors = daformer_tensors();
    tensors.retain(|(n, _)| n != "backbone.norm4.bias");
    let r = load_into(&vm, tensors, "x", "m", false).unwrap();
    assert_eq!(r.problem_count(), 1);
    assert_eq!(r.missing[0].0, "segformer.encoder.layer_norm.3.bias");
}

#[test]
fn backbone_checkpoint_keeps_the_head_and_ignores_classifiers() {
    let (vm, _m) = fixture_model();
    let head_before = value(&vm, "decode_head.fuse_layer.bottleneck.conv.weight");
    let mut tensors: Vec<_> = daformer_tensors()
        .into_iter()
        .filter(|(n, _)| n.starts_with("backbone."))
        .map(|(n, t)| (n.trim_start_matches("backbone.").to_string(), t))
        .collect();
    // An NVlabs ImageNet MiT checkpoint also has the classification head.
    tensors.push((
        "head.weight".into(),
        Tensor::zeros((1000, 32), DType::F32, &Device::Cpu).unwrap(),
    ));
    tensors.push((
        "head.bias".into(),
        Tensor::zeros(1000, DType::F32, &Device::Cpu).unwrap(),
    ));
    let r = load_into(&vm, tensors, "mit.safetensors", "m", true).unwrap();
    assert_eq!(r.problem_count(), 0, "{}", r.problems());
    assert_eq!(r.ignored.len(), 2);
    let n_head = var_shapes(&vm)
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("decode_head."))
        .count();
    assert_eq!(r.head_kept.len(), n_head);
    assert_eq!(
        value(&vm, "decode_head.fuse_layer.bottleneck.conv.weight"),
        head_before
    );
    eprintln!("{}", r.summary());
}

/// An HRDA UDA checkpoint (MIC/HRDA layout: `model.*` student with the main
/// head under `decode_head.head.*` and the scale attention under
/// `decode_head.scale_attention.*`, plus the `ema_model.*` teacher) loads
/// strictly into a DAFormer model with the scale-attention head.
#[test]
fn hrda_checkpoint_names_load_strictly() {
    let (vm, _m) = fixture_model_with(true);
    let own = var_shapes(&vm).unwrap();
    let attention: Vec<(String, Tensor)> = {
        let data = vm.data().lock().unwrap();
        own.keys()
            .filter(|k| k.starts_with("decode_head.scale_attention."))
            .map(|k| (k.clone(), (data[k].as_tensor() + 0.5).unwrap()))
            .collect()
    };
    assert!(!attention.is_empty());
    let mut tensors = Vec::new();
    for (name, t) in daformer_tensors().into_iter().chain(attention.clone()) {
        let hrda = match name.strip_prefix("decode_head.") {
            Some(rest) if !rest.starts_with("scale_attention.") => {
                format!("decode_head.head.{rest}")
            }
            _ => name.clone(),
        };
        tensors.push((format!("ema_model.{hrda}"), t.clone()));
        tensors.push((format!("model.{hrda}"), t));
    }
    let r = load_into(&vm, tensors, "hrda.safetensors", "m", true).unwrap();
    assert_eq!(r.problem_count(), 0, "{}", r.problems());
    assert_eq!(r.loaded.len(), own.len());
    let want: Vec<f32> = daformer_tensors()
        .into_iter()
        .find(|(n, _)| n == "decode_head.conv_seg.bias")
        .map(|(_, t)| t.to_vec1().unwrap())
        .unwrap();
    assert_eq!(value(&vm, "decode_head.conv_seg.bias"), want);
    let (name, t) = &attention[0];
    assert_eq!(
        value(&vm, name),
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
}

/// Writes `tensors` as safetensors at `path`.
fn save(tensors: &[(String, Tensor)], path: &Path) {
    let map: HashMap<String, Tensor> = tensors.iter().cloned().collect();
    candle_core::safetensors::save(&map, path).unwrap();
}

#[test]
fn hub_cache_resolves_offline_and_local_files_load() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    let repo = cache.join("models--someorg--tiny-daformer");
    let snap = repo.join("snapshots").join("0123abcd");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "0123abcd").unwrap();
    save(&daformer_tensors(), &snap.join("model.safetensors"));

    let p = resolve_hub_file(
        &cache,
        "someorg/tiny-daformer",
        "model.safetensors",
        "main",
        true,
    )
    .unwrap();
    assert_eq!(p, snap.join("model.safetensors"));
    // A commit hash as revision needs no ref.
    let p2 = resolve_hub_file(
        &cache,
        "someorg/tiny-daformer",
        "model.safetensors",
        "0123abcd",
        true,
    )
    .unwrap();
    assert_eq!(p2, p);
    let err = resolve_hub_file(&cache, "someorg/other", "model.safetensors", "main", true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("HF_HUB_OFFLINE") && err.contains("someorg/other"),
        "{err}"
    );

    let (vm, _m) = fixture_model();
    let r = load_into(
        &vm,
        read_safetensors(&p).unwrap(),
        "hf:someorg/tiny-daformer",
        "m",
        true,
    )
    .unwrap();
    assert_eq!(r.problem_count(), 0);

    // `model.weights` with a local path.
    let cfg = ModelConfig {
        name: "fixture".into(),
        weights: Some(p.display().to_string()),
        ..ModelConfig::default()
    };
    let (vm, _m) = fixture_model();
    let r = apply_model_weights(&cfg, &vm).unwrap().unwrap();
    assert!(r.loaded.len() > 50);
    assert!(matches!(
        WeightSource::parse(&p.display().to_string()).unwrap(),
        WeightSource::File(_)
    ));
}

#[test]
fn pickles_are_refused_with_the_conversion_command() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mit_b5.pth");
    std::fs::write(&p, b"PK\x03\x04 not really a zip").unwrap();
    let err = read_safetensors(&p).unwrap_err().to_string();
    assert!(
        err.contains("mit_b5.pth") && err.contains("save_file"),
        "{err}"
    );
    let q = dir.path().join("junk.safetensors");
    std::fs::write(&q, b"0123456789abcdef").unwrap();
    let err = read_safetensors(&q).unwrap_err().to_string();
    assert!(err.contains("not a safetensors file"), "{err}");
}

/// A one-tensor safetensors file whose header is padded with spaces to `len` bytes.
fn safetensors_with_header_len(len: usize) -> Vec<u8> {
    let json = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    assert!(len >= json.len());
    let mut bytes = (len as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    bytes.resize(8 + len, b' ');
    bytes.extend_from_slice(&1.5f32.to_le_bytes());
    bytes
}

#[test]
fn safetensors_are_recognised_by_structure_whatever_the_first_byte() {
    use omuda_core::nn::weights::{detect_format, safetensors_from_bytes, WeightsFormat};
    for low in 0..=255usize {
        let bytes = safetensors_with_header_len(256 + low);
        assert_eq!(bytes[0] as usize, low);
        assert_eq!(
            detect_format(&bytes),
            WeightsFormat::Safetensors,
            "low byte {low:#x}"
        );
        let t = safetensors_from_bytes(&bytes, "x").unwrap();
        assert_eq!(t[0].0, "w");
        assert_eq!(t[0].1.to_vec1::<f32>().unwrap(), vec![1.5]);
    }
    // A pickle (protocol 2) and a truncated safetensors header are not safetensors.
    assert_eq!(detect_format(b"\x80\x02}q\x00."), WeightsFormat::PyTorch);
    let bytes = safetensors_with_header_len(0x180);
    assert_eq!(detect_format(&bytes[..100]), WeightsFormat::Unknown);
    let err = safetensors_from_bytes(b"\x80\x02}q\x00.", "old.pth")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("old.pth") && err.contains("save_file"),
        "{err}"
    );
}

#[test]
fn builtin_and_none_weight_specs() {
    use omuda_core::nn::weights::BUILTIN_WEIGHTS;
    let src = WeightSource::parse("builtin:mit_tiny_synth").unwrap();
    let t = src.read().unwrap();
    assert!(
        t.iter().all(|(n, _)| n.starts_with("segformer.encoder.")),
        "encoder only"
    );
    assert_eq!(src.to_string(), "builtin:mit_tiny_synth");
    let err = WeightSource::parse("builtin:nope").unwrap_err().to_string();
    assert!(err.contains("builtin:mit_tiny_synth"), "{err}");
    assert_eq!(BUILTIN_WEIGHTS.len(), 1);
    // The shipped encoder loads strictly into both tiny segmentation models.
    for name in ["segformer_tiny", "daformer_tiny"] {
        let cfg = omuda_core::nn::ModelConfig {
            name: name.into(),
            weights: Some("builtin:mit_tiny_synth".into()),
            ..Default::default()
        };
        let vars = candle_nn::VarMap::new();
        let _m = omuda_core::nn::build_segmentor(
            &cfg,
            omuda_core::nn::seeded_var_builder(
                &vars,
                0,
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            ),
        )
        .unwrap();
        let r = apply_model_weights(&cfg, &vars).unwrap().unwrap();
        assert_eq!(r.problem_count(), 0, "{name}");
        assert_eq!(r.loaded.len(), t.len(), "{name}");
        let none = omuda_core::nn::ModelConfig {
            weights: Some("none".into()),
            ..cfg
        };
        assert!(apply_model_weights(&none, &vars).unwrap().is_none());
    }
}

#[test]
fn model_weights_reach_student_and_teacher_of_a_training_run() {
    use omuda_core::nn::{build_segmentor, seeded_var_builder};
    use omuda_core::train::optimizer::AdamWConfig;
    use omuda_core::train::schedule::PolySchedule;
    use omuda_core::train::step::{SelfTrainingSpec, UdaConfig};
    use omuda_core::train::SelfTraining;

    // A segformer_tiny checkpoint from another seed.
    let cfg = ModelConfig::default();
    let source = VarMap::new();
    build_segmentor(
        &cfg,
        seeded_var_builder(&source, 7, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.safetensors");
    source.save(&path).unwrap();

    let spec = SelfTrainingSpec {
        name: "dacs".into(),
        model: ModelConfig {
            weights: Some(path.display().to_string()),
            ..cfg
        },
        uda: UdaConfig::default(),
        optimizer: AdamWConfig::default(),
        schedule: PolySchedule::default(),
        seed: 0,
    };
    let run = SelfTraining::new(spec, &Device::Cpu).unwrap();
    let name = "segformer.encoder.block.0.0.attention.self.query.weight";
    let want = value(&source, name);
    assert_eq!(value(run.student_vars(), name), want);
    let teacher = run.teacher_vars().expect("DACS has a teacher");
    assert_eq!(value(teacher, name), want);
}

#[test]
fn two_file_tensors_for_one_model_tensor_are_reported() {
    let (vm, _m) = fixture_model();
    let mut tensors = daformer_tensors();
    let dup = tensors
        .iter()
        .find(|(n, _)| n == "backbone.norm1.weight")
        .map(|(_, t)| t.clone())
        .unwrap();
    // The same tensor again under its Hugging Face name.
    tensors.push((
        "segformer.encoder.layer_norm.0.weight".into(),
        (dup * 2.0).unwrap(),
    ));
    let err = load_into(&vm, tensors.clone(), "dup", "m", true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unexpected  segformer.encoder.layer_norm.0.weight")
            && err.contains("duplicate"),
        "{err}"
    );
    // Non-strict: the first one (in file order) is loaded.
    load_into(&vm, tensors.clone(), "dup", "m", false).unwrap();
    let first = tensors
        .iter()
        .find(|(n, _)| n == "backbone.norm1.weight")
        .map(|(_, t)| t.to_vec1::<f32>().unwrap())
        .unwrap();
    assert_eq!(value(&vm, "segformer.encoder.layer_norm.0.weight"), first);
}

#[test]
fn non_finite_and_integer_parameters_are_named_strict_or_not() {
    use candle_core::{DType, Tensor};
    use omuda_core::nn::weights::load_into;
    let cfg = omuda_core::nn::ModelConfig::default();
    let vars = candle_nn::VarMap::new();
    let _m = omuda_core::nn::build_segmentor(
        &cfg,
        omuda_core::nn::seeded_var_builder(&vars, 0, DType::F32, &candle_core::Device::Cpu),
    )
    .unwrap();
    let data = vars.data().lock().unwrap();
    let mut names: Vec<String> = data.keys().cloned().collect();
    names.sort();
    let mut tensors: Vec<(String, Tensor)> = names
        .iter()
        .map(|n| (n.clone(), data[n].as_tensor().clone()))
        .collect();
    drop(data);
    let q = "segformer.encoder.block.0.0.attention.self.query.weight";
    let k = "segformer.encoder.block.0.0.attention.self.key.bias";
    for (n, t) in tensors.iter_mut() {
        if n == q {
            let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v[3] = f32::NAN;
            v[5] = f32::INFINITY;
            *t = Tensor::from_vec(v, t.dims(), t.device()).unwrap();
        } else if n == k {
            *t = t.to_dtype(DType::I64).unwrap();
        }
    }
    let before = vars.data().lock().unwrap()[q]
        .as_tensor()
        .to_vec2::<f32>()
        .unwrap();
    for strict in [true, false] {
        let err = load_into(
            &vars,
            tensors.clone(),
            "bad.safetensors",
            "segformer_tiny",
            strict,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("bad.safetensors") && err.contains("2 tensor(s)"),
            "{err}"
        );
        assert!(
            err.contains(q) && err.contains("1 NaN and 1 infinite"),
            "{err}"
        );
        assert!(err.contains(k) && err.contains("I64"), "{err}");
    }
    // Nothing was loaded.
    let after = vars.data().lock().unwrap()[q]
        .as_tensor()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(before, after);
}
