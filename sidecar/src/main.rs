#![forbid(unsafe_code)]

use std::process::ExitCode;

use chatup_sidecar::cli::{Cli, Command};
use chatup_sidecar::config::Config;
use chatup_sidecar::host::publish::WsSettings;
use chatup_sidecar::jwt::mint::make_token;
use chatup_sidecar::server::Sidecar;
use chatup_sidecar::shutdown::Signals;
use chatup_sidecar::{logging, Error};

fn main() -> ExitCode {
    let cli = Cli::parse_args();
    let result = match cli.command {
        Some(Command::Token(ref args)) => {
            let now = jsonwebtoken::get_current_timestamp();
            make_token(args, now)
                .map(|token| println!("{token}"))
                .map_err(Error::from)
        }
        Some(Command::Config) => load(&cli).map(|config| print!("{}", config.to_toml())),
        Some(Command::Run) | None => return run(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatup-sidecar: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(cli: &Cli) -> Result<Config, Error> {
    let loaded = Config::load(cli.config.as_deref(), std::env::vars_os(), &cli.set)?;
    for warning in &loaded.warnings {
        eprintln!("chatup-sidecar: warning: {warning}");
    }
    Ok(loaded.config)
}

/// Runs the sidecar. Errors before logging is set up go to stderr as plain text, later ones
/// through the configured log output.
fn run(cli: &Cli) -> ExitCode {
    let loaded = match Config::load(cli.config.as_deref(), std::env::vars_os(), &cli.set)
        .map_err(Error::from)
        .and_then(|loaded| {
            logging::init(&loaded.config.log)?;
            Ok(loaded)
        }) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("chatup-sidecar: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match serve(cli, &loaded.config, &loaded.warnings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(cli: &Cli, config: &Config, warnings: &[String]) -> Result<(), Error> {
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = cli
            .config
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(none)".into()),
        "starting chatup-sidecar"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("chatup-sidecar")
        .build()
        .map_err(Error::Serve)?;
    runtime.block_on(async {
        let mut signals = Signals::install().map_err(Error::Signals)?;
        let sidecar = Sidecar::start(config, WsSettings::default()).await?;
        sidecar
            .run(async move {
                let name = signals.recv().await;
                tracing::info!(signal = name, "shutting down");
                // A second signal means: stop now.
                tokio::spawn(async move {
                    let name = signals.recv().await;
                    tracing::warn!(signal = name, "second signal; exiting immediately");
                    std::process::exit(1);
                });
            })
            .await
    })
}
