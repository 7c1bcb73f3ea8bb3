//! What a directive's value or a location's configuration can get wrong.

use super::value::MAX_SOCKET_PATH;

/// A directive refused: `nginx -t` prints it after the directive's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfError {
    #[error("\"{value}\" is not a whole number from {min} to {max}")]
    Number {
        value: String,
        min: usize,
        max: usize,
    },
    #[error("\"{0}\" is not a size (examples: 65536, 512k, 1m)")]
    Size(String),
    #[error("\"{0}\" is not a duration (examples: 500ms, 30s, 2m) or \"off\"")]
    Duration(String),
    #[error("\"{0}\" must not be 0")]
    Zero(String),
    #[error("\"{0}\" is longer than the {1} a held poll may last")]
    TooLong(String, &'static str),
    #[error(
        "\"{0}\" is not an origin: give \"*\", or origins such as \"https://chat.example.com\" \
         (scheme://host[:port], no path), separated by spaces"
    )]
    Origin(String),
    #[error("is duplicate")]
    Duplicate,
    #[error("needs a prefix location such as \"location {0} {{ {1}; }}\"")]
    NotPrefixLocation(&'static str, &'static str),
    #[error("cannot stand in a location that has \"{0}\": each answers its location alone")]
    TwoHandlers(&'static str),
    #[error("\"{0}\" must be an absolute path")]
    RelativePath(String),
    #[error("\"{0}\" is longer than the {MAX_SOCKET_PATH} bytes a Unix socket path may have")]
    PathTooLong(String),
    #[error(
        "cannot share location \"{location}\" with another content handler (\"proxy_pass\", \
         \"fastcgi_pass\", \"uwsgi_pass\", \"scgi_pass\", \"grpc_pass\", \"memcached_pass\" or \
         another module's directive): only one of them can answer its requests"
    )]
    SharedContentHandler { location: String },
}

/// Configuration that nginx accepts but that cannot work as it stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfWarning {
    #[error(
        "\"chatup_relay_socket\" \"{socket}\": directory \"{dir}\" does not exist; \
         workers will keep retrying to connect to the sidecar until it creates the socket there"
    )]
    RelayDirMissing { socket: String, dir: String },
    #[error(
        "\"chatup_relay_socket\" \"{socket}\": \"{dir}\" is not a directory; \
         workers will keep retrying to connect to the sidecar until it creates the socket there"
    )]
    RelayDirNotDir { socket: String, dir: String },
}
