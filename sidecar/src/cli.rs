//! The command line.

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{keys_help, CONFIG_FILE_ENV};
use crate::jwt::mint::TokenArgs;

/// chatup's sidecar: relay server for the nginx workers of this host, publisher endpoints
/// (JWT-authenticated) and message broker.
#[derive(Debug, Parser)]
#[command(name = "chatup-sidecar", version)]
pub struct Cli {
    /// TOML config file; every key is optional.
    #[arg(long, short = 'c', global = true, value_name = "FILE", env = CONFIG_FILE_ENV)]
    pub config: Option<PathBuf>,

    /// Override one config key, e.g. --set http.listen=127.0.0.1:7002 (repeatable; wins
    /// over the environment and the file).
    #[arg(long = "set", global = true, value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar (the default).
    Run,
    /// Print a signed token (JWT) to stdout: a publisher's, an admin's (`--admin`) or a
    /// viewer's subscribe token (`--subscribe`).
    Token(Box<TokenArgs>),
    /// Print the effective configuration (defaults, file, environment, --set) as TOML.
    Config,
}

impl Cli {
    /// Parses the process arguments; `--help` also lists every config key with its
    /// environment variable.
    pub fn parse_args() -> Self {
        Self::parse_from_iter(std::env::args_os())
    }

    pub fn parse_from_iter<I, T>(args: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let command = Self::command().after_help(keys_help());
        let matches = command.get_matches_from(args);
        match Self::from_arg_matches(&matches) {
            Ok(cli) => cli,
            Err(e) => e.exit(),
        }
    }

    pub fn try_parse_from_iter<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let command = Self::command().after_help(keys_help());
        let matches = command.try_get_matches_from(args)?;
        Self::from_arg_matches(&matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_is_the_default_and_options_go_anywhere() {
        let cli = Cli::try_parse_from_iter(["chatup-sidecar", "--set", "a.b=c"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.set, vec!["a.b=c"]);
        let cli = Cli::try_parse_from_iter([
            "chatup-sidecar",
            "run",
            "--config",
            "/x.toml",
            "--set",
            "x.y=1",
            "--set",
            "x.z=2",
        ])
        .unwrap();
        assert!(matches!(cli.command, Some(Command::Run)));
        assert_eq!(cli.config, Some(PathBuf::from("/x.toml")));
        assert_eq!(cli.set.len(), 2);
    }

    #[test]
    fn token_arguments() {
        let cli = Cli::try_parse_from_iter([
            "chatup-sidecar",
            "token",
            "--key",
            "k.pem",
            "--name",
            "ann",
            "--events",
            "--ttl",
            "60",
        ])
        .unwrap();
        let Some(Command::Token(t)) = cli.command else {
            panic!("token expected")
        };
        assert_eq!(
            (t.name.as_deref(), t.ttl, t.events),
            (Some("ann"), 60, true)
        );
        assert_eq!(t.alg, jsonwebtoken::Algorithm::RS256);
        assert!(Cli::try_parse_from_iter(["chatup-sidecar", "token", "--name", "x"]).is_err());
        assert!(Cli::try_parse_from_iter([
            "chatup-sidecar",
            "token",
            "--key",
            "k",
            "--name",
            "x",
            "--alg",
            "none"
        ])
        .is_err());
    }

    #[test]
    fn help_lists_the_environment_variables() {
        let err = Cli::try_parse_from_iter(["chatup-sidecar", "--help"]).unwrap_err();
        let help = err.to_string();
        assert!(help.contains("CHATUP_RELAY_SOCKET"), "{help}");
        assert!(help.contains("CHATUP_AUTH_ALGORITHMS"), "{help}");
        assert!(help.contains("--set"), "{help}");
        assert!(help.contains("token"), "{help}");
    }
}
