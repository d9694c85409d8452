//! The `ipgate` command: parse arguments, load the configuration, start.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad command line, 64 bad configuration.
//! With `--json`, an error is one JSON object on stdout, as a success is: a bad command
//! line too, when `--json` stands anywhere on it.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use ipgate::config::{Config, ConfigErrors};
use ipgate::operator::{self, AdminCommand};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const EXIT_BAD_CONFIG: u8 = 64;
/// clap's own exit code for a bad command line, kept under `--json`.
const EXIT_USAGE: u8 = 2;
const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Parser)]
#[command(
    name = "ipgate",
    version,
    about = "API keys that only work from their whitelisted addresses"
)]
struct Cli {
    /// The configuration file; relative paths in it are relative to its folder.
    #[arg(long, global = true, default_value = "config.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the gateway. SIGHUP reloads the configuration, SIGTERM drains and stops.
    Serve,
    /// Validates a configuration file and lists every problem in it (exit 64 if any).
    CheckConfig {
        /// The file to check (default: ./config.toml).
        file: Option<PathBuf>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The operator's commands, on the store named in the configuration.
    Admin {
        /// Print one JSON value instead of text (an error too, as one object).
        #[arg(long, global = true)]
        json: bool,
        /// Who the audit log names for these changes, as admin:NAME (default: $SUDO_USER,
        /// else $USER).
        #[arg(long, global = true)]
        actor: Option<String>,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Prints a shell completion script: `source <(ipgate completions bash)`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Prints the main manual page (roff): `ipgate man | man -l -`; with --dir, writes
    /// a page for every command there.
    Man {
        /// Write ipgate.1, ipgate-serve.1, ipgate-admin.1, … into this folder (which
        /// must exist) and list them, instead of printing the main page.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Commands on which `--config` does nothing (check-config takes its FILE): it is
/// still accepted there, since it may stand anywhere, but not shown in their help,
/// manual pages and completions.
const WITHOUT_CONFIG: &[&str] = &["check-config", "completions", "man"];

/// The command line: the derived one, with `--config` hidden where it does nothing.
fn command() -> clap::Command {
    let mut cmd = Cli::command();
    for name in WITHOUT_CONFIG {
        cmd = cmd.mut_subcommand(name, |sub| {
            // A local argument of the global's id: clap then does not propagate the
            // global one here, and a value given here still reaches `Cli::config`.
            sub.arg(
                clap::Arg::new("config")
                    .long("config")
                    .help("Accepted anywhere on the line; not used by this command")
                    .hide(true)
                    .value_parser(clap::value_parser!(PathBuf)),
            )
        });
    }
    cmd
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Loads the configuration, or says why not (as text on stderr, or as one JSON object
/// on stdout) and gives the exit code.
fn load(path: &Path, json: bool) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        report_config(path, &errors, json);
        ExitCode::from(EXIT_BAD_CONFIG)
    })
}

fn report_config(path: &Path, errors: &ConfigErrors, json: bool) {
    if json {
        let value = json!({
            "error": {
                "kind": "config",
                "message": format!("bad configuration in {}", path.display()),
                "file": path,
                "problems": errors.0,
            }
        });
        println!("{value}");
        return;
    }
    let count = errors.0.len();
    let problems = if count == 1 { "problem" } else { "problems" };
    eprintln!("ipgate: {count} {problems} in {}:", path.display());
    eprint!("{}", errors.render(path));
}

/// Parses the command line. A bad one is clap's text on stderr and exit 2, or, when
/// `--json` stands anywhere on the line (clap could not tell which command it belongs
/// to), one JSON object on stdout with the same exit code.
fn parse() -> Result<Cli, ExitCode> {
    let parsed = command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m));
    let error = match parsed {
        Ok(cli) => return Ok(cli),
        Err(e) => e,
    };
    use clap::error::ErrorKind;
    let answer = matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    );
    let json = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    if answer || !json {
        error.exit();
    }
    let value = json!({ "error": { "kind": "usage", "message": usage_message(&error) } });
    println!("{value}");
    Err(ExitCode::from(EXIT_USAGE))
}

/// clap's message in one line, without its `error: ` and the usage and hints that
/// follow its first paragraph.
fn usage_message(error: &clap::Error) -> String {
    if error.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        // clap's text is then the whole help.
        return "a subcommand is missing; see --help".into();
    }
    let text = error.render().to_string();
    let message: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .collect();
    let message = message.join(" ");
    message
        .strip_prefix("error: ")
        .unwrap_or(&message)
        .to_owned()
}

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match cli.command {
        Command::CheckConfig { file, json } => {
            let file = file.unwrap_or(cli.config);
            match load(&file, json) {
                Ok(_) if json => {
                    println!("{}", json!({ "file": file, "ok": true }));
                    ExitCode::SUCCESS
                }
                Ok(_) => {
                    println!("{}: ok", file.display());
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        Command::Serve => match load(&cli.config, false) {
            Ok(config) => serve(config, cli.config),
            Err(code) => code,
        },
        Command::Admin {
            json,
            actor,
            command,
        } => match load(&cli.config, json) {
            Ok(config) => admin(command, &config, actor.as_deref(), json),
            Err(code) => code,
        },
        Command::Completions { shell } => {
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut command(), "ipgate", &mut text);
            print_bytes(&text)
        }
        Command::Man { dir: None } => match operator::manual::main_page(command()) {
            Ok(text) => print_bytes(&text),
            Err(e) => {
                eprintln!("ipgate: cannot make the manual page: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Man { dir: Some(dir) } => match operator::manual::write_pages(command(), &dir) {
            Ok(written) => {
                let list: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
                print_bytes(format!("{}\n", list.join("\n")).as_bytes())
            }
            Err(e) => {
                eprintln!(
                    "ipgate: cannot write the manual pages to {}: {e}",
                    dir.display()
                );
                ExitCode::FAILURE
            }
        },
    }
}

/// Writes generated text to stdout; a reader that stops early (`| head`) is no error.
fn print_bytes(text: &[u8]) -> ExitCode {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipgate: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

fn admin(command: AdminCommand, config: &Config, actor: Option<&str>, json: bool) -> ExitCode {
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
    // Which store this is, before anything can fail: the one line that tells a typo in
    // store.url. On stderr in both modes, so stdout stays one JSON value for scripts.
    eprintln!("store: {}", operator::store_location(&config.store));
    let result = operator::operator_actor(actor)
        .and_then(|actor| runtime.block_on(operator::run(command, config, &actor)));
    match result {
        Ok(out) if json => {
            println!("{}", out.json);
            ExitCode::SUCCESS
        }
        Ok(out) => {
            println!("{}", out.plain);
            ExitCode::SUCCESS
        }
        Err(e) if json => {
            println!("{}", e.to_json());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ipgate: {}", e.message());
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config, path: PathBuf) -> ExitCode {
    let (_flush_logs_on_exit, access, level) = ipgate::logging::init(&config.log);
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
    let control = match ipgate::control::ControlPlane::start() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ipgate: cannot start the control plane's runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let stop = ipgate::app::stop_on_signals();
        let logs = ipgate::app::Logs { access, level };
        ipgate::app::serve(config, path, logs, stop, control.handle().clone()).await
    });
    // A store call still running on the blocking pool (a poll, a freed snapshot) must
    // not hold the exit past the drain: give it a moment, then go.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    drop(control);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command and every argument says what it is for: `--help`, the man page
    /// and the shell completions are all made from these.
    #[test]
    fn every_argument_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() && path != " ipgate" {
                missing.push(path.clone());
            }
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() {
                    missing.push(format!("{path} <{}>", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_name() != "help" {
                    walk(sub, &path, missing);
                }
            }
        }
        let mut missing = Vec::new();
        let mut cmd = command();
        cmd.build();
        walk(&cmd, "", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }
}
