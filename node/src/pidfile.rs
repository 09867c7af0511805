//! `run --pid FILE`: the process id written where an init system or a monitoring check
//! expects it (upstream's flag of the same name), and removed again when the provisioner stops.

use std::path::{Path, PathBuf};

/// A written pid file; dropping it removes the file.
#[derive(Debug)]
pub struct PidFile(PathBuf);

impl PidFile {
    /// Writes this process's id to `path`, replacing what it held.
    pub fn write(path: &Path) -> std::io::Result<PidFile> {
        std::fs::write(path, format!("{}\n", std::process::id()))?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // a file someone else replaced meanwhile is theirs: only ours is removed
        let ours = std::fs::read_to_string(&self.0)
            .is_ok_and(|s| s.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_this_process_id_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("provisioner.pid");
        std::fs::write(&path, "1\n").unwrap();
        let pid = PidFile::write(&path).unwrap();
        let held = std::fs::read_to_string(&path).unwrap();
        assert_eq!(held.trim(), std::process::id().to_string());
        drop(pid);
        assert!(!path.exists());
    }

    #[test]
    fn a_file_another_process_wrote_since_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("provisioner.pid");
        let pid = PidFile::write(&path).unwrap();
        std::fs::write(&path, "4242\n").unwrap();
        drop(pid);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "4242\n");
    }

    #[test]
    fn an_unwritable_place_is_an_error() {
        let err = PidFile::write(Path::new("/nonexistent/dir/provisioner.pid")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
