//! Where `run` and `config check` find the configuration when they are given none: this
//! package's `/etc/choria-provisioner/provisioner.yaml`, else upstream's
//! `/etc/choria-provisioner/choria-provisioner.yaml`, for an operator whose configuration
//! management writes upstream's path. With both there, ours is read and upstream's (kept for a
//! rollback, as docs/migrating.md advises) is named as not read.

use std::path::{Path, PathBuf};

/// The directory the Debian package keeps the configuration in.
pub const ETC_DIR: &str = "/etc/choria-provisioner";
/// This package's file name.
pub const OURS: &str = "provisioner.yaml";
/// Upstream choria-provisioner's file name.
pub const UPSTREAMS: &str = "choria-provisioner.yaml";

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("no configuration file given, and neither {ours} nor {upstreams} exists")]
pub struct Missing {
    ours: String,
    upstreams: String,
}

/// The configuration file to read, and one that is there but not read.
#[derive(Debug, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    pub not_read: Option<PathBuf>,
}

/// The configuration file in `dir`.
pub fn find_in(dir: &Path) -> Result<Found, Missing> {
    let (ours, upstreams) = (dir.join(OURS), dir.join(UPSTREAMS));
    match (ours.exists(), upstreams.exists()) {
        (true, also) => Ok(Found {
            path: ours,
            not_read: also.then_some(upstreams),
        }),
        (false, true) => Ok(Found {
            path: upstreams,
            not_read: None,
        }),
        (false, false) => Err(Missing {
            ours: ours.display().to_string(),
            upstreams: upstreams.display().to_string(),
        }),
    }
}

/// `given`, else the file in [`ETC_DIR`].
pub fn given_or_default(given: Option<PathBuf>) -> Result<Found, Missing> {
    match given {
        Some(path) => Ok(Found {
            path,
            not_read: None,
        }),
        None => find_in(Path::new(ETC_DIR)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ours_first_then_upstreams() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let missing = find_in(d).unwrap_err();
        assert!(missing.to_string().contains("neither"), "{missing}");
        std::fs::write(d.join(UPSTREAMS), "").unwrap();
        assert_eq!(
            find_in(d).unwrap(),
            Found {
                path: d.join(UPSTREAMS),
                not_read: None
            }
        );
        std::fs::write(d.join(OURS), "").unwrap();
        assert_eq!(
            find_in(d).unwrap(),
            Found {
                path: d.join(OURS),
                not_read: Some(d.join(UPSTREAMS))
            }
        );
        // a path given is taken as it is, whatever the directory holds
        let given = PathBuf::from("/srv/p.yaml");
        assert_eq!(given_or_default(Some(given.clone())).unwrap().path, given);
    }
}
