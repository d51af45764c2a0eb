//! TensorBoard event files and plots of a tiny training run.
//!
//! The event files are read back by a reader written here, apart from
//! `omuda::tensorboard` (bitwise CRC-32C, its own protocol-buffer walk). The
//! same reader parses `tests/fixtures/tensorboard/`, a file written by the
//! Python `tensorboard` package's own writer (`tests/fixtures/tensorboard_check.py
//! write`), which shows the format is the one TensorBoard writes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn omuda() -> Command {
    Command::new(env!("CARGO_BIN_EXE_omuda"))
}

/// CRC-32C, bit by bit (no table), and TFRecord's mask.
fn crc32c_bitwise(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            let lsb = crc & 1;
            crc >>= 1;
            if lsb == 1 {
                crc ^= 0x82f6_3b78;
            }
        }
    }
    crc ^ 0xffff_ffff
}

fn masked(data: &[u8]) -> u32 {
    let c = crc32c_bitwise(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(buf: &[u8], pos: &mut usize) -> u64 {
    let mut out = 0u64;
    let mut shift = 0;
    loop {
        let b = buf[*pos];
        *pos += 1;
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return out;
        }
        shift += 7;
    }
}

/// (wire type, field, payload) of a message, payload as raw bytes.
fn fields(buf: &[u8]) -> Vec<(u32, u64, Vec<u8>)> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let key = varint(buf, &mut pos);
        let (field, wire) = (key >> 3, (key & 7) as u32);
        let payload = match wire {
            0 => varint(buf, &mut pos).to_le_bytes().to_vec(),
            1 => {
                pos += 8;
                buf[pos - 8..pos].to_vec()
            }
            5 => {
                pos += 4;
                buf[pos - 4..pos].to_vec()
            }
            2 => {
                let n = varint(buf, &mut pos) as usize;
                pos += n;
                buf[pos - n..pos].to_vec()
            }
            w => panic!("unexpected wire type {w}"),
        };
        out.push((wire, field, payload));
    }
    out
}

/// One event record: (file_version, step, scalars).
type Event = (Option<String>, i64, Vec<(String, f32)>);

/// Every record of an event file, CRCs checked.
fn parse_events(path: &Path) -> Vec<Event> {
    let bytes = std::fs::read(path).unwrap();
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < bytes.len() {
        let len_bytes = &bytes[pos..pos + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        assert_eq!(
            u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().unwrap()),
            masked(len_bytes),
            "length CRC at {pos}"
        );
        let data = &bytes[pos + 12..pos + 12 + len];
        assert_eq!(
            u32::from_le_bytes(bytes[pos + 12 + len..pos + 16 + len].try_into().unwrap()),
            masked(data),
            "data CRC at {pos}"
        );
        pos += 16 + len;
        let (mut version, mut step, mut scalars) = (None, 0i64, Vec::new());
        for (wire, field, payload) in fields(data) {
            match (field, wire) {
                (2, 0) => step = u64::from_le_bytes(payload.try_into().unwrap()) as i64,
                (3, 2) => version = Some(String::from_utf8(payload).unwrap()),
                (5, 2) => {
                    for (_, f, value) in fields(&payload) {
                        assert_eq!(f, 1, "Summary.value");
                        let mut tag = String::new();
                        let mut v = None;
                        for (w, g, p) in fields(&value) {
                            match (g, w) {
                                (1, 2) => tag = String::from_utf8(p).unwrap(),
                                (2, 5) => v = Some(f32::from_le_bytes(p.try_into().unwrap())),
                                _ => {}
                            }
                        }
                        scalars.push((tag, v.expect("simple_value")));
                    }
                }
                _ => {}
            }
        }
        out.push((version, step, scalars));
    }
    out
}

#[test]
fn bitwise_crc_matches_the_published_check_value() {
    assert_eq!(crc32c_bitwise(b"123456789"), 0xe306_9283);
}

#[test]
fn reader_parses_an_event_file_written_by_tensorboard() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tensorboard");
    let files = omuda::tensorboard::event_files(&dir).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    let events = parse_events(&files[0]);
    assert_eq!(events[0].0.as_deref(), Some("brain.Event:2"));
    let steps: Vec<_> = events.iter().skip(1).map(|e| e.1).collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5]);
    for (_, step, scalars) in events.iter().skip(1) {
        assert_eq!(scalars[0], ("loss/a".to_string(), 0.5 * *step as f32));
        assert_eq!(scalars[1], ("lr".to_string(), (1e-4 / *step as f64) as f32));
    }
    // omuda's own reader agrees with the independent one.
    let ours = omuda::tensorboard::read_events(&files[0]).unwrap();
    let via_ours: Vec<_> = ours
        .iter()
        .map(|e| (e.file_version.clone(), e.step, e.scalars.clone()))
        .collect();
    assert_eq!(via_ours, events);
}

#[test]
fn training_writes_tensorboard_scalars_matching_the_log_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(
        &cfg,
        "[train]\niters = 4\nlog_interval = 2\neval_interval = 2\n[data.synth]\nheight = 32\nwidth = 64\nval_size = 4\ndev_size = 4\ntest_size = 4\n[schedule]\nwarmup_iters = 1\n",
    )
    .unwrap();
    let out = dir.path().join("run");
    let res = omuda()
        .args([
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--method",
            "source_only,dacs",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );

    let files = omuda::tensorboard::event_files(&out.join("dacs/tb")).unwrap();
    assert_eq!(files.len(), 1);
    let events = parse_events(&files[0]);
    assert_eq!(events[0].0.as_deref(), Some("brain.Event:2"));
    let mut by_tag: BTreeMap<String, Vec<(i64, f32)>> = BTreeMap::new();
    for (_, step, scalars) in &events[1..] {
        for (t, v) in scalars {
            by_tag.entry(t.clone()).or_default().push((*step, *v));
        }
    }
    // Same values as log.jsonl, at the logged iterations.
    let log = std::fs::read_to_string(out.join("dacs/log.jsonl")).unwrap();
    let mut n_steps = 0;
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let iter = v["iter"].as_i64().unwrap();
        if v["type"] == "step" {
            n_steps += 1;
            for k in ["loss_src", "loss_mix"] {
                let want = v["losses"][k].as_f64().unwrap() as f32;
                assert!(
                    by_tag[&format!("loss/{k}")].contains(&(iter, want)),
                    "{k} at {iter}"
                );
            }
            assert!(by_tag["train/lr"].contains(&(iter, v["lr"].as_f64().unwrap() as f32)));
            // The log line carries timing, ETA and peak memory.
            for k in ["time_iter", "data_time", "eta_s"] {
                assert!(v[k].as_f64().is_some(), "{k} in {line}");
            }
            if cfg!(target_os = "linux") {
                assert!(v["peak_mem_mib"].as_f64().unwrap() > 1.0, "{line}");
            }
        } else if v["type"] == "eval" {
            assert_eq!(v["split"], "dev", "{line}");
            assert!(by_tag["eval/target_dev_miou"]
                .contains(&(iter, v["target_miou"].as_f64().unwrap() as f32)));
        }
    }
    assert_eq!(n_steps, 2, "log_interval 2 over 4 iterations");
    assert_eq!(
        by_tag["eval/target_dev_miou"]
            .iter()
            .map(|p| p.0)
            .collect::<Vec<_>>(),
        vec![2, 4]
    );

    // Plots of the run: non-empty PNGs that decode, with drawn content.
    let res = omuda()
        .args(["plot", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    for p in [
        "plots/total_loss.png",
        "plots/lr.png",
        "plots/target_miou.png",
        "dacs/plots/losses.png",
        "source_only/plots/losses.png",
    ] {
        let path = out.join(p);
        let img = image::open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .to_rgb8();
        let drawn = img.pixels().filter(|px| px.0 != [255, 255, 255]).count();
        assert!(drawn > 2000, "{p}: only {drawn} non-white pixels");
    }
    let res = omuda()
        .args(["plot", dir.path().join("nothing").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!res.status.success());
}
