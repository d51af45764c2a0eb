//! TensorBoard event files with scalar summaries, written without TensorFlow.
//!
//! An event file (`events.out.tfevents.<time>.<host>...`) is a sequence of
//! TFRecords:
//!
//! ```text
//! u64 length (LE) | u32 masked CRC32C of the 8 length bytes | data | u32 masked CRC32C of data
//! ```
//!
//! where the mask is `((crc >> 15) | (crc << 17)) + 0xa282ead8`, and `data`
//! is a serialised `tensorflow.Event` protocol buffer. The first event holds
//! `file_version = "brain.Event:2"`; each later one holds a step, a wall time
//! and a `Summary` of `(tag, simple_value)` pairs. Only the fields used here are
//! encoded and decoded.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::io::write_atomic;
use crate::{Error, Result};

const MASK_DELTA: u32 = 0xa282_ead8;

fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0x82f6_3b78 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *slot = c;
    }
    table
}

/// CRC-32C (Castagnoli) of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(crc32c_table);
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The masked CRC stored in TFRecords.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(MASK_DELTA)
}

/// One framed record.
pub fn encode_record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, ((field << 3) | 2) as u64);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A decoded event: what this module writes and reads back.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Event {
    pub wall_time: f64,
    pub step: i64,
    pub file_version: Option<String>,
    /// (tag, simple_value) pairs of the summary.
    pub scalars: Vec<(String, f32)>,
}

impl Event {
    /// The `tensorflow.Event` protocol buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.push(0x09); // field 1, fixed64: wall_time
        out.extend_from_slice(&self.wall_time.to_le_bytes());
        if self.step != 0 {
            out.push(0x10); // field 2, varint: step
            put_varint(&mut out, self.step as u64);
        }
        if let Some(v) = &self.file_version {
            put_bytes(&mut out, 3, v.as_bytes());
        }
        if !self.scalars.is_empty() {
            let mut summary = Vec::new();
            for (tag, value) in &self.scalars {
                let mut v = Vec::new();
                put_bytes(&mut v, 1, tag.as_bytes()); // Summary.Value.tag
                v.push(0x15); // field 2, fixed32: simple_value
                v.extend_from_slice(&value.to_le_bytes());
                put_bytes(&mut summary, 1, &v); // Summary.value
            }
            put_bytes(&mut out, 5, &summary); // Event.summary
        }
        out
    }

    /// Decode the fields this module knows; others are skipped.
    pub fn decode(data: &[u8]) -> Result<Self> {
        let mut ev = Event::default();
        for (field, value) in Fields::new(data) {
            match (field?, value) {
                (1, FieldValue::Fixed64(b)) => ev.wall_time = f64::from_le_bytes(b),
                (2, FieldValue::Varint(v)) => ev.step = v as i64,
                (3, FieldValue::Bytes(b)) => {
                    ev.file_version = Some(String::from_utf8_lossy(b).into_owned())
                }
                (5, FieldValue::Bytes(summary)) => {
                    for (f, v) in Fields::new(summary) {
                        if let (1, FieldValue::Bytes(value)) = (f?, v) {
                            let (mut tag, mut simple) = (String::new(), None);
                            for (g, w) in Fields::new(value) {
                                match (g?, w) {
                                    (1, FieldValue::Bytes(t)) => {
                                        tag = String::from_utf8_lossy(t).into_owned()
                                    }
                                    (2, FieldValue::Fixed32(b)) => {
                                        simple = Some(f32::from_le_bytes(b))
                                    }
                                    _ => {}
                                }
                            }
                            if let Some(s) = simple {
                                ev.scalars.push((tag, s));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(ev)
    }
}

enum FieldValue<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Fixed32([u8; 4]),
    Bytes(&'a [u8]),
    Invalid,
}

/// Iterator over (field number, value) of a protocol buffer message.
struct Fields<'a> {
    data: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Fields<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            failed: false,
        }
    }
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.data.get(self.pos)?;
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.data.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = (Result<u32>, FieldValue<'a>);
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.data.len() {
            return None;
        }
        let bad = |what: &str| {
            (
                Err(Error::msg(format!("event protocol buffer: {what}"))),
                FieldValue::Invalid,
            )
        };
        let Some(key) = self.varint() else {
            self.failed = true;
            return Some(bad("truncated field key"));
        };
        let field = (key >> 3) as u32;
        let value = match key & 7 {
            0 => self.varint().map(FieldValue::Varint),
            1 => self
                .take(8)
                .and_then(|b| b.try_into().ok())
                .map(FieldValue::Fixed64),
            5 => self
                .take(4)
                .and_then(|b| b.try_into().ok())
                .map(FieldValue::Fixed32),
            2 => self
                .varint()
                .and_then(|n| self.take(n as usize))
                .map(FieldValue::Bytes),
            _ => None,
        };
        match value {
            Some(v) => Some((Ok(field), v)),
            None => {
                self.failed = true;
                Some(bad(&format!(
                    "field {field}: unsupported wire type or truncated value"
                )))
            }
        }
    }
}

/// Split an event file's bytes into records, checking both CRCs of each.
pub fn read_records(path: &Path, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let at = |m: &str| Error::file(path, format!("record at byte {pos}: {m}"));
        let head = bytes
            .get(pos..pos + 12)
            .ok_or_else(|| at("truncated header"))?;
        let len_bytes: [u8; 8] = head[..8].try_into().map_err(|_| at("header"))?;
        let len_crc = u32::from_le_bytes(head[8..12].try_into().map_err(|_| at("header"))?);
        if masked_crc32c(&len_bytes) != len_crc {
            return Err(at("length CRC mismatch"));
        }
        let len = u64::from_le_bytes(len_bytes) as usize;
        let data = bytes
            .get(pos + 12..pos + 12 + len)
            .ok_or_else(|| at("truncated data"))?;
        let crc_bytes = bytes
            .get(pos + 12 + len..pos + 16 + len)
            .ok_or_else(|| at("truncated data CRC"))?;
        if masked_crc32c(data)
            != u32::from_le_bytes(crc_bytes.try_into().map_err(|_| at("data CRC"))?)
        {
            return Err(at("data CRC mismatch"));
        }
        out.push(data.to_vec());
        pos += 16 + len;
    }
    Ok(out)
}

/// Every event of an event file, CRCs checked.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    read_records(path, &bytes)?
        .iter()
        .map(|r| Event::decode(r).map_err(|e| Error::file(path, e.to_string())))
        .collect()
}

/// The event files in `dir`, by name.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("events.out.tfevents."))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Drop the scalar events after `step` from every event file in `dir` (each
/// file rewritten atomically; a torn last record, as a kill can leave, is
/// dropped too). A resumed run calls this so the curves hold each step once.
pub fn truncate_after(dir: &Path, step: i64) -> Result<()> {
    for path in event_files(dir)? {
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let mut kept = Vec::new();
        let mut pos = 0usize;
        while pos + 12 <= bytes.len() {
            let len = u64::from_le_bytes(
                bytes[pos..pos + 8]
                    .try_into()
                    .map_err(|_| Error::file(&path, "record header"))?,
            ) as usize;
            let Some(record) = bytes.get(pos..pos + 16 + len) else {
                break;
            };
            let frame = read_records(&path, record)?;
            let ev = Event::decode(&frame[0]).map_err(|e| Error::file(&path, e.to_string()))?;
            if ev.file_version.is_some() || ev.step <= step {
                kept.extend_from_slice(record);
            }
            pos += 16 + len;
        }
        if kept.len() != bytes.len() {
            write_atomic(&path, &kept)?;
        }
    }
    Ok(())
}

/// Appends scalar events to one new event file in a folder.
pub struct EventWriter {
    path: PathBuf,
    file: BufWriter<File>,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl EventWriter {
    /// Create `dir/events.out.tfevents.<unix time>.<host>.<pid>` and write the version event.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| {
                h.trim()
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect::<String>()
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let wall = now();
        let path = dir.join(format!(
            "events.out.tfevents.{}.{host}.{}",
            wall as u64,
            std::process::id()
        ));
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut w = Self {
            path,
            file: BufWriter::new(file),
        };
        w.write(&Event {
            wall_time: wall,
            step: 0,
            file_version: Some("brain.Event:2".into()),
            scalars: vec![],
        })?;
        w.flush()?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, ev: &Event) -> Result<()> {
        self.file
            .write_all(&encode_record(&ev.encode()))
            .map_err(|e| Error::io(&self.path, e))
    }

    /// One event at `step` holding every (tag, value); non-finite values are written as they are.
    pub fn scalars(&mut self, step: i64, values: &[(String, f64)]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let scalars = values.iter().map(|(t, v)| (t.clone(), *v as f32)).collect();
        self.write(&Event {
            wall_time: now(),
            step,
            file_version: None,
            scalars,
        })?;
        self.flush()
    }

    /// Push buffered records to the file.
    pub fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_values() {
        // RFC 3720 B.4 test vectors.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn round_trip_and_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        for s in 1..=5 {
            w.scalars(s, &[("loss/a".into(), s as f64 * 0.5), ("lr".into(), 1e-4)])
                .unwrap();
        }
        let path = w.path().to_path_buf();
        drop(w);
        let evs = read_events(&path).unwrap();
        assert_eq!(evs.len(), 6);
        assert_eq!(evs[0].file_version.as_deref(), Some("brain.Event:2"));
        assert_eq!(evs[3].step, 3);
        assert_eq!(
            evs[3].scalars,
            vec![("loss/a".to_string(), 1.5f32), ("lr".to_string(), 1e-4f32)]
        );
        // A torn record at the end (a kill mid-write) is dropped with the later steps.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&path, &bytes).unwrap();
        truncate_after(dir.path(), 2).unwrap();
        let steps: Vec<i64> = read_events(&path).unwrap().iter().map(|e| e.step).collect();
        assert_eq!(steps, vec![0, 1, 2]);
        // A flipped bit is a CRC error naming the file.
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 6] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let e = read_events(&path).unwrap_err().to_string();
        assert!(e.contains("CRC") && e.contains("events.out"), "{e}");
    }
}
