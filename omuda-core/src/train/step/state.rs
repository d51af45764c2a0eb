//! Saving and restoring the whole state of a step: student, teacher,
//! optimizer moments, hook state, iteration and RNG.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::SelfTraining;
use crate::nn::varmap_io::{load_varmap, save_varmap};
use crate::rng_state::RngState;
use crate::{Error, Result};

impl SelfTraining {
    /// Student, teacher, optimizer moments, hook state, iteration and RNG.
    /// Written whole or not at all: into a temporary folder renamed over `dir`.
    pub fn save_state(&self, dir: &Path) -> Result<()> {
        crate::io::replace_dir_atomic(dir, |tmp| self.write_state(tmp))
    }

    fn write_state(&self, dir: &Path) -> Result<()> {
        save_varmap(&self.student_vars, &dir.join("student.safetensors"))?;
        if let Some((_, vars)) = &self.teacher {
            save_varmap(vars, &dir.join("teacher.safetensors"))?;
        }
        self.optimizer.save(&dir.join("optimizer.safetensors"))?;
        for h in &self.hooks {
            let state = h.state()?;
            if !state.is_empty() {
                let path = dir.join(format!("hook_{}.safetensors", h.name()));
                candle_core::safetensors::save(&state, &path)
                    .map_err(|e| Error::file(&path, e.to_string()))?;
            }
        }
        let state = StepState {
            method: self.spec.name.clone(),
            iter: self.iter,
            optimizer_steps: self.optimizer.steps(),
            rng: RngState::capture(&self.rng),
            skipped_steps: self.skipped_steps,
        };
        let path = dir.join("state.json");
        let json =
            serde_json::to_string_pretty(&state).map_err(|e| Error::file(&path, e.to_string()))?;
        std::fs::write(&path, json).map_err(|e| Error::io(&path, e))?;
        Ok(())
    }

    pub fn load_state(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join("state.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let state: StepState =
            serde_json::from_str(&text).map_err(|e| Error::file(&path, e.to_string()))?;
        load_varmap(&self.student_vars, &dir.join("student.safetensors"))?;
        if let Ok(cached) = self.eval_student.get_mut() {
            *cached = None;
        }
        if let Some((_, vars)) = &self.teacher {
            load_varmap(vars, &dir.join("teacher.safetensors"))?;
        }
        self.optimizer
            .load(&dir.join("optimizer.safetensors"), state.optimizer_steps)?;
        for h in self.hooks.iter_mut() {
            let path = dir.join(format!("hook_{}.safetensors", h.name()));
            if path.exists() {
                let map = candle_core::safetensors::load(&path, &self.device)
                    .map_err(|e| Error::file(&path, e.to_string()))?;
                h.load_state(&map)?;
            }
        }
        self.iter = state.iter;
        self.rng = state.rng.restore()?;
        self.skipped_steps = state.skipped_steps;
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepState {
    method: String,
    iter: usize,
    optimizer_steps: usize,
    rng: RngState,
    /// Steps skipped for a non-finite loss or gradient (absent in older checkpoints).
    #[serde(default)]
    skipped_steps: usize,
}
