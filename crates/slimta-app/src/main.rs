//! `slimta`: the mail transfer agent daemon.
//!
//! This file is the process shell only: the command line, logging, signals
//! and the pid file. The schema lives in `config.rs`, the wiring in
//! `build.rs`.
//!
//! Decisions:
//!
//! - Exit codes: 0 after a clean shutdown or a good `--check-config`; 2 for
//!   anything wrong with the configuration (unreadable, invalid, asks for an
//!   unsupported feature) and for usage errors (clap's own code); 1 when the
//!   daemon fails at run time; 128 + signal number when a second SIGTERM or
//!   SIGINT cuts the drain short, as a shell reports a killed process.
//! - Configuration errors are printed `FILE: key.path: message`, one per
//!   line on stderr, like a compiler's, so an editor or grep can find them.
//! - Logs go to stderr; stdout carries only what was asked for
//!   (`--check-config`'s verdict, `--print-default`).
//! - SIGTERM and SIGINT set a `watch` flag the runner drains on; a second
//!   one exits at once for an operator who will not wait. SIGHUP reloads
//!   what can change while running (`reload.rs`: accept_domains, AUTH
//!   users, TLS certificates) and is never fatal (the default action of
//!   SIGHUP).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use slimta_app::config::{Config, ConfigError, DEFAULT_CONFIG, LogFormat, ProcessConfig};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

/// The slimta mail transfer agent.
///
/// With no option it runs the embedded default configuration: an SMTP
/// edge on 127.0.0.1:2525 into a disk queue under ./slimta-spool, relaying
/// by MX, accepting mail for no domain until one is configured.
#[derive(Debug, Parser)]
#[command(name = "slimta", version, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Run the MTA from this TOML configuration file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["check_config", "print_default"])]
    config: Option<PathBuf>,
    /// Check this configuration file, print every error with its key path
    /// (exit 2) or "FILE: ok" (exit 0), and exit.
    #[arg(long, value_name = "FILE", conflicts_with = "print_default")]
    check_config: Option<PathBuf>,
    /// Print the embedded default configuration, a starting point for your
    /// own file, and exit.
    #[arg(long)]
    print_default: bool,
    /// Operate a queue instead of running the daemon.
    #[command(subcommand)]
    command: Option<Command>,
}

/// Commands besides running the daemon.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// List, show, retry or delete queued messages of a disk queue, through
    /// the running daemon's control socket or, without a daemon, the spool.
    Queue(slimta_app::queue_cli::QueueCommand),
    /// Make a DKIM signing key and print its DNS record.
    Dkim(slimta_app::dkim_cli::DkimCommand),
}

/// A configuration problem has been printed; exit with this.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Dkim(dkim)) = &cli.command {
        return slimta_app::dkim_cli::run(dkim);
    }
    if let Some(Command::Queue(queue)) = &cli.command {
        let config = match &queue.config {
            Some(path) => match load(path) {
                Ok(config) => config,
                Err(code) => return code,
            },
            None => Config::embedded_default(),
        };
        return slimta_app::queue_cli::run(&config, queue.queue.as_deref(), &queue.action);
    }
    if cli.print_default {
        print!("{DEFAULT_CONFIG}");
        return ExitCode::SUCCESS;
    }
    if let Some(path) = &cli.check_config {
        return match load(path) {
            Ok(_) => {
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        };
    }
    let (config, source) = match &cli.config {
        Some(path) => match load(path) {
            Ok(config) => (config, path.display().to_string()),
            Err(code) => return code,
        },
        None => (
            Config::embedded_default(),
            "the embedded default".to_owned(),
        ),
    };
    if let Err(message) = init_logging(&config.process) {
        eprintln!("slimta: {message}");
        return ExitCode::from(EXIT_CONFIG);
    }
    if cli.config.is_none() {
        for (name, edge) in &config.edges {
            let addresses: Vec<String> = edge.listen.iter().map(ToString::to_string).collect();
            eprintln!(
                "slimta: no --config given, running the embedded default: edge \"{name}\" ({}) \
                 on {}, accepting mail for no domain until accept_domains is set \
                 (see `slimta --print-default`)",
                edge.kind.as_str(),
                addresses.join(", ")
            );
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("slimta: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon(&config, &source, cli.config.as_deref())) {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("slimta: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Reads and checks a configuration file, printing every problem.
fn load(path: &Path) -> Result<Config, ExitCode> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", path.display());
            return Err(ExitCode::from(EXIT_CONFIG));
        }
    };
    slimta_app::parse_and_check(&text).map_err(|errors| {
        print_errors(path, &errors);
        ExitCode::from(EXIT_CONFIG)
    })
}

fn print_errors(path: &Path, errors: &[ConfigError]) {
    for error in errors {
        eprintln!("{}: {error}", path.display());
    }
    eprintln!(
        "{}: {} error{}",
        path.display(),
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
}

/// `RUST_LOG`, when set, wins over `process.log_level`, so an operator can
/// turn on debugging without editing the file.
fn init_logging(process: &ProcessConfig) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(&directives)
            .map_err(|e| format!("invalid RUST_LOG \"{directives}\": {e}"))?,
        _ => EnvFilter::try_new(&process.log_level)
            .map_err(|e| format!("invalid process.log_level: {e}"))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in log files.
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match process.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|e| format!("cannot set up logging: {e}"))
}

/// Runs the configuration until a signal asks it to stop.
async fn daemon(config: &Config, source: &str, path: Option<&Path>) -> Result<(), String> {
    let (stop, shutdown) = watch::channel(false);
    let (reload, reloads) = watch::channel(0u64);
    let signals = Signals::install().map_err(|e| format!("cannot handle signals: {e}"))?;
    tokio::spawn(signals.watch(stop, reload));
    let _pid_file = match &config.process.pid_file {
        Some(path) => Some(PidFile::create(path)?),
        None => None,
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = source,
        hostname = %config.process.hostname,
        "slimta starting"
    );
    for (name, edge) in &config.edges {
        tracing::info!(
            edge = %name,
            kind = edge.kind.as_str(),
            listen = ?edge.listen,
            queue = %edge.queue,
            accept_domains = ?edge.accept_domains,
            "edge configured"
        );
    }
    slimta_app::build::run(config, path, shutdown, reloads).await
}

/// The signals the daemon reacts to, registered before it announces itself
/// so that a signal sent right after "starting" is never the default action.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn watch(mut self, stop: watch::Sender<bool>, reload: watch::Sender<u64>) {
        let mut stopping = false;
        loop {
            let (name, number) = tokio::select! {
                _ = self.term.recv() => ("SIGTERM", 15),
                _ = self.int.recv() => ("SIGINT", 2),
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    reload.send_modify(|n| *n += 1);
                    continue;
                }
            };
            if stopping {
                tracing::warn!("{name} again: exiting at once without draining");
                std::process::exit(128 + number);
            }
            stopping = true;
            tracing::info!("{name}: shutting down (send it again to exit at once)");
            // No receiver left means the runner has already returned.
            let _ = stop.send(true);
        }
    }
}

/// The daemon's process id in a file, removed again on a clean exit.
struct PidFile(PathBuf);

impl PidFile {
    fn create(path: &Path) -> Result<Self, String> {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .map_err(|e| format!("cannot write pid_file {}: {e}", path.display()))?;
        Ok(Self(path.to_owned()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Best effort: a stale pid file is harmless next to a failed exit,
        // but say so (after dropping root, its directory may not be ours).
        if let Err(e) = std::fs::remove_file(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.0.display(), error = %e, "cannot remove the pid file");
        }
    }
}
