//! One segment file of the log: the format of its records (length, checksum, index,
//! payload) and reading it back at start, where a torn last record is cut off.

use super::*;

pub(super) const HEADER: usize = 16;
/// Larger than any entry a member writes (`replicated::MAX_BATCH_BYTES` and then some): a
/// length above it is a damaged header, not a reason to allocate.
pub(super) const MAX_RECORD: u32 = 256 * 1024 * 1024;

/// One segment file and where its records end.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) first: u64,
    /// `ends[i]` is the offset just past the record of index `first + i`.
    pub(super) ends: Vec<u64>,
}

impl Segment {
    pub(super) fn len(&self) -> u64 {
        self.ends.last().copied().unwrap_or(HEADER_LEN)
    }

    pub(super) fn last(&self) -> Option<u64> {
        (!self.ends.is_empty()).then(|| self.first + self.ends.len() as u64 - 1)
    }

    /// Offset where the record of `index` starts (`index` within the segment or just past it).
    pub(super) fn start_of(&self, index: u64) -> u64 {
        match index.checked_sub(self.first).and_then(|i| i.checked_sub(1)) {
            Some(prev) => self.ends[prev as usize],
            None => HEADER_LEN,
        }
    }
}

pub(super) const HEADER_LEN: u64 = MAGIC.len() as u64;

pub(super) fn checksum(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Appends the record of `index` to `buf`.
pub(super) fn put_record(buf: &mut Vec<u8>, index: u64, payload: &[u8]) -> Result<(), LogError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l <= MAX_RECORD)
        .ok_or(LogError::TooLarge {
            bytes: payload.len(),
        })?;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&checksum(index, payload).to_le_bytes());
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(payload);
    Ok(())
}

/// Fields of a record header: payload length, checksum, index.
pub(super) fn header_fields(h: &[u8; HEADER]) -> (u32, u32, u64) {
    let mut len = [0u8; 4];
    let mut crc = [0u8; 4];
    let mut index = [0u8; 8];
    len.copy_from_slice(&h[0..4]);
    crc.copy_from_slice(&h[4..8]);
    index.copy_from_slice(&h[8..16]);
    (
        u32::from_le_bytes(len),
        u32::from_le_bytes(crc),
        u64::from_le_bytes(index),
    )
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync directory", dir))
}

pub(super) fn segment_name(first: u64) -> String {
    format!("{first:020}.log")
}

impl SegmentLog {
    /// Reads a segment's records; in the last segment a bad tail is cut off (returned: the
    /// bytes cut), anywhere else it is an error.
    pub(super) fn scan(path: &Path, first: u64, is_last: bool) -> Result<(Segment, u64), LogError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io("open", path))?;
        let size = file.metadata().map_err(io("stat", path))?.len();
        let corrupt = |offset: u64, why: String| LogError::Corrupt {
            path: path.to_path_buf(),
            offset,
            why,
        };
        let mut reader = BufReader::with_capacity(1 << 20, &file);
        let mut magic = [0u8; 8];
        let mut ends = Vec::new();
        let mut good = 0u64;
        let mut why = None;
        if reader.read_exact(&mut magic).is_err() || &magic != MAGIC {
            why = Some("no segment header".to_string());
        } else {
            good = HEADER_LEN;
            let mut payload = Vec::new();
            while good < size {
                let mut h = [0u8; HEADER];
                if reader.read_exact(&mut h).is_err() {
                    why = Some("a record header cut short".into());
                    break;
                }
                let (len, crc, index) = header_fields(&h);
                let expected = first + ends.len() as u64;
                if index != expected {
                    why = Some(format!("entry {index} where {expected} comes next"));
                    break;
                }
                if len > MAX_RECORD || good + HEADER as u64 + u64::from(len) > size {
                    why = Some(format!("a record of {len} bytes runs past the end"));
                    break;
                }
                payload.resize(len as usize, 0);
                if reader.read_exact(&mut payload).is_err() {
                    why = Some("a record cut short".into());
                    break;
                }
                if checksum(index, &payload) != crc {
                    why = Some(format!("entry {index}: checksum mismatch"));
                    break;
                }
                good += HEADER as u64 + u64::from(len);
                ends.push(good);
            }
        }
        let mut torn = 0;
        if let Some(why) = why {
            if !is_last {
                return Err(corrupt(good, why));
            }
            tracing::warn!(path = %path.display(), offset = good, %why,
                "cutting an unfinished append from the end of the raft log");
            torn = size.saturating_sub(good);
            if good < HEADER_LEN {
                // the crash came between creating the file and syncing its header
                file.set_len(0).map_err(io("truncate", path))?;
                file.write_all_at(MAGIC, 0).map_err(io("write", path))?;
                torn = size;
                good = HEADER_LEN;
            }
            file.set_len(good).map_err(io("truncate", path))?;
            file.sync_data().map_err(io("sync", path))?;
        }
        Ok((
            Segment {
                path: path.to_path_buf(),
                file,
                first,
                ends,
            },
            torn,
        ))
    }
}
