//! The run configuration, read from TOML: one table per part, each table the
//! settings type of the crate that owns the code (`[model]`, `[data]`,
//! `[optimizer]`, `[schedule]`, `[uda]`, `[train]`, `[eval]` from omuda-core;
//! `[fd]`, `[mic]` from omuda-baselines; `[plugin.*]` from omuda-plugins).
//! Unknown keys are errors that name the key; every field has a default, so a
//! file only states what it changes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use omuda_baselines::{FdConfig, MicConfig};
use omuda_core::check::{
    check_range,
    Bound::{Closed, Open, Unbounded},
};
use omuda_core::data::config::{validate_files, DataConfig, DataSource};
use omuda_core::eval::{EvalConfig, EvalMode};
use omuda_core::nn::weights::BUILTIN_ENCODER;
use omuda_core::nn::ModelConfig;
use omuda_core::train::multires::HrdaConfig;
use omuda_core::train::optimizer::AdamWConfig;
use omuda_core::train::schedule::ScheduleConfig;
use omuda_core::train::spec::UdaConfig;
use omuda_core::train::trainer::TrainConfig;
use omuda_core::{Error, Result};
use omuda_plugins::{PluginsConfig, PLUGIN_NAMES};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Methods to train, in order (`source_only`, `dacs`, `oracle`, `daformer`,
    /// `hrda`, `mic_dacs`, `mic_daformer`, `mic_hrda`).
    pub methods: Vec<String>,
    /// Masking plugins attached to every self-training method, in order
    /// (`"cam"`, `"fdm"`, `"cdm"`); settings in the `[plugin.*]` tables.
    pub plugins: Vec<String>,
    /// Seed of initialisation, data order and every random draw of training.
    pub seed: u64,
    /// Output folder; each method writes into `<out>/<method>/`.
    pub out: PathBuf,
    /// Compute device: `"cpu"`, `"cuda"` or `"cuda:N"` (CUDA needs the `cuda` build).
    pub device: String,
    pub model: ModelConfig,
    pub data: DataConfig,
    pub optimizer: AdamWConfig,
    pub schedule: ScheduleConfig,
    pub uda: UdaConfig,
    /// DAFormer's thing-class feature distance (`daformer`, `mic_daformer`, HRDA-based methods).
    pub fd: FdConfig,
    /// MIC's masked image consistency (`mic_*` methods).
    pub mic: MicConfig,
    /// HRDA multi-resolution training and inference (`hrda`, `mic_hrda`).
    pub hrda: HrdaConfig,
    /// Settings of the masking plugins (`[plugin]`, `[plugin.cam]`, …).
    pub plugin: PluginsConfig,
    pub train: TrainConfig,
    pub eval: EvalConfig,
    /// The `--set KEY=VALUE` overrides this configuration was resolved with,
    /// recorded with the run (their values are already in the tables above).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<String>,
}

impl Default for RunConfig {
    /// The built-in benchmark: source-only then DACS on the synthetic pair,
    /// sized to finish in minutes on a 2-core CPU. Everything not listed here
    /// is the DACS recipe of the reference (AdamW with head ×10 lr and no decay
    /// on norms, poly schedule with linear warm-up, α 0.99, τ 0.968, ClassMix,
    /// colour jitter and blur). The changes for a tiny network trained from
    /// scratch: a 10× higher learning rate, a warm-up of 10 % of the run, and
    /// 800 iterations.
    fn default() -> Self {
        Self {
            methods: vec!["source_only".into(), "dacs".into()],
            plugins: Vec::new(),
            seed: 0,
            out: PathBuf::from("runs/synth"),
            device: "cpu".into(),
            // The encoder pretrained on the built-in pretraining set (`omuda
            // pretrain`), as the published methods start from ImageNet weights.
            model: ModelConfig {
                weights: Some(BUILTIN_ENCODER.into()),
                ..ModelConfig::default()
            },
            data: DataConfig::default(),
            optimizer: AdamWConfig::default(),
            schedule: ScheduleConfig {
                lr: 6e-4,
                warmup_iters: 80,
                ..ScheduleConfig::default()
            },
            uda: UdaConfig::default(),
            fd: FdConfig::default(),
            mic: MicConfig::default(),
            hrda: HrdaConfig::default(),
            plugin: PluginsConfig::default(),
            train: TrainConfig {
                iters: 800,
                batch_size: 2,
                log_interval: 50,
                eval_interval: 200,
                checkpoint_interval: 200,
                debug_interval: 400,
                ..TrainConfig::default()
            },
            eval: EvalConfig::default(),
            overrides: Vec::new(),
        }
    }
}

impl RunConfig {
    /// Parse TOML; `origin` names the source in errors (a path or "built-in").
    /// A `base = "PRESET_OR_FILE"` key reads the file over its base
    /// ([`crate::layers`]).
    /// This configuration with the settings of the plugins it does not
    /// attach reset to their defaults (and the shared thing classes too when
    /// it attaches none): two runs that differ only there train identically,
    /// so `omuda compare` reuses one for the other.
    pub fn without_unused_plugin_settings(&self) -> RunConfig {
        let mut c = self.clone();
        let d = PluginsConfig::default();
        let uses = |name: &str| c.plugins.iter().any(|p| p == name);
        if !uses("cam") {
            c.plugin.cam = d.cam.clone();
        }
        if !uses("fdm") {
            c.plugin.fdm = d.fdm.clone();
        }
        if !uses("cdm") {
            c.plugin.cdm = d.cdm.clone();
        }
        if c.plugins.is_empty() {
            c.plugin.thing_classes = d.thing_classes;
        }
        c
    }

    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self> {
        Self::from_toml_in(text, origin, None)
    }

    /// [`Self::from_toml_str`] with relative `base` paths read from `dir`.
    fn from_toml_in(text: &str, origin: &str, dir: Option<&Path>) -> Result<Self> {
        let table = toml::from_str::<toml::Table>(text).ok();
        if table.as_ref().is_some_and(|t| t.contains_key("base")) {
            return crate::layers::parse(text, origin, dir);
        }
        let mut cfg: RunConfig = toml::from_str(text).map_err(|e| Error::Config {
            origin: origin.into(),
            message: e.to_string(),
        })?;
        if !table.as_ref().is_some_and(num_classes_given) {
            cfg.classes_from_data();
        }
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// The class count of the run's labelled folder dataset (`kind =
    /// "folder"` under `[data.source]`, else `[data.val]`) and its spec file;
    /// `None` for every other dataset.
    pub fn data_classes(&self) -> Option<(usize, PathBuf)> {
        if self.data.dataset != DataSource::Files {
            return None;
        }
        [&self.data.source, &self.data.val]
            .into_iter()
            .flatten()
            .find(|d| d.kind == "folder")
            .and_then(|d| {
                let spec = omuda_core::data::datasets::FolderSpec::from_file(&d.root).ok()?;
                let n = spec
                    .classes
                    .map(|c| c.len())
                    .unwrap_or(omuda_core::data::classes::NUM_CLASSES);
                Some((n, d.root.clone()))
            })
    }

    /// `model.num_classes` from the folder dataset's spec, for a
    /// configuration that does not set it.
    pub fn classes_from_data(&mut self) {
        if let Some((n, _)) = self.data_classes() {
            self.model.num_classes = n;
        }
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_in(&text, &path.display().to_string(), path.parent())
    }

    /// Open the configured device (see [`omuda_core::device`]).
    pub fn open_device(&self) -> Result<candle_core::Device> {
        omuda_core::device::device_from_str(&self.device, "device")
    }

    /// The configuration as TOML. Every number that is a 32-bit float is
    /// printed in its shortest form (`0.6`, not `0.6000000238418579`); read
    /// back, it gives the same configuration.
    pub fn to_toml(&self) -> Result<String> {
        let err = |e: &dyn std::fmt::Display| Error::msg(format!("config to TOML: {e}"));
        let mut value = toml::Value::try_from(self).map_err(|e| err(&e))?;
        shortest_floats(&mut value);
        toml::to_string(&value).map_err(|e| err(&e))
    }

    /// Scales the warm-up and the eval, checkpoint and debug intervals with a
    /// new run length `iters` (from `old` iterations), except keys the user
    /// set explicitly (`--set`). Returns what changed, for one line of output.
    pub fn scale_to_iters(&mut self, iters: usize) -> Option<String> {
        let old = self.train.iters;
        self.train.iters = iters;
        if old == iters || old == 0 {
            return None;
        }
        let set: Vec<&str> = self
            .overrides
            .iter()
            .filter_map(|s| s.split_once('=').map(|(k, _)| k.trim()))
            .collect();
        let scale = |v: usize| -> usize {
            if v == 0 {
                0
            } else {
                ((v as f64 * iters as f64 / old as f64).round() as usize).max(1)
            }
        };
        let mut changed = Vec::new();
        let fields: [(&str, &mut usize); 4] = [
            ("schedule.warmup_iters", &mut self.schedule.warmup_iters),
            ("train.eval_interval", &mut self.train.eval_interval),
            (
                "train.checkpoint_interval",
                &mut self.train.checkpoint_interval,
            ),
            ("train.debug_interval", &mut self.train.debug_interval),
        ];
        for (key, v) in fields {
            if set.contains(&key) {
                continue;
            }
            let new = scale(*v);
            if new != *v {
                changed.push(format!("{key} {} -> {new}", *v));
                *v = new;
            }
        }
        (!changed.is_empty()).then(|| {
            format!(
                "--iters {iters} (preset: {old}): scaled {}",
                changed.join(", ")
            )
        })
    }

    /// Checks serde cannot express; each error names the key.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let problems = self.problems();
        omuda_core::device::DeviceSpec::parse(&self.device, &format!("{origin}: device"))?;
        if problems.is_empty() {
            return Ok(());
        }
        Err(Error::Config {
            origin: origin.into(),
            message: if problems.len() == 1 {
                problems[0].clone()
            } else {
                format!("{} problems:\n  {}", problems.len(), problems.join("\n  "))
            },
        })
    }

    /// Every problem of the configuration, each naming its key, the value
    /// and what is allowed.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        match self.data.dataset {
            DataSource::Synth => {
                if let Some(Err(e)) = self.data.rcs.as_ref().map(|r| r.validate()) {
                    p.push(format!("data.rcs: {e}"));
                }
                if let Err(e) = self.data.synth.validate() {
                    p.push(format!("data.synth: {e}"));
                }
                if self.model.num_classes != omuda_core::data::classes::NUM_CLASSES {
                    p.push(format!(
                        "model.num_classes = {}: the synthetic pair has {} classes",
                        self.model.num_classes,
                        omuda_core::data::classes::NUM_CLASSES
                    ));
                }
            }
            DataSource::Files => {
                if let Err(e) = validate_files(&self.data) {
                    p.push(e);
                }
                if let Some((n, spec)) = self.data_classes() {
                    if n != self.model.num_classes {
                        p.push(format!(
                            "model.num_classes = {}: the folder dataset {} has {n} classes (leave model.num_classes out to take it from the spec)",
                            self.model.num_classes,
                            spec.display()
                        ));
                    }
                }
            }
        }
        let mut positive = |key: &str, v: usize| {
            if v == 0 {
                p.push(format!("{key} = 0: expected at least 1"));
            }
        };
        positive("train.iters", self.train.iters);
        positive("train.batch_size", self.train.batch_size);
        positive(
            "train.keep_last (the checkpoint a run resumes from)",
            self.train.keep_last,
        );
        positive("eval.batch_size", self.eval.batch_size);
        if self.eval.mode == EvalMode::Slide
            && (self.eval.stride.contains(&0) || self.eval.crop.contains(&0))
        {
            p.push(format!(
                "eval.crop = {:?}, eval.stride = {:?}: sizes must be at least 1",
                self.eval.crop, self.eval.stride
            ));
        }
        let s = &self.schedule;
        check_range(&mut p, "schedule.lr", s.lr, Open(0.0), Unbounded);
        check_range(&mut p, "schedule.min_lr", s.min_lr, Closed(0.0), Unbounded);
        check_range(&mut p, "schedule.power", s.power, Closed(0.0), Unbounded);
        check_range(
            &mut p,
            "schedule.warmup_ratio",
            s.warmup_ratio,
            Closed(0.0),
            Closed(1.0),
        );
        let o = &self.optimizer;
        check_range(&mut p, "optimizer.beta1", o.beta1, Closed(0.0), Open(1.0));
        check_range(&mut p, "optimizer.beta2", o.beta2, Closed(0.0), Open(1.0));
        check_range(&mut p, "optimizer.eps", o.eps, Open(0.0), Unbounded);
        check_range(
            &mut p,
            "optimizer.weight_decay",
            o.weight_decay,
            Closed(0.0),
            Unbounded,
        );
        for r in &o.custom_keys {
            let key = format!("optimizer.custom_keys[{:?}]", r.key);
            check_range(
                &mut p,
                &format!("{key}.lr_mult"),
                r.lr_mult,
                Closed(0.0),
                Unbounded,
            );
            check_range(
                &mut p,
                &format!("{key}.decay_mult"),
                r.decay_mult,
                Closed(0.0),
                Unbounded,
            );
        }
        let u = &self.uda;
        check_range(&mut p, "uda.ema_alpha", u.ema_alpha, Closed(0.0), Open(1.0));
        check_range(
            &mut p,
            "uda.pseudo_threshold",
            f64::from(u.pseudo_threshold),
            Closed(0.0),
            Closed(1.0),
        );
        check_range(
            &mut p,
            "uda.mix_loss_weight",
            u.mix_loss_weight,
            Closed(0.0),
            Unbounded,
        );
        if let Err(e) = u.strong_aug.validate() {
            p.push(format!("uda.strong_aug: {e}"));
        }
        for (key, list) in [("methods", &self.methods), ("plugins", &self.plugins)] {
            let mut seen = std::collections::HashSet::new();
            for name in list {
                if !seen.insert(name) {
                    p.push(format!("{key} lists {name:?} twice"));
                }
            }
        }
        if self.methods.is_empty() {
            p.push("methods is empty: name at least one method".into());
        }
        if let Some(name) = self
            .plugins
            .iter()
            .find(|n| !PLUGIN_NAMES.contains(&n.as_str()))
        {
            p.push(format!(
                "plugins: unknown plugin {name:?}; available: {}",
                PLUGIN_NAMES.join(", ")
            ));
        }
        // Thing-class lists are checked against the classes only where a part
        // of the run uses them: the feature distance (DAFormer, HRDA and
        // their MIC versions) and the CAM and FDM plugins.
        let uses_fd = self
            .methods
            .iter()
            .any(|m| m.contains("daformer") || m.contains("hrda"));
        let uses_things = self.plugins.iter().any(|n| n == "cam" || n == "fdm");
        let classes = self.model.num_classes;
        for r in [
            self.plugin
                .validate(if uses_things { classes } else { usize::MAX }),
            self.fd.validate(if uses_fd { classes } else { usize::MAX }),
            self.mic.validate(),
            self.hrda.validate(),
        ] {
            if let Err(e) = r {
                p.push(e);
            }
        }
        p
    }
}

/// Whether a configuration table sets `model.num_classes` itself.
pub fn num_classes_given(table: &toml::Table) -> bool {
    table
        .get("model")
        .and_then(|m| m.as_table())
        .is_some_and(|m| m.contains_key("num_classes"))
}

/// Replaces each float that is exactly a 32-bit float by the shortest
/// decimal of that 32-bit float.
fn shortest_floats(v: &mut toml::Value) {
    match v {
        toml::Value::Float(x) if x.is_finite() && (*x as f32) as f64 == *x => {
            if let Ok(short) = format!("{}", *x as f32).parse::<f64>() {
                *x = short;
            }
        }
        toml::Value::Array(a) => a.iter_mut().for_each(shortest_floats),
        toml::Value::Table(t) => t.iter_mut().for_each(|(_, v)| shortest_floats(v)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use omuda_core::data::config::benchmark_synth;

    #[test]
    fn unknown_key_is_named() {
        let err = RunConfig::from_toml_str("[train]\niters = 5\nitres = 3\n", "test.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("itres"), "{err}");
        assert!(err.contains("test.toml"), "{err}");
        let err = RunConfig::from_toml_str("bogus = 1\n", "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn every_bad_number_is_listed_with_key_value_and_range() {
        let text = "plugins = [\"cam\", \"cam\"]\n\
                    [schedule]\nlr = -1e-4\n\
                    [uda]\npseudo_threshold = 2.0\nema_alpha = 1.0\n\
                    [optimizer]\neps = 0.0\n";
        let cfg: RunConfig = toml::from_str(text).unwrap();
        let err = cfg.validate("bad.toml").unwrap_err().to_string();
        for want in [
            "bad.toml",
            "5 problems",
            "schedule.lr = -0.0001: expected a finite value in (0, inf)",
            "uda.pseudo_threshold = 2: expected a finite value in [0, 1]",
            "uda.ema_alpha = 1: expected a finite value in [0, 1)",
            "optimizer.eps = 0",
            "plugins lists \"cam\" twice",
        ] {
            assert!(err.contains(want), "{want:?} missing in:\n{err}");
        }
        for lr in [f64::NAN, f64::INFINITY] {
            let mut cfg = RunConfig::default();
            cfg.schedule.lr = lr;
            let err = cfg.validate("x").unwrap_err().to_string();
            assert!(
                err.contains("schedule.lr") && err.contains("finite"),
                "{err}"
            );
        }
        assert!(RunConfig::default().validate("default").is_ok());
    }

    #[test]
    fn a_size_list_of_the_wrong_length_is_an_error() {
        for text in [
            "[eval]\ncrop = [64, 64, 3]\n",
            "[uda]\npseudo_label_crop = [15]\n",
            "[hrda]\nhr_crop = [8, 8, 8]\n",
        ] {
            let err = RunConfig::from_toml_str(text, "t.toml")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("exactly") && err.contains("got"),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn a_partial_synth_table_keeps_the_benchmark_pair() {
        let cfg = RunConfig::from_toml_str(
            "[data.synth]\nheight = 32\n[data.synth.target]\nnoise = 0.0\n",
            "t",
        )
        .unwrap();
        let bench = benchmark_synth();
        assert_eq!(cfg.data.synth.height, 32);
        assert_eq!(cfg.data.synth.shift, bench.shift);
        assert_eq!(cfg.data.synth.target.noise, 0.0);
        assert_eq!(cfg.data.synth.target.blur, bench.target.blur);
        assert_eq!(cfg.data.synth.source, bench.source);
        let err = RunConfig::from_toml_str("[data.synth]\nhieght = 3\n", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("hieght"), "{err}");
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        let cfg = RunConfig::default();
        let text = cfg.to_toml().unwrap();
        let back = RunConfig::from_toml_str(&text, "round-trip").unwrap();
        assert_eq!(cfg, back);
    }

    #[test]
    fn semantic_checks_name_the_key() {
        let err = RunConfig::from_toml_str("[train]\niters = 0\n", "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("train.iters"), "{err}");
    }
    #[test]
    fn files_config_parses_and_names_missing_or_bad_keys() {
        let text = "[data]\ndataset = \"files\"\n[data.source]\nkind = \"gta\"\nroot = \"g\"\n[data.target]\nkind = \"cityscapes\"\nroot = \"c\"\n[data.val]\nkind = \"cityscapes\"\nroot = \"c\"\nsplit = \"val\"\n[data.rcs]\nmin_pixels = 100\n";
        let cfg = RunConfig::from_toml_str(text, "x.toml").unwrap();
        assert_eq!(cfg.data.rcs.as_ref().unwrap().class_temp, 0.01);
        let back = RunConfig::from_toml_str(&cfg.to_toml().unwrap(), "round-trip").unwrap();
        assert_eq!(back, cfg);
        let e = RunConfig::from_toml_str("[data]\ndataset = \"files\"\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("data.source is required"), "{e}");
        let bad = text.replace("kind = \"gta\"", "kind = \"gta\"\ncat_max_ratio = 1.5");
        let e = RunConfig::from_toml_str(&bad, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("data.source") && e.contains("cat_max_ratio"),
            "{e}"
        );
    }

    #[test]
    fn a_choice_outside_its_list_names_the_allowed_values() {
        for (text, want) in [
            (
                "[data]\ndataset = \"kitti\"\n",
                "expected `synth` or `files`",
            ),
            ("[eval]\nmode = \"tiles\"\n", "expected `whole` or `slide`"),
            (
                "[train]\nnonfinite = \"retry\"\n",
                "expected `stop` or `skip`",
            ),
        ] {
            let e = RunConfig::from_toml_str(text, "x.toml")
                .unwrap_err()
                .to_string();
            let value = text.split('"').nth(1).unwrap();
            assert!(
                e.contains("x.toml") && e.contains(value) && e.contains(want),
                "{text}: {e}"
            );
        }
    }
}
