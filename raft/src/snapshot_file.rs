//! The bytes of one snapshot as openraft reads and writes them: a file, from an offset.
//!
//! openraft sends a snapshot by seeking and reading it chunk by chunk, and receives one by
//! seeking and writing each chunk it is sent. Kept in a file, neither the leader sending a
//! snapshot of a million records nor the member receiving it holds the snapshot in memory.
//! The current snapshot's file starts with its meta, so the data starts at an offset; a
//! snapshot being received is a file of its own (`snapshot/incoming-*`), which the store
//! makes the current one when it installs it.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// Snapshot data in a file, from `offset` on.
#[derive(Debug)]
pub struct SnapshotFile {
    file: tokio::fs::File,
    offset: u64,
    path: PathBuf,
}

impl SnapshotFile {
    /// The data of the file at `path` from `offset` on, `file` open on it.
    pub fn new(file: std::fs::File, offset: u64, path: PathBuf) -> SnapshotFile {
        SnapshotFile {
            file: tokio::fs::File::from_std(file),
            offset,
            path,
        }
    }

    /// An empty file in `dir` to receive a snapshot into; earlier ones, abandoned, go.
    pub fn incoming(dir: &Path) -> std::io::Result<SnapshotFile> {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with("incoming-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = dir.join(format!("incoming-{nanos}"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(SnapshotFile::new(file, 0, path))
    }

    /// The file, and where the data starts in it.
    pub fn path(&self) -> (&Path, u64) {
        (&self.path, self.offset)
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.file).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        let position = match position {
            SeekFrom::Start(n) => SeekFrom::Start(n.saturating_add(self.offset)),
            other => other,
        };
        Pin::new(&mut self.file).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        let offset = self.offset;
        Pin::new(&mut self.file)
            .poll_complete(cx)
            .map(|r| r.map(|at| at.saturating_sub(offset)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_and_seeks_count_from_the_data_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"metaDATA").unwrap();
        let mut f = SnapshotFile::new(std::fs::File::open(&p).unwrap(), 4, p.clone());
        assert_eq!(f.seek(SeekFrom::End(0)).await.unwrap(), 4);
        assert_eq!(f.seek(SeekFrom::Start(1)).await.unwrap(), 1);
        let mut s = String::new();
        f.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "ATA");
    }

    #[tokio::test]
    async fn a_received_snapshot_is_written_where_the_chunks_say() {
        let dir = tempfile::tempdir().unwrap();
        let stale = SnapshotFile::incoming(dir.path()).unwrap();
        let stale_path = stale.path().0.to_path_buf();
        drop(stale);
        let mut f = SnapshotFile::incoming(dir.path()).unwrap();
        assert!(!stale_path.exists(), "an abandoned receive is removed");
        f.seek(SeekFrom::Start(0)).await.unwrap();
        f.write_all(b"abc").await.unwrap();
        f.seek(SeekFrom::Start(3)).await.unwrap();
        f.write_all(b"def").await.unwrap();
        f.shutdown().await.unwrap();
        assert_eq!(std::fs::read(f.path().0).unwrap(), b"abcdef");
    }
}
