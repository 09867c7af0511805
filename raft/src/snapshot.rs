//! Snapshots of the ledger state machine: their two formats and the file that keeps one.
//!
//! Format 2 (sent once the cluster applies ledger rules 4): [`MAGIC`], then frames of a kind
//! byte, a little-endian `u32` length and that many bytes: first the header (JSON: heartbeats
//! and cluster settings), then one frame per record (the record's JSON exactly as the `ledger`
//! column family stores it) and one per serial (`u16` length of the serial, the serial, the
//! identity). The store writes it from a RocksDB snapshot taken at an applied point, so apply
//! goes on while it is written and records are copied, not encoded again (see
//! `store::build_snapshot`).
//!
//! Format 1 is the whole state machine as one JSON document: what members before rules 4 send
//! and read. Both are read; which one is built follows the applied rules, so a member of the
//! previous build is never sent one it cannot read.
//!
//! A member keeps its current snapshot in `snapshot/current` under its store's directory
//! (written to a temporary file, synced, renamed), its meta in the store.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::state::{ClusterSettings, LedgerState, Record};

/// The first bytes of a format 2 snapshot.
pub const MAGIC: &[u8] = b"PROVSNAP2\n";
/// The ledger rules from which snapshots are built in format 2.
pub const FORMAT2_RULES: u32 = 4;

const HEADER: u8 = 1;
const RECORD: u8 = 2;
const SERIAL: u8 = 3;

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("snapshot truncated at byte {0}")]
    Truncated(usize),
    #[error("snapshot frame of unknown kind {kind} at byte {at}")]
    UnknownFrame { kind: u8, at: usize },
    #[error("snapshot has no header")]
    NoHeader,
    #[error("snapshot {what}: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("snapshot serial is not UTF-8")]
    NotUtf8,
    #[error("snapshot file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    heartbeats: BTreeMap<String, u64>,
    settings: ClusterSettings,
}

/// Format 2, written frame by frame.
pub struct Writer {
    buf: Vec<u8>,
    records: usize,
}

impl Writer {
    pub fn new(
        heartbeats: &BTreeMap<String, u64>,
        settings: &ClusterSettings,
    ) -> Result<Writer, SnapshotError> {
        let header = serde_json::to_vec(&serde_json::json!({
            "heartbeats": heartbeats,
            "settings": settings,
        }))
        .map_err(|source| SnapshotError::Json {
            what: "header",
            source,
        })?;
        let mut w = Writer {
            buf: MAGIC.to_vec(),
            records: 0,
        };
        w.frame(HEADER, &[&header]);
        Ok(w)
    }

    fn frame(&mut self, kind: u8, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.buf.push(kind);
        self.buf.extend_from_slice(&(len as u32).to_le_bytes());
        for p in parts {
            self.buf.extend_from_slice(p);
        }
    }

    /// A record, as the store keeps it (JSON).
    pub fn record(&mut self, stored: &[u8]) {
        self.records += 1;
        self.frame(RECORD, &[stored]);
    }

    pub fn serial(&mut self, serial: &[u8], identity: &[u8]) {
        let n = (serial.len() as u16).to_le_bytes();
        self.frame(SERIAL, &[&n, serial, identity]);
    }

    pub fn records(&self) -> usize {
        self.records
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// The ledger a snapshot of either format holds. `format1` reads the whole state machine
/// document of format 1 (its type lives with the store).
pub fn decode(
    data: &[u8],
    format1: impl FnOnce(&[u8]) -> Result<LedgerState, serde_json::Error>,
) -> Result<LedgerState, SnapshotError> {
    let Some(mut rest) = data.strip_prefix(MAGIC) else {
        return format1(data).map_err(|source| SnapshotError::Json {
            what: "document",
            source,
        });
    };
    let mut header: Option<Header> = None;
    let mut raw: Vec<&[u8]> = Vec::new();
    let mut serials = HashMap::new();
    while !rest.is_empty() {
        let at = data.len() - rest.len();
        if rest.len() < 5 {
            return Err(SnapshotError::Truncated(at));
        }
        let kind = rest[0];
        let len = u32::from_le_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let body = rest.get(5..5 + len).ok_or(SnapshotError::Truncated(at))?;
        rest = &rest[5 + len..];
        match kind {
            HEADER => {
                header =
                    Some(
                        serde_json::from_slice(body).map_err(|source| SnapshotError::Json {
                            what: "header",
                            source,
                        })?,
                    )
            }
            RECORD => raw.push(body),
            SERIAL => {
                let n = body
                    .get(..2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
                    .ok_or(SnapshotError::Truncated(at))?;
                let serial = body.get(2..2 + n).ok_or(SnapshotError::Truncated(at))?;
                let identity = &body[2 + n..];
                let text = |b: &[u8]| {
                    std::str::from_utf8(b)
                        .map(str::to_string)
                        .map_err(|_| SnapshotError::NotUtf8)
                };
                serials.insert(text(serial)?, text(identity)?);
            }
            kind => return Err(SnapshotError::UnknownFrame { kind, at }),
        }
    }
    let h = header.ok_or(SnapshotError::NoHeader)?;
    let records = parse_records(&raw).map_err(|source| SnapshotError::Json {
        what: "record",
        source,
    })?;
    Ok(LedgerState::restore(
        records,
        serials,
        h.heartbeats,
        h.settings,
    ))
}

/// Parses records on as many threads as there are cores: most of an install's time for a
/// large ledger.
fn parse_records(raw: &[&[u8]]) -> Result<Vec<Record>, serde_json::Error> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let per = raw.len().div_ceil(workers).max(1);
    std::thread::scope(|scope| {
        let parts: Vec<_> = raw
            .chunks(per)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|b| serde_json::from_slice::<Record>(b))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(raw.len());
        for p in parts {
            match p.join() {
                Ok(r) => out.extend(r?),
                // serde_json returns errors rather than panicking; should a parser die
                // anyway, its records must not go missing quietly
                Err(_) => {
                    return Err(serde::de::Error::custom("a record parser panicked"));
                }
            }
        }
        Ok(out)
    })
}

/// Where a store keeps its current snapshot.
pub fn path(store_dir: &Path) -> PathBuf {
    store_dir.join("snapshot").join("current")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Replaces the snapshot at `path` with `data` and its `meta` (JSON), kept in one file so
/// the two always belong together: a crash leaves the old pair or the new one.
pub fn save(path: &Path, meta: &[u8], data: &[u8]) -> Result<(), SnapshotError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io(&tmp))?);
        f.write_all(&(meta.len() as u32).to_le_bytes())
            .and_then(|()| f.write_all(meta))
            .and_then(|()| f.write_all(data))
            .map_err(io(&tmp))?;
        let f = f.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// A saved snapshot: its meta (JSON) and data.
pub type Saved = (Vec<u8>, Vec<u8>);

/// The snapshot at `path`, or `None` when there is none.
pub fn load(path: &Path) -> Result<Option<Saved>, SnapshotError> {
    let mut all = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let n = all
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .filter(|n| all.len() >= 4 + n)
        .ok_or(SnapshotError::Truncated(0))?;
    let data = all.split_off(4 + n);
    all.drain(..4);
    Ok(Some((all, data)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;

    fn ledger() -> LedgerState {
        let mut s = LedgerState::default();
        let cmds = [
            Command::Heartbeat {
                member: "a".into(),
                at_ms: 5,
            },
            Command::Claim {
                identity: "n1".into(),
                member: "a".into(),
                lease_until_ms: 1_000,
                seen_ms: 0,
                at_ms: 0,
            },
            Command::IssueCredential {
                identity: "n1".into(),
                member: "a".into(),
                serial: "0f".into(),
                fingerprint: "ff".into(),
                not_after: 9,
                at_ms: 1,
            },
        ];
        for c in &cmds {
            s.apply(c).unwrap();
        }
        s
    }

    fn format2(s: &LedgerState) -> Vec<u8> {
        let mut w = Writer::new(s.heartbeats(), s.settings()).unwrap();
        for r in s.records() {
            w.record(&serde_json::to_vec(r).unwrap());
        }
        for (serial, identity) in s.serials() {
            w.serial(serial.as_bytes(), identity.as_bytes());
        }
        assert_eq!(w.records(), 1);
        w.finish()
    }

    fn no_format1(_: &[u8]) -> Result<LedgerState, serde_json::Error> {
        panic!("format 2 must not be read as format 1")
    }

    #[test]
    fn format2_gives_back_the_same_ledger() {
        let s = ledger();
        let back = decode(&format2(&s), no_format1).unwrap();
        assert_eq!(back.digest(), s.digest());
        assert_eq!(back.heartbeats(), s.heartbeats());
        assert_eq!(back.settings(), s.settings());
        let json = |r: Option<&Record>| serde_json::to_value(r).unwrap();
        assert_eq!(json(back.record("n1")), json(s.record("n1")));
    }

    #[test]
    fn format1_is_read_by_the_given_reader() {
        let s = ledger();
        let json = serde_json::to_vec(&s).unwrap();
        let back = decode(&json, |d| serde_json::from_slice(d)).unwrap();
        assert_eq!(back.digest(), s.digest());
    }

    #[test]
    fn damaged_snapshots_are_errors() {
        let data = format2(&ledger());
        for cut in [MAGIC.len() + 3, data.len() - 1] {
            assert!(matches!(
                decode(&data[..cut], no_format1),
                Err(SnapshotError::Truncated(_))
            ));
        }
        let mut unknown = data.clone();
        unknown.extend_from_slice(&[9, 0, 0, 0, 0]);
        assert!(matches!(
            decode(&unknown, no_format1),
            Err(SnapshotError::UnknownFrame { kind: 9, .. })
        ));
        assert!(matches!(
            decode(MAGIC, no_format1),
            Err(SnapshotError::NoHeader)
        ));
        let s = ledger();
        let mut w = Writer::new(s.heartbeats(), s.settings()).unwrap();
        w.record(b"{\"identity\": 5");
        assert!(matches!(
            decode(&w.finish(), no_format1),
            Err(SnapshotError::Json { what: "record", .. })
        ));
    }

    #[test]
    fn saved_snapshots_replace_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path());
        assert_eq!(load(&p).unwrap(), None);
        save(&p, b"{1}", b"one").unwrap();
        save(&p, b"{22}", b"two").unwrap();
        assert_eq!(load(&p).unwrap(), Some((b"{22}".to_vec(), b"two".to_vec())));
        std::fs::write(&p, [9, 0, 0, 0, 1]).unwrap();
        assert!(load(&p).is_err(), "a meta longer than the file");
    }
}
