//! The Raft log of a member as append-only segment files, outside RocksDB.
//!
//! RocksDB wrote every entry three times over (its write-ahead log, a memtable, later an SST
//! file) and compacted entries that a snapshot purges soon after; a follower's flat profile put
//! that write at a tenth of its Raft thread (`docs/design-cheaper-replica.md`). Here an append
//! is one `write` and one `fdatasync` of the encoded entries, as TiKV's raft-engine does. What
//! this owns: the files under `dir` (`<first index, 20 digits>.log`), the offsets of their
//! records in memory, and which index comes next. What an entry's bytes mean is the
//! caller's ([`crate::codec`]); the vote and the purge point stay in RocksDB.
//!
//! A segment starts with [`MAGIC`]; each record is its payload's length (u32 LE), a CRC-32
//! of its index and payload (u32 LE), its index (u64 LE) and the payload. Indexes are
//! consecutive within a segment and from one segment to the next. A crash during an append
//! leaves a torn or partly written record at the end of the last segment: the append was not
//! acknowledged (its `fdatasync` had not returned), so [`SegmentLog::open`] cuts the segment
//! back to its last whole record. A bad record anywhere else is corruption and refused.
//!
//! `segment` is one segment file: its records' format and reading it back at start.

mod segment;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use segment::{checksum, header_fields, put_record, segment_name, sync_dir, Segment, HEADER};

/// Bytes a segment grows to before the next append starts a new one: purging deletes whole
/// segments, so this is also about how much a member keeps past its snapshot.
pub const SEGMENT_BYTES: u64 = 32 * 1024 * 1024;
/// The first bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"PRVLOG01";
/// What went wrong with the log's files.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("raft log: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("raft log: {path} at byte {offset}: {why}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        why: String,
    },
    #[error("raft log: entry {got} appended where {expected} comes next")]
    Gap { expected: u64, got: u64 },
    #[error("raft log: an entry of {bytes} bytes is too large to log")]
    TooLarge { bytes: usize },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LogError + 'a {
    move |source| LogError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The log in one directory. Calls are serialised by one lock: appends, truncations and
/// purges come from Raft's core, reads mostly from memory ([`crate::recent_log`]).
#[derive(Debug)]
pub struct SegmentLog {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// [`SEGMENT_BYTES`], smaller in tests.
    segment_bytes: u64,
}

#[derive(Debug, Default)]
struct Inner {
    segments: BTreeMap<u64, Segment>,
    /// The first index a read may return: below it entries are purged, even where their
    /// segment is still on disk because it holds later ones.
    floor: u64,
}

/// What [`SegmentLog::open`] found and repaired.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Opened {
    pub segments: usize,
    pub entries: u64,
    /// Bytes cut from the end of the last segment (an append a crash interrupted).
    pub torn_bytes: u64,
}

impl SegmentLog {
    /// Opens the log in `dir` (created if missing), reading every segment's records to find
    /// their offsets and cutting an append a crash left unfinished.
    pub fn open(dir: &Path) -> Result<(SegmentLog, Opened), LogError> {
        Self::open_with(dir, SEGMENT_BYTES)
    }

    /// [`SegmentLog::open`], with segments of `segment_bytes`.
    pub fn open_with(dir: &Path, segment_bytes: u64) -> Result<(SegmentLog, Opened), LogError> {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let mut firsts = Vec::new();
        for item in std::fs::read_dir(dir).map_err(io("list", dir))? {
            let item = item.map_err(io("list", dir))?;
            let name = item.file_name();
            let Some(first) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            firsts.push(first);
        }
        firsts.sort_unstable();
        let mut opened = Opened::default();
        let mut segments = BTreeMap::new();
        let count = firsts.len();
        let mut next: Option<u64> = None;
        for (i, first) in firsts.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let path = dir.join(segment_name(first));
            let (segment, torn) = Self::scan(&path, first, is_last)?;
            if let Some(expected) = next {
                if first < expected {
                    return Err(LogError::Corrupt {
                        path,
                        offset: 0,
                        why: format!(
                            "starts at entry {first}, inside the segment before (up to {})",
                            expected - 1
                        ),
                    });
                }
            }
            opened.torn_bytes += torn;
            if segment.ends.is_empty() && is_last {
                // created, then the crash: nothing in it was ever acknowledged
                drop(segment);
                std::fs::remove_file(&path).map_err(io("remove", &path))?;
                sync_dir(dir)?;
                continue;
            }
            next = segment.last().map(|l| l + 1).or(next);
            opened.entries += segment.ends.len() as u64;
            opened.segments += 1;
            segments.insert(first, segment);
        }
        Ok((
            SegmentLog {
                dir: dir.to_path_buf(),
                inner: Mutex::new(Inner { segments, floor: 0 }),
                segment_bytes,
            },
            opened,
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // a panic while holding it left the offsets as they were before the call
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first and last index a read returns, if any.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        let inner = self.lock();
        let s = &inner.segments;
        let first = s.values().find(|s| !s.ends.is_empty())?.first;
        let last = s.values().rev().find_map(Segment::last)?;
        let first = first.max(inner.floor);
        (first <= last).then_some((first, last))
    }

    /// Appends `entries` (index, payload), which must continue the log, and syncs them.
    pub fn append(&self, entries: &[(u64, Vec<u8>)]) -> Result<(), LogError> {
        let Some((first_new, _)) = entries.first() else {
            return Ok(());
        };
        // consecutive, checked before anything is written
        for (expected, (index, _)) in (*first_new..).zip(entries) {
            if *index != expected {
                return Err(LogError::Gap {
                    expected,
                    got: *index,
                });
            }
        }
        let mut inner = self.lock();
        let segments = &mut inner.segments;
        // an empty last segment is one whose first append failed: it gives way
        if let Some((first, s)) = segments.iter().next_back() {
            if s.ends.is_empty() {
                let (first, path) = (*first, s.path.clone());
                segments.remove(&first);
                std::fs::remove_file(&path).map_err(io("remove", &path))?;
            }
        }
        let next = segments
            .values()
            .next_back()
            .and_then(Segment::last)
            .map(|l| l + 1);
        if let Some(expected) = next {
            if *first_new < expected {
                // Raft truncates before it writes over entries
                return Err(LogError::Gap {
                    expected,
                    got: *first_new,
                });
            }
        }
        // past a gap (Raft leaves none; openraft's storage suite does) a new segment starts
        let roll = match segments.values().next_back() {
            None => true,
            Some(s) => s.len() >= self.segment_bytes || next != Some(*first_new),
        };
        if roll {
            let path = self.dir.join(segment_name(*first_new));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(io("create", &path))?;
            file.write_all_at(MAGIC, 0).map_err(io("write", &path))?;
            file.sync_data().map_err(io("sync", &path))?;
            sync_dir(&self.dir)?;
            segments.insert(
                *first_new,
                Segment {
                    path,
                    file,
                    first: *first_new,
                    ends: Vec::new(),
                },
            );
        }
        let Some(segment) = segments.values_mut().next_back() else {
            return Ok(());
        };
        let bytes: usize = entries.iter().map(|(_, p)| p.len() + HEADER).sum();
        let mut buf = Vec::with_capacity(bytes);
        let mut ends = Vec::with_capacity(entries.len());
        let start = segment.len();
        for (index, payload) in entries {
            put_record(&mut buf, *index, payload)?;
            ends.push(start + buf.len() as u64);
        }
        let written = segment
            .file
            .write_all_at(&buf, start)
            .and_then(|()| segment.file.sync_data());
        if let Err(e) = written {
            // nothing of this append counts: what reached the file is cut off again
            let _ = segment.file.set_len(start);
            return Err(io("append to", &segment.path)(e));
        }
        segment.ends.extend(ends);
        Ok(())
    }

    /// The records of `from..to` (`to` exclusive) that the log holds, in order.
    pub fn read(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        let inner = self.lock();
        let from = from.max(inner.floor);
        let mut out = Vec::new();
        for segment in inner.segments.values() {
            let Some(last) = segment.last() else { continue };
            let lo = from.max(segment.first);
            let hi = to.min(last + 1);
            if lo >= hi {
                continue;
            }
            let start = segment.start_of(lo);
            let end = segment.start_of(hi);
            let mut buf = vec![0u8; (end - start) as usize];
            segment
                .file
                .read_exact_at(&mut buf, start)
                .map_err(io("read", &segment.path))?;
            let mut at = 0usize;
            for index in lo..hi {
                let corrupt = |why: String| LogError::Corrupt {
                    path: segment.path.clone(),
                    offset: start + at as u64,
                    why,
                };
                let h: &[u8; HEADER] = buf
                    .get(at..at + HEADER)
                    .and_then(|h| h.try_into().ok())
                    .ok_or_else(|| corrupt("a record header cut short".into()))?;
                let (len, crc, got) = header_fields(h);
                let payload = buf
                    .get(at + HEADER..at + HEADER + len as usize)
                    .ok_or_else(|| corrupt("a record cut short".into()))?;
                if got != index || checksum(index, payload) != crc {
                    return Err(corrupt(format!("entry {index} does not read back")));
                }
                out.push((index, payload.to_vec()));
                at += HEADER + len as usize;
            }
        }
        Ok(out)
    }

    /// Deletes the entries from `index` on, synced.
    pub fn truncate_from(&self, index: u64) -> Result<(), LogError> {
        let mut inner = self.lock();
        let segments = &mut inner.segments;
        let later: Vec<u64> = segments.range(index..).map(|(f, _)| *f).collect();
        // the last first, each removal synced: a crash in between leaves a shorter log, never
        // one with a hole (truncations are rare: a new leader's conflicting suffix)
        for first in later.into_iter().rev() {
            if let Some(s) = segments.remove(&first) {
                std::fs::remove_file(&s.path).map_err(io("remove", &s.path))?;
                sync_dir(&self.dir)?;
            }
        }
        if let Some(segment) = segments.values_mut().next_back() {
            if segment.last().is_some_and(|l| l >= index) {
                let keep = segment.start_of(index);
                segment
                    .file
                    .set_len(keep)
                    .and_then(|()| segment.file.sync_data())
                    .map_err(io("truncate", &segment.path))?;
                segment.ends.truncate((index - segment.first) as usize);
            }
        }
        Ok(())
    }

    /// Deletes every segment whose entries are all at or below `index` (a snapshot holds
    /// them). Entries below `index` in the segment that holds `index + 1` stay until that
    /// segment goes too.
    pub fn purge_upto(&self, index: u64) -> Result<(), LogError> {
        let mut inner = self.lock();
        inner.floor = inner.floor.max(index.saturating_add(1));
        let segments = &mut inner.segments;
        let done: Vec<u64> = segments
            .values()
            .filter(|s| s.last().is_none_or(|l| l <= index))
            .map(|s| s.first)
            .collect();
        let removed = !done.is_empty();
        for first in done {
            if let Some(s) = segments.remove(&first) {
                std::fs::remove_file(&s.path).map_err(io("remove", &s.path))?;
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Runs `first` (a copy of the rest of the store), then copies every segment into
    /// `dest` (created), holding the log still throughout, so both copies are of one moment.
    pub fn copy_to<E>(
        &self,
        dest: &Path,
        first: impl FnOnce() -> Result<(), E>,
    ) -> Result<Result<(), E>, LogError> {
        let inner = self.lock();
        if let Err(e) = first() {
            return Ok(Err(e));
        }
        std::fs::create_dir_all(dest).map_err(io("create", dest))?;
        for s in inner.segments.values() {
            let to = dest.join(segment_name(s.first));
            std::fs::copy(&s.path, &to).map_err(io("copy", &to))?;
        }
        Ok(Ok(()))
    }

    /// Bytes in the log's files.
    pub fn bytes(&self) -> u64 {
        self.lock().segments.values().map(Segment::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(i: u64) -> Vec<u8> {
        format!("entry {i} ")
            .repeat(1 + (i % 7) as usize)
            .into_bytes()
    }

    fn records(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Vec<u8>)> {
        range.map(|i| (i, payload(i))).collect()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Small segments (a few records each), so every test crosses segment boundaries.
    const SMALL: u64 = 200;

    /// A log in `dir` with small segments holding entries `1..=last`, appended `per_append`
    /// at a time.
    fn filled(dir: &Path, last: u64, per_append: usize) -> SegmentLog {
        let (log, _) = SegmentLog::open_with(dir, SMALL).unwrap();
        for chunk in records(1..=last).chunks(per_append) {
            log.append(chunk).unwrap();
        }
        log
    }

    #[test]
    fn appends_read_back_across_segments_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (log, opened) = SegmentLog::open_with(dir.path(), SMALL).unwrap();
        assert_eq!(opened, Opened::default());
        for chunk in records(1..=40).chunks(3) {
            log.append(chunk).unwrap();
        }
        assert!(files(dir.path()).len() > 3, "{:?}", files(dir.path()));
        assert_eq!(log.read(1, 41).unwrap(), records(1..=40));
        assert_eq!(log.read(7, 23).unwrap(), records(7..=22));
        assert_eq!(log.bounds(), Some((1, 40)));
        drop(log);
        let (log, opened) = SegmentLog::open_with(dir.path(), SMALL).unwrap();
        assert_eq!(opened.entries, 40);
        assert_eq!(opened.torn_bytes, 0);
        assert_eq!(log.read(0, u64::MAX).unwrap(), records(1..=40));
        log.append(&records(41..=41)).unwrap();
        assert_eq!(log.bounds(), Some((1, 41)));
    }

    /// Writing over entries without truncating them first is refused, as is a gap inside
    /// one append; a gap between appends (openraft's storage suite makes them) starts a
    /// segment of its own.
    #[test]
    fn an_append_over_the_log_is_refused_and_a_gap_starts_a_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = SegmentLog::open_with(dir.path(), SMALL).unwrap();
        log.append(&records(5..=6)).unwrap();
        for (bad, expected) in [
            (records(6..=6), 7),
            (records(1..=1), 7),
            (vec![(7, vec![1]), (9, vec![2])], 8),
        ] {
            let err = log.append(&bad).unwrap_err();
            assert!(
                matches!(err, LogError::Gap { expected: e, .. } if e == expected),
                "{err}"
            );
        }
        assert_eq!(log.read(0, 100).unwrap(), records(5..=6));
        log.append(&records(9..=10)).unwrap();
        assert_eq!(files(dir.path()).len(), 2);
        drop(log);
        let (log, _) = SegmentLog::open_with(dir.path(), SMALL).unwrap();
        let mut want = records(5..=6);
        want.extend(records(9..=10));
        assert_eq!(log.read(0, 100).unwrap(), want);
        assert_eq!(
            log.read(6, 10).unwrap(),
            [records(6..=6), records(9..=9)].concat()
        );
    }

    /// A crash in the middle of an append leaves part of a record: it was never acknowledged,
    /// so the log is cut back to its last whole record and goes on from there.
    #[test]
    fn a_torn_append_at_the_end_is_cut_off_at_start() {
        for cut in [1usize, 10, HEADER, HEADER + 3] {
            let dir = tempfile::tempdir().unwrap();
            let log = filled(dir.path(), 20, 4);
            drop(log);
            let last = dir.path().join(files(dir.path()).pop().unwrap());
            let mut torn = Vec::new();
            put_record(&mut torn, 21, &payload(21)).unwrap();
            let mut bytes = std::fs::read(&last).unwrap();
            bytes.extend_from_slice(&torn[..cut]);
            std::fs::write(&last, bytes).unwrap();

            let (log, opened) = SegmentLog::open_with(dir.path(), SMALL).unwrap();
            assert_eq!(opened.torn_bytes, cut as u64);
            assert_eq!(log.read(0, 100).unwrap(), records(1..=20));
            log.append(&records(21..=22)).unwrap();
            drop(log);
            let (log, opened) = SegmentLog::open_with(dir.path(), SMALL).unwrap();
            assert_eq!(opened.torn_bytes, 0);
            assert_eq!(log.read(0, 100).unwrap(), records(1..=22));
        }
    }

    /// A whole record whose bytes changed, at the end: its checksum finds it, and as the
    /// last record it is taken for an unfinished append. Anywhere but the last segment the
    /// log refuses to open.
    #[test]
    fn a_damaged_record_is_found_by_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let log = filled(dir.path(), 30, 2);
        drop(log);
        let names = files(dir.path());
        let flip = |name: &str, back: u64| {
            let path = dir.path().join(name);
            let mut bytes = std::fs::read(&path).unwrap();
            let at = bytes.len() - back as usize;
            bytes[at] ^= 0x55;
            std::fs::write(&path, bytes).unwrap();
        };
        flip(names.last().unwrap(), 2);
        let (log, opened) = SegmentLog::open_with(dir.path(), SMALL).unwrap();
        assert!(opened.torn_bytes > 0);
        assert_eq!(log.read(0, 100).unwrap(), records(1..=29));
        drop(log);

        flip(&names[1], 2);
        let err = SegmentLog::open_with(dir.path(), SMALL).unwrap_err();
        assert!(
            matches!(&err, LogError::Corrupt { path, .. } if path.ends_with(&names[1])),
            "{err}"
        );
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    /// A segment file without its header: the last one is a segment created just before a
    /// crash (dropped); any other is refused.
    #[test]
    fn a_segment_without_its_header_is_dropped_at_the_end_and_refused_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(segment_name(7)), b"PRV").unwrap();
        let (log, opened) = SegmentLog::open_with(dir.path(), SMALL).unwrap();
        assert_eq!(opened.torn_bytes, 3);
        assert_eq!(log.bounds(), None);
        assert!(files(dir.path()).is_empty());
        drop(log);

        let log = filled(dir.path(), 10, 2);
        drop(log);
        let first = files(dir.path())[0].clone();
        std::fs::write(dir.path().join(&first), b"garbage, not a segment").unwrap();
        let err = SegmentLog::open_with(dir.path(), SMALL).unwrap_err();
        assert!(err.to_string().contains("no segment header"), "{err}");
    }

    /// A new leader's log replaces a suffix that starts in an earlier segment than the last:
    /// later segments go, the one it starts in is cut, and both hold across a restart.
    #[test]
    fn a_truncation_across_segment_boundaries_holds_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let log = filled(dir.path(), 40, 2);
        let before = files(dir.path()).len();
        // an index inside a segment, several segments before the last
        log.truncate_from(13).unwrap();
        assert!(files(dir.path()).len() < before);
        assert_eq!(log.bounds(), Some((1, 12)));
        let replaced: Vec<(u64, Vec<u8>)> = (13..=15).map(|i| (i, vec![i as u8; 9])).collect();
        log.append(&replaced).unwrap();
        drop(log);
        let (log, opened) = SegmentLog::open_with(dir.path(), SMALL).unwrap();
        assert_eq!(opened.torn_bytes, 0);
        let mut want = records(1..=12);
        want.extend(replaced);
        assert_eq!(log.read(0, 100).unwrap(), want);
        // at a segment's first index the whole segment goes
        let first_of_last: u64 = files(dir.path())
            .last()
            .unwrap()
            .trim_end_matches(".log")
            .parse()
            .unwrap();
        log.truncate_from(first_of_last).unwrap();
        assert_eq!(log.bounds().map(|b| b.1), Some(first_of_last - 1));
        log.truncate_from(1).unwrap();
        assert_eq!(log.bounds(), None);
        assert!(files(dir.path()).is_empty());
        log.append(&records(1..=2)).unwrap();
        assert_eq!(log.read(0, 100).unwrap(), records(1..=2));
    }

    /// Purging deletes whole segments behind the purge point and hides what is left below
    /// it; purging past the end empties the log, which then starts where it is told.
    #[test]
    fn a_purge_deletes_whole_segments_and_hides_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let log = filled(dir.path(), 40, 2);
        let before = files(dir.path()).len();
        log.purge_upto(21).unwrap();
        let after = files(dir.path());
        assert!(after.len() < before);
        let kept_first: u64 = after[0].trim_end_matches(".log").parse().unwrap();
        assert!(kept_first <= 22, "{after:?}");
        assert_eq!(log.read(0, 100).unwrap(), records(22..=40));
        assert_eq!(log.bounds(), Some((22, 40)));
        log.purge_upto(100).unwrap();
        assert_eq!(log.bounds(), None);
        assert!(files(dir.path()).is_empty());
        // after a snapshot past the log's end, the log goes on from the snapshot
        log.append(&records(101..=102)).unwrap();
        drop(log);
        let (log, _) = SegmentLog::open_with(dir.path(), SMALL).unwrap();
        assert_eq!(log.read(0, 200).unwrap(), records(101..=102));
    }

    const CHILD: &str = "SEGMENT_LOG_CRASH_CHILD";

    /// Not a test of its own: the process `a_process_killed_while_appending_loses_nothing_acknowledged`
    /// kills. It appends until killed and prints each index once its append returned.
    #[test]
    #[ignore = "run by a_process_killed_while_appending_loses_nothing_acknowledged"]
    fn crash_child_appends_until_killed() {
        use std::io::Write;
        let Ok(dir) = std::env::var(CHILD) else {
            return;
        };
        let (log, _) = SegmentLog::open_with(Path::new(&dir), 64 * 1024).unwrap();
        let mut out = std::io::stdout();
        for i in 1u64.. {
            log.append(&[(i, payload(i).repeat(20))]).unwrap();
            writeln!(out, "acked {i}").unwrap();
            out.flush().unwrap();
        }
    }

    /// kill -9 of a process in the middle of appending: the log opens, and every entry whose
    /// append had returned is there and reads back.
    #[test]
    fn a_process_killed_while_appending_loses_nothing_acknowledged() {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        for round in 0..3 {
            let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "segment_log::tests::crash_child_appends_until_killed",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD, dir.path())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
            let mut acked = 0u64;
            // each round starts from an empty log (the last one truncates it) and is killed
            // at another point
            let wanted = 50 + 37 * round;
            while acked < wanted {
                let Some(line) = lines.next() else { break };
                if let Some(i) = line.unwrap().strip_prefix("acked ") {
                    acked = i.parse().unwrap();
                }
            }
            child.kill().unwrap();
            child.wait().unwrap();
            assert!(acked >= wanted, "the child stopped at {acked}");
            let (log, _) = SegmentLog::open_with(dir.path(), 64 * 1024).unwrap();
            let (first, last) = log.bounds().unwrap();
            assert_eq!(first, 1);
            assert!(
                last >= acked,
                "acknowledged {acked}, the log ends at {last}"
            );
            let read = log.read(0, u64::MAX).unwrap();
            assert_eq!(read.len() as u64, last);
            assert!(read.iter().all(|(i, p)| *p == payload(*i).repeat(20)));
            log.truncate_from(1).unwrap();
        }
    }
}
