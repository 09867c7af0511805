//! Snapshots of the ledger state machine: their two formats and the file that keeps one.
//!
//! Format 2 (sent once the cluster applies ledger rules 4): [`MAGIC`], then frames of a kind
//! byte, a little-endian `u32` length and that many bytes: first the header (JSON: heartbeats
//! and cluster settings), then one frame per record (the record's JSON exactly as the `ledger`
//! column family stores it) and one per serial (`u16` length of the serial, the serial, the
//! identity). It is written and read one frame at a time ([`Writer`], [`read`]), so neither
//! building, sending nor installing one holds the ledger in memory: the store writes it from
//! a RocksDB snapshot taken at an applied point, so apply goes on meanwhile, and installs it
//! into its column families as it is read (see `store`).
//!
//! Format 1 is the whole state machine as one JSON document: what members before rules 4 send
//! and read. Both are read; which one is built follows the applied rules, so a member of the
//! previous build is never sent one it cannot read.
//!
//! A member keeps its current snapshot in `snapshot/current` under its store's directory: a
//! little-endian `u32` length, the snapshot's meta (JSON) and the data, so the two always
//! belong together (written to a temporary file, synced, renamed).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Read, Write};
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
    Truncated(u64),
    #[error("snapshot frame of unknown kind {kind} at byte {at}")]
    UnknownFrame { kind: u8, at: u64 },
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
    #[error("reading a snapshot: {0}")]
    Read(#[source] std::io::Error),
    /// Where the frames went could not take one (the store's write failed).
    #[error("installing a snapshot: {0}")]
    Sink(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The cluster-wide part of a format 2 snapshot.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Header {
    pub heartbeats: BTreeMap<String, u64>,
    pub settings: ClusterSettings,
}

/// Format 2, written frame by frame to `out`.
pub struct Writer<W: Write> {
    out: W,
    records: usize,
}

impl<W: Write> Writer<W> {
    pub fn new(
        mut out: W,
        heartbeats: &BTreeMap<String, u64>,
        settings: &ClusterSettings,
    ) -> Result<Writer<W>, SnapshotError> {
        let header = serde_json::to_vec(&serde_json::json!({
            "heartbeats": heartbeats,
            "settings": settings,
        }))
        .map_err(|source| SnapshotError::Json {
            what: "header",
            source,
        })?;
        out.write_all(MAGIC).map_err(SnapshotError::Read)?;
        let mut w = Writer { out, records: 0 };
        w.frame(HEADER, &[&header]).map_err(SnapshotError::Read)?;
        Ok(w)
    }

    fn frame(&mut self, kind: u8, parts: &[&[u8]]) -> std::io::Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.out.write_all(&[kind])?;
        self.out.write_all(&(len as u32).to_le_bytes())?;
        for p in parts {
            self.out.write_all(p)?;
        }
        Ok(())
    }

    /// A record, as the store keeps it (JSON).
    pub fn record(&mut self, stored: &[u8]) -> std::io::Result<()> {
        self.records += 1;
        self.frame(RECORD, &[stored])
    }

    pub fn serial(&mut self, serial: &[u8], identity: &[u8]) -> std::io::Result<()> {
        let n = (serial.len() as u16).to_le_bytes();
        self.frame(SERIAL, &[&n, serial, identity])
    }

    pub fn records(&self) -> usize {
        self.records
    }

    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Where [`read`] hands a format 2 snapshot's frames, in order: the header first.
pub trait Sink {
    fn header(&mut self, header: Header) -> Result<(), SnapshotError>;
    /// A record's JSON, as the store keeps it.
    fn record(&mut self, stored: &[u8]) -> Result<(), SnapshotError>;
    fn serial(&mut self, serial: &str, identity: &str) -> Result<(), SnapshotError>;
}

/// What [`read`] found.
pub enum Found {
    /// Format 2: every frame went to the sink.
    Streamed,
    /// Format 1: the whole ledger, read into memory.
    Format1(Box<LedgerState>),
}

/// Reads a snapshot of either format from `r`: format 2 frame by frame into `sink`, format 1
/// (one JSON document) whole through `format1`.
pub fn read(
    mut r: impl BufRead,
    format1: impl FnOnce(&[u8]) -> Result<LedgerState, serde_json::Error>,
    sink: &mut dyn Sink,
) -> Result<Found, SnapshotError> {
    let start = r.fill_buf().map_err(SnapshotError::Read)?;
    if !start.starts_with(MAGIC) {
        let mut all = Vec::new();
        r.read_to_end(&mut all).map_err(SnapshotError::Read)?;
        if all.starts_with(MAGIC) {
            // the first read was short; read what is now in memory
            return read(&all[..], format1, sink);
        }
        return format1(&all)
            .map(|l| Found::Format1(Box::new(l)))
            .map_err(|source| SnapshotError::Json {
                what: "document",
                source,
            });
    }
    r.consume(MAGIC.len());
    let mut at = MAGIC.len() as u64;
    let mut header = false;
    let mut body = Vec::new();
    loop {
        let mut head = [0u8; 5];
        match read_full(&mut r, &mut head).map_err(SnapshotError::Read)? {
            0 => break,
            5 => {}
            _ => return Err(SnapshotError::Truncated(at)),
        }
        let kind = head[0];
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        body.resize(len, 0);
        if read_full(&mut r, &mut body).map_err(SnapshotError::Read)? != len {
            return Err(SnapshotError::Truncated(at));
        }
        match kind {
            HEADER => {
                let h = serde_json::from_slice(&body).map_err(|source| SnapshotError::Json {
                    what: "header",
                    source,
                })?;
                sink.header(h)?;
                header = true;
            }
            RECORD | SERIAL if !header => return Err(SnapshotError::NoHeader),
            RECORD => sink.record(&body)?,
            SERIAL => {
                let n = body
                    .get(..2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
                    .ok_or(SnapshotError::Truncated(at))?;
                let serial = body.get(2..2 + n).ok_or(SnapshotError::Truncated(at))?;
                let identity = &body[2 + n..];
                let text = |b| std::str::from_utf8(b).map_err(|_| SnapshotError::NotUtf8);
                sink.serial(text(serial)?, text(identity)?)?;
            }
            kind => return Err(SnapshotError::UnknownFrame { kind, at }),
        }
        at += 5 + len as u64;
    }
    match header {
        true => Ok(Found::Streamed),
        false => Err(SnapshotError::NoHeader),
    }
}

/// Reads until `buf` is full or the input ends; how many bytes it read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A ledger read into memory (tests, and format 1).
#[derive(Default)]
struct InMemory {
    header: Option<Header>,
    records: Vec<Record>,
    serials: HashMap<String, String>,
}

impl Sink for InMemory {
    fn header(&mut self, header: Header) -> Result<(), SnapshotError> {
        self.header = Some(header);
        Ok(())
    }

    fn record(&mut self, stored: &[u8]) -> Result<(), SnapshotError> {
        let r = serde_json::from_slice(stored).map_err(|source| SnapshotError::Json {
            what: "record",
            source,
        })?;
        self.records.push(r);
        Ok(())
    }

    fn serial(&mut self, serial: &str, identity: &str) -> Result<(), SnapshotError> {
        self.serials.insert(serial.into(), identity.into());
        Ok(())
    }
}

/// The ledger a snapshot of either format holds, in memory. `format1` reads the whole state
/// machine document of format 1 (its type lives with the store).
pub fn decode(
    data: &[u8],
    format1: impl FnOnce(&[u8]) -> Result<LedgerState, serde_json::Error>,
) -> Result<LedgerState, SnapshotError> {
    let mut sink = InMemory::default();
    match read(data, format1, &mut sink)? {
        Found::Format1(ledger) => Ok(*ledger),
        Found::Streamed => {
            let h = sink.header.ok_or(SnapshotError::NoHeader)?;
            Ok(LedgerState::restore(
                sink.records,
                sink.serials,
                h.heartbeats,
                h.settings,
            ))
        }
    }
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

/// A snapshot file being written: the meta, then the data written to it; it replaces the
/// one at its path only on [`Pending::commit`] (dropped, it is left as a temporary file that
/// the next one replaces).
pub struct Pending {
    out: std::io::BufWriter<std::fs::File>,
    tmp: PathBuf,
    path: PathBuf,
    bytes: u64,
}

impl Pending {
    /// Starts the snapshot that will replace the one at `path`, with its `meta` (JSON).
    pub fn create(path: &Path, meta: &[u8]) -> Result<Pending, SnapshotError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let tmp = path.with_extension("tmp");
        let mut out = std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&tmp).map_err(io(&tmp))?,
        );
        out.write_all(&(meta.len() as u32).to_le_bytes())
            .and_then(|()| out.write_all(meta))
            .map_err(io(&tmp))?;
        Ok(Pending {
            out,
            tmp,
            path: path.to_path_buf(),
            bytes: 0,
        })
    }

    /// Data bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Syncs the file and makes it the snapshot at its path.
    pub fn commit(self) -> Result<(), SnapshotError> {
        let Pending { out, tmp, path, .. } = self;
        let f = out.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))
    }
}

impl Write for Pending {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Replaces the snapshot at `path` with `meta` (JSON) and the data `data` holds.
pub fn save(path: &Path, meta: &[u8], data: &mut impl Read) -> Result<u64, SnapshotError> {
    let mut p = Pending::create(path, meta)?;
    let tmp = p.tmp.clone();
    let n = std::io::copy(data, &mut p).map_err(io(&tmp))?;
    p.commit()?;
    Ok(n)
}

/// A saved snapshot, opened: its meta (JSON), and the file with its data from `offset`.
pub struct Saved {
    pub meta: Vec<u8>,
    pub file: std::fs::File,
    pub offset: u64,
    pub len: u64,
}

/// The snapshot at `path`, or `None` when there is none.
pub fn open(path: &Path) -> Result<Option<Saved>, SnapshotError> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let size = file.metadata().map_err(io(path))?.len();
    let mut n = [0u8; 4];
    file.read_exact(&mut n)
        .map_err(|_| SnapshotError::Truncated(0))?;
    let n = u32::from_le_bytes(n) as u64;
    if size < 4 + n {
        return Err(SnapshotError::Truncated(0));
    }
    let mut meta = vec![0u8; n as usize];
    file.read_exact(&mut meta).map_err(io(path))?;
    Ok(Some(Saved {
        meta,
        file,
        offset: 4 + n,
        len: size - 4 - n,
    }))
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
        let mut w = Writer::new(Vec::new(), s.heartbeats(), s.settings()).unwrap();
        for r in s.all_records() {
            w.record(&serde_json::to_vec(&r).unwrap()).unwrap();
        }
        s.for_each_serial(&mut |serial, identity| {
            w.serial(serial.as_bytes(), identity.as_bytes()).unwrap()
        })
        .unwrap();
        assert_eq!(w.records(), 1);
        w.finish().unwrap()
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
        let json = |r: Option<Record>| serde_json::to_value(r).unwrap();
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
        let mut w = Writer::new(Vec::new(), s.heartbeats(), s.settings()).unwrap();
        w.record(b"{\"identity\": 5").unwrap();
        assert!(matches!(
            decode(&w.finish().unwrap(), no_format1),
            Err(SnapshotError::Json { what: "record", .. })
        ));
    }

    #[test]
    fn saved_snapshots_replace_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path());
        assert!(open(&p).unwrap().is_none());
        save(&p, b"{1}", &mut &b"one"[..]).unwrap();
        assert_eq!(save(&p, b"{22}", &mut &b"two"[..]).unwrap(), 3);
        let mut saved = open(&p).unwrap().unwrap();
        assert_eq!(saved.meta, b"{22}");
        assert_eq!((saved.offset, saved.len), (8, 3));
        let mut data = String::new();
        saved.file.read_to_string(&mut data).unwrap();
        assert_eq!(data, "two");
        std::fs::write(&p, [9, 0, 0, 0, 1]).unwrap();
        assert!(open(&p).is_err(), "a meta longer than the file");
    }

    #[test]
    fn a_snapshot_is_read_frame_by_frame_through_a_small_buffer() {
        let s = ledger();
        let data = format2(&s);
        // a reader that hands out a few bytes at a time, as a file or socket may
        let slow = std::io::BufReader::with_capacity(3, &data[..]);
        let mut sink = InMemory::default();
        assert!(matches!(
            read(slow, no_format1, &mut sink).unwrap(),
            Found::Streamed
        ));
        assert_eq!(sink.records.len(), 1);
        assert_eq!(sink.serials.len(), 1);
    }
}
