//! The real-dataset UDA loader: decodes, augments and normalises batches on
//! background threads, keeping up to `prefetch` batches ready ahead of the
//! training step.
//!
//! Determinism: batch `i` is a pure function of (seed, i). Every sample slot
//! of every batch draws from its own ChaCha8 generator seeded from
//! (seed, i, slot), so the batches are the same for any number of worker
//! threads, and a run resumed at batch `i` ([`UdaLoader::start_at`]) sees the
//! same data as an uninterrupted one.
//!
//! Sampling: with RCS (`lhoyer/MIC
//! seg/mmseg/datasets/uda_dataset.py::UDADataset.get_rare_class_sample`) each
//! source sample draws a class from the RCS distribution, a file uniformly
//! among that class's candidates, then re-crops up to 10 times until the crop
//! holds enough pixels of the class; without RCS the source frame is uniform.
//! The target frame is uniform. (mmseg shuffles the product set of source ×
//! target frames; independent uniform draws have the same marginal
//! distribution.)

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::datasets::Dataset;
use super::loader::{IMAGENET_MEAN, IMAGENET_STD};
use super::pipeline::{PipelineConfig, Prepared};
use super::rcs::{crop_has_class, RcsSampler};
use super::synth::Sample;
use super::valid_region::{margin_mask, transform_mask};
use crate::data::batch::UdaBatch;
use crate::{Error, Result};

/// One domain: a dataset and its training pipeline.
#[derive(Debug, Clone)]
pub struct DomainData {
    pub dataset: Arc<Dataset>,
    pub pipeline: PipelineConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderOptions {
    pub batch_size: usize,
    pub seed: u64,
    /// Background threads; 0 produces each batch on the caller's thread.
    pub workers: usize,
    /// Batches kept ready ahead of the consumer (at least 1).
    pub prefetch: usize,
}

/// A batch on the host: normalised CHW images and labels.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    pub index: u64,
    /// (B, H, W) of the source images.
    pub source_dims: (usize, usize, usize),
    pub source_image: Vec<f32>,
    pub source_label: Vec<u32>,
    pub target_dims: (usize, usize, usize),
    pub target_image: Vec<f32>,
    /// (B, H, W) valid-pseudo-label mask of the targets (empty: none).
    pub target_valid: Vec<f32>,
    /// Source and target frame indices of each slot.
    pub source_frames: Vec<usize>,
    pub target_frames: Vec<usize>,
    /// The RCS class of each source slot.
    pub rcs_classes: Vec<Option<u8>>,
}

impl HostBatch {
    pub fn to_uda_batch(&self, device: &Device) -> Result<UdaBatch> {
        let (b, h, w) = self.source_dims;
        let (tb, th, tw) = self.target_dims;
        Ok(UdaBatch {
            source_image: Tensor::from_slice(&self.source_image, (b, 3, h, w), device)?,
            source_label: Tensor::from_slice(&self.source_label, (b, h, w), device)?,
            target_image: Tensor::from_slice(&self.target_image, (tb, 3, th, tw), device)?,
            target_valid: if self.target_valid.is_empty() {
                None
            } else {
                Some(Tensor::from_slice(
                    &self.target_valid,
                    (tb, th, tw),
                    device,
                )?)
            },
        })
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator of one sample slot of one batch.
pub fn slot_rng(seed: u64, batch: u64, slot: u64, domain: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(splitmix(
        splitmix(splitmix(seed) ^ batch) ^ (slot << 1 | domain),
    ))
}

/// Append `s` as normalised CHW floats (ImageNet mean/std, RGB).
pub fn normalize_into(s: &Sample, out: &mut Vec<f32>) {
    let n = s.height * s.width;
    for c in 0..3 {
        let (m, sd) = (IMAGENET_MEAN[c], IMAGENET_STD[c]);
        let inv = 1.0 / sd;
        out.extend(
            s.image
                .iter()
                .skip(c)
                .step_by(3)
                .take(n)
                .map(|&v| (f32::from(v) - m) * inv),
        );
    }
}

/// Makes batches; shared by the worker threads.
pub struct Producer {
    pub source: DomainData,
    pub target: DomainData,
    pub rcs: Option<RcsSampler>,
    pub batch_size: usize,
    pub seed: u64,
    /// Pseudo-label margins `[top, bottom, left, right]` at the target's
    /// original frame resolution (`uda.pseudo_margins`); `None`: no mask.
    pub target_margins: Option<[usize; 4]>,
}

impl Producer {
    pub fn new(
        source: DomainData,
        target: DomainData,
        rcs: Option<RcsSampler>,
        batch_size: usize,
        seed: u64,
    ) -> Result<Self> {
        if source.dataset.is_empty() || target.dataset.is_empty() {
            return Err(Error::msg(format!(
                "loader: the source ({}, {} frames) and target ({}, {} frames) datasets must both have frames",
                source.dataset.name,
                source.dataset.len(),
                target.dataset.name,
                target.dataset.len()
            )));
        }
        if source.dataset.frames.iter().any(|f| f.label.is_none()) {
            return Err(Error::msg(format!(
                "loader: source dataset {} has frames without labels",
                source.dataset.name
            )));
        }
        if batch_size == 0 {
            return Err(Error::msg("loader: batch size must be at least 1"));
        }
        Ok(Self {
            source,
            target,
            rcs,
            batch_size,
            seed,
            target_margins: None,
        })
    }

    /// The same producer with target valid-region masks (`lhoyer/HRDA
    /// mmseg/datasets/cityscapes.py::CityscapesDataset.pre_pipeline`).
    pub fn with_target_margins(mut self, margins: Option<[usize; 4]>) -> Self {
        self.target_margins = margins;
        self
    }

    /// One source sample of slot `slot` of batch `index`: (sample, frame, RCS class).
    pub fn source_sample(&self, index: u64, slot: usize) -> Result<(Sample, usize, Option<u8>)> {
        let mut rng = slot_rng(self.seed, index, slot as u64, 0);
        let ds = &self.source.dataset;
        let p = &self.source.pipeline;
        let (class, frame) = match &self.rcs {
            Some(r) => {
                let (c, f) = r.draw(&mut rng);
                (Some(c), f)
            }
            None => (None, rng.gen_range(0..ds.len())),
        };
        let prep = Prepared::new(ds.load(frame)?, p);
        prep.check_fits(p, "data.source", &frame_name(ds, frame))?;
        let mut b = prep.draw_box(p, &mut rng);
        if let (Some(c), Some(r)) = (class, &self.rcs) {
            if r.cfg.min_crop_ratio > 0.0 {
                // At most 10 re-crops; the last one is used unchecked.
                for _ in 0..10 {
                    if crop_has_class(prep.count_in_box(b, c), &r.cfg) {
                        break;
                    }
                    b = prep.draw_box(p, &mut rng);
                }
            }
        }
        let flip = rng.gen_bool(p.flip_prob);
        Ok((prep.finish(p, b, flip), frame, class))
    }

    pub fn target_sample(&self, index: u64, slot: usize) -> Result<(Sample, usize)> {
        let (s, frame, _) = self.target_sample_valid(index, slot)?;
        Ok((s, frame))
    }

    /// A target sample, its frame, and (with `target_margins`) its valid
    /// pseudo-label mask: built at the original frame size and taken through
    /// the same resize, crop and flip as the image.
    pub fn target_sample_valid(
        &self,
        index: u64,
        slot: usize,
    ) -> Result<(Sample, usize, Option<Vec<f32>>)> {
        let mut rng = slot_rng(self.seed, index, slot as u64, 1);
        let ds = &self.target.dataset;
        let p = &self.target.pipeline;
        let frame = rng.gen_range(0..ds.len());
        let (w, h, image) = ds.load_image(frame)?;
        // Target labels are never used for training: an all-ignore map.
        let prep = Prepared::image_only(image, w, h, p);
        prep.check_fits(p, "data.target", &frame_name(ds, frame))?;
        // The draws of `Prepared::sample`, in its order.
        let b = prep.draw_box(p, &mut rng);
        let flip = rng.gen_bool(p.flip_prob);
        let s = prep.finish(p, b, flip);
        let valid = self.target_margins.map(|m| {
            transform_mask(
                &margin_mask(w, h, m),
                (w, h),
                (prep.rw, prep.rh),
                b,
                flip,
                (s.width, s.height),
            )
        });
        Ok((s, frame, valid))
    }

    /// Batch `index`, a pure function of (seed, index).
    pub fn batch(&self, index: u64) -> Result<HostBatch> {
        let bsz = self.batch_size;
        let mut out = HostBatch {
            index,
            source_dims: (bsz, 0, 0),
            source_image: Vec::new(),
            source_label: Vec::new(),
            target_dims: (bsz, 0, 0),
            target_image: Vec::new(),
            target_valid: Vec::new(),
            source_frames: Vec::with_capacity(bsz),
            target_frames: Vec::with_capacity(bsz),
            rcs_classes: Vec::with_capacity(bsz),
        };
        for slot in 0..bsz {
            let (s, f, c) = self.source_sample(index, slot)?;
            check_dims(&mut out.source_dims, &s, "source", &self.source.dataset, f)?;
            normalize_into(&s, &mut out.source_image);
            out.source_label
                .extend(s.label.iter().map(|&l| u32::from(l)));
            out.source_frames.push(f);
            out.rcs_classes.push(c);
            let (t, tf, valid) = self.target_sample_valid(index, slot)?;
            check_dims(&mut out.target_dims, &t, "target", &self.target.dataset, tf)?;
            normalize_into(&t, &mut out.target_image);
            if let Some(v) = valid {
                out.target_valid.extend(v);
            }
            out.target_frames.push(tf);
        }
        Ok(out)
    }
}

fn check_dims(
    dims: &mut (usize, usize, usize),
    s: &Sample,
    what: &str,
    ds: &Dataset,
    frame: usize,
) -> Result<()> {
    if dims.1 == 0 {
        dims.1 = s.height;
        dims.2 = s.width;
        return Ok(());
    }
    if (dims.1, dims.2) != (s.height, s.width) {
        let path = ds
            .frames
            .get(frame)
            .map(|f| f.image.clone())
            .unwrap_or_default();
        return Err(Error::file(
            path,
            format!(
                "{what} sample is {}×{} after the pipeline but the batch is {}×{}: set a crop so all samples have one size",
                s.width, s.height, dims.2, dims.1
            ),
        ));
    }
    Ok(())
}

struct State {
    next_to_make: u64,
    consumed: u64,
    ready: BTreeMap<u64, Result<HostBatch>>,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    prefetch: u64,
}

/// Prefetching loader of UDA batches from real datasets.
pub struct UdaLoader {
    producer: Arc<Producer>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    next: u64,
    device: Device,
    /// Seconds the consumer spent waiting for a batch.
    pub wait_seconds: f64,
    pub batches: u64,
}

impl UdaLoader {
    pub fn new(producer: Producer, opts: LoaderOptions, device: &Device) -> Result<Self> {
        Self::start_at(producer, opts, device, 0)
    }

    /// A loader whose first batch is batch `first` (resuming a run).
    pub fn start_at(
        producer: Producer,
        opts: LoaderOptions,
        device: &Device,
        first: u64,
    ) -> Result<Self> {
        let producer = Arc::new(producer);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_to_make: first,
                consumed: first,
                ready: BTreeMap::new(),
                stop: false,
            }),
            cv: Condvar::new(),
            prefetch: opts.prefetch.max(1) as u64,
        });
        let mut threads = Vec::new();
        for w in 0..opts.workers {
            let (p, s) = (producer.clone(), shared.clone());
            let t = std::thread::Builder::new()
                .name(format!("omuda-loader-{w}"))
                .spawn(move || worker(&p, &s))
                .map_err(|e| Error::msg(format!("loader: cannot start a worker thread: {e}")))?;
            threads.push(t);
        }
        Ok(Self {
            producer,
            shared,
            threads,
            next: first,
            device: device.clone(),
            wait_seconds: 0.0,
            batches: 0,
        })
    }

    /// Index of the next batch [`UdaLoader::next_host_batch`] returns.
    pub fn position(&self) -> u64 {
        self.next
    }

    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// The next batch on the host.
    pub fn next_host_batch(&mut self) -> Result<HostBatch> {
        let idx = self.next;
        let t0 = Instant::now();
        let result = if self.threads.is_empty() {
            self.producer.batch(idx)
        } else {
            let mut st = self
                .shared
                .state
                .lock()
                .map_err(|_| Error::msg("loader: worker state poisoned"))?;
            loop {
                if let Some(r) = st.ready.remove(&idx) {
                    st.consumed = idx + 1;
                    self.shared.cv.notify_all();
                    break r;
                }
                st = self
                    .shared
                    .cv
                    .wait(st)
                    .map_err(|_| Error::msg("loader: worker state poisoned"))?;
            }
        };
        self.wait_seconds += t0.elapsed().as_secs_f64();
        self.batches += 1;
        self.next += 1;
        result
    }

    pub fn next_batch(&mut self) -> Result<UdaBatch> {
        let hb = self.next_host_batch()?;
        hb.to_uda_batch(&self.device)
    }

    /// Continue at batch `index` (batches are a pure function of (seed, index)).
    pub fn seek(&mut self, index: u64) -> Result<()> {
        let mut st = self
            .shared
            .state
            .lock()
            .map_err(|_| Error::msg("loader: worker state poisoned"))?;
        st.ready.clear();
        st.next_to_make = index;
        st.consumed = index;
        self.next = index;
        self.shared.cv.notify_all();
        Ok(())
    }

    /// `{"seed": …, "next_batch": …}`: all a resumed run needs.
    pub fn order_state(&self) -> serde_json::Value {
        serde_json::json!({ "seed": self.producer.seed, "next_batch": self.next })
    }

    pub fn restore_order_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let seed = state.get("seed").and_then(serde_json::Value::as_u64);
        let next = state.get("next_batch").and_then(serde_json::Value::as_u64);
        let (Some(seed), Some(next)) = (seed, next) else {
            return Err(Error::msg(format!(
                "loader order state {state}: expected {{\"seed\": n, \"next_batch\": n}}"
            )));
        };
        if seed != self.producer.seed {
            return Err(Error::msg(format!(
                "loader order state was saved with seed {seed}, this run's loader has seed {}",
                self.producer.seed
            )));
        }
        self.seek(next)
    }
}

fn worker(p: &Producer, s: &Shared) {
    loop {
        let idx = {
            let Ok(mut st) = s.state.lock() else { return };
            while !st.stop && st.next_to_make >= st.consumed + s.prefetch {
                st = match s.cv.wait(st) {
                    Ok(g) => g,
                    Err(_) => return,
                };
            }
            if st.stop {
                return;
            }
            st.next_to_make += 1;
            st.next_to_make - 1
        };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.batch(idx)))
            .unwrap_or_else(|_| {
                Err(Error::msg(format!(
                    "loader: a worker panicked while making batch {idx}"
                )))
            });
        let Ok(mut st) = s.state.lock() else { return };
        // After a seek, batches before the new position are no longer wanted.
        if idx >= st.consumed {
            st.ready.insert(idx, r);
        }
        s.cv.notify_all();
    }
}

impl Drop for UdaLoader {
    fn drop(&mut self) {
        if let Ok(mut st) = self.shared.state.lock() {
            st.stop = true;
        }
        self.shared.cv.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl crate::data::batch::BatchSource for UdaLoader {
    fn next_batch(&mut self) -> Result<UdaBatch> {
        UdaLoader::next_batch(self)
    }

    fn order_state(&self) -> Result<serde_json::Value> {
        Ok(UdaLoader::order_state(self))
    }

    fn restore_order_state(&mut self, state: &serde_json::Value) -> Result<()> {
        UdaLoader::restore_order_state(self, state)
    }
}
/// The image file of frame `i`, for error messages.
fn frame_name(ds: &Dataset, i: usize) -> String {
    ds.frames
        .get(i)
        .map(|f| f.image.display().to_string())
        .unwrap_or_else(|| format!("frame {i}"))
}
