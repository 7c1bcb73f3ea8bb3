//! The relay's socket file: created with its mode, a stale one (left by a crashed process)
//! replaced, a live one or a non-socket refused, and removed when the server goes away.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tracing::{debug, info, warn};

use super::RelayError;

/// Creates the socket at `path` (replacing a stale one) with file mode `mode`. Must run
/// inside a Tokio runtime.
pub(super) fn bind(path: &Path, mode: u32) -> Result<(UnixListener, SocketFile), RelayError> {
    remove_stale_socket(path)?;
    let listener = UnixListener::bind(path).map_err(|source| RelayError::Bind {
        path: path.into(),
        source,
    })?;
    let meta = std::fs::symlink_metadata(path).map_err(|source| RelayError::Bind {
        path: path.into(),
        source,
    })?;
    let file = SocketFile {
        path: path.into(),
        identity: (meta.dev(), meta.ino()),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        RelayError::Mode {
            path: path.into(),
            mode,
            source,
        }
    })?;
    Ok((listener, file))
}

/// The socket file, removed when dropped unless another process has replaced it.
#[derive(Debug)]
pub(super) struct SocketFile {
    /// Where the socket is: removed from there, and named in logs.
    pub(super) path: PathBuf,
    /// Device and inode of the socket we created, to recognise it at removal.
    identity: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.identity => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    warn!(path = %self.path.display(), "cannot remove relay socket: {e}");
                } else {
                    debug!(path = %self.path.display(), "removed relay socket");
                }
            }
            _ => {}
        }
    }
}

/// Removes a socket file nobody listens on; refuses a live socket or another kind of file.
fn remove_stale_socket(path: &Path) -> Result<(), RelayError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(RelayError::Bind {
                path: path.into(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(RelayError::NotASocket { path: path.into() });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(RelayError::InUse { path: path.into() }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(|source| RelayError::Bind {
                path: path.into(),
                source,
            })?;
            info!(path = %path.display(), "removed stale relay socket");
            Ok(())
        }
        Err(source) => Err(RelayError::Bind {
            path: path.into(),
            source,
        }),
    }
}
