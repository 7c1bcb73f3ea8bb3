//! The warning of a relay socket whose folder is not there, given once the `http` block is
//! parsed.

use std::io;
use std::path::Path;

use super::ConfWarning;

/// What a single `stat` says about the folder that should hold the relay socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirState {
    Dir,
    Missing,
    NotDir,
    /// The `stat` failed otherwise (e.g. permission): nothing useful to say.
    Unknown,
}

impl DirState {
    /// One `stat` of `dir`; cheap enough for config time, never called in a worker.
    pub fn of(dir: &Path) -> Self {
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => Self::Dir,
            Ok(_) => Self::NotDir,
            Err(err) if err.kind() == io::ErrorKind::NotFound => Self::Missing,
            Err(err) if err.kind() == io::ErrorKind::NotADirectory => Self::NotDir,
            Err(_) => Self::Unknown,
        }
    }
}

/// The relay socket itself may not exist yet (the sidecar creates it), but a missing folder
/// is almost always a typo; `state` tells what the folder is.
pub fn check_relay_socket_dir(
    socket: &str,
    state: impl FnOnce(&Path) -> DirState,
) -> Option<ConfWarning> {
    let dir = Path::new(socket).parent()?;
    let names = || (socket.to_owned(), dir.display().to_string());
    match state(dir) {
        DirState::Dir | DirState::Unknown => None,
        DirState::Missing => {
            let (socket, dir) = names();
            Some(ConfWarning::RelayDirMissing { socket, dir })
        }
        DirState::NotDir => {
            let (socket, dir) = names();
            Some(ConfWarning::RelayDirNotDir { socket, dir })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_socket_folder_that_is_not_there_is_warned_of() {
        let seen = |want: &'static str, state: DirState| {
            move |dir: &Path| {
                assert_eq!(dir, Path::new(want));
                state
            }
        };
        assert_eq!(
            check_relay_socket_dir("/run/chatup/relay.sock", seen("/run/chatup", DirState::Dir)),
            None
        );
        assert_eq!(
            check_relay_socket_dir("/x/relay.sock", seen("/x", DirState::Unknown)),
            None
        );
        let missing = check_relay_socket_dir("/rnu/relay.sock", seen("/rnu", DirState::Missing));
        assert_eq!(
            missing,
            Some(ConfWarning::RelayDirMissing {
                socket: "/rnu/relay.sock".into(),
                dir: "/rnu".into()
            })
        );
        let text = missing.unwrap().to_string();
        assert!(
            text.contains("\"/rnu\" does not exist") && text.contains("retrying"),
            "{text}"
        );
        assert!(matches!(
            check_relay_socket_dir("/f/relay.sock", seen("/f", DirState::NotDir)),
            Some(ConfWarning::RelayDirNotDir { .. })
        ));
    }

    #[test]
    fn dir_state_stats_the_folder() {
        let dir = std::env::temp_dir();
        assert_eq!(DirState::of(&dir), DirState::Dir);
        assert_eq!(
            DirState::of(&dir.join("chatup-no-such-dir-7f3a")),
            DirState::Missing
        );
        let file = dir.join(format!("chatup-dir-state-{}", std::process::id()));
        std::fs::write(&file, b"").unwrap();
        assert_eq!(DirState::of(&file), DirState::NotDir);
        assert_eq!(DirState::of(&file.join("below")), DirState::NotDir);
        std::fs::remove_file(&file).unwrap();
    }
}
