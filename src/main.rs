//! The `ipgate` command: parse arguments, load the configuration, start.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad command line, 64 bad configuration.

use clap::{Parser, Subcommand};
use ipgate::config::Config;
use ipgate::operator::{self, AdminCommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const EXIT_BAD_CONFIG: u8 = 64;
const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Parser)]
#[command(
    name = "ipgate",
    version,
    about = "API keys that only work from their whitelisted addresses"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the gateway.
    Serve {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Validates a configuration file and lists every problem in it.
    CheckConfig {
        /// The file to check.
        #[arg(default_value = "config.toml")]
        file: PathBuf,
    },
    /// The operator's commands, on the store named in the configuration.
    Admin {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
        /// Print one JSON value instead of text.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: AdminCommand,
    },
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        let count = errors.0.len();
        let problems = if count == 1 { "problem" } else { "problems" };
        eprintln!("ipgate: {count} {problems} in {}:", path.display());
        eprint!("{}", errors.render(path));
        ExitCode::from(EXIT_BAD_CONFIG)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Serve { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            serve(config)
        }
        Command::Admin {
            config,
            json,
            command,
        } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("ipgate: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(operator::run(command, &config)) {
                Ok(out) if json => {
                    println!("{}", out.json);
                    ExitCode::SUCCESS
                }
                Ok(out) => {
                    println!("{}", out.plain);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ipgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn serve(config: Config) -> ExitCode {
    let (_flush_logs_on_exit, access_log) = ipgate::logging::init(&config.log);
    // One worker needs no work stealing: the single-threaded scheduler does the same
    // job with fewer atomics per task switch.
    let mut runtime = if config.server.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if config.server.workers > 1 {
        runtime.worker_threads(config.server.workers);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ipgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let stop = ipgate::app::stop_on_signals();
        ipgate::app::serve(config, access_log, stop).await
    });
    // A store call still running on the blocking pool (a poll, a freed snapshot) must
    // not hold the exit past the drain: give it a moment, then go.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let cause = ipgate::logging::error_chain(&e);
            let msg = if cause.is_empty() {
                e.to_string()
            } else {
                format!("{e}: {cause}")
            };
            tracing::error!(error = %msg, "ipgate stopped");
            eprintln!("ipgate: {msg}");
            ExitCode::FAILURE
        }
    }
}
