//! `ipgate man`: manual pages made from the command line's own definition
//! (clap_mangen), one per command, and on the main page what no argument says: the
//! configuration keys (the shipped `config.toml`, so the page cannot drift from it),
//! the signals, the exit codes, the environment and the files.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The shipped configuration: every key with its default and what it does.
const CONFIG_TOML: &str = include_str!("../../config.toml");

/// The main page, `ipgate(1)`, for the command `cli` (the whole command line).
pub fn main_page(cli: clap::Command) -> std::io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(prepared(cli));
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    man.render_subcommands_section(&mut out)?;
    out.write_all(extra_sections().as_bytes())?;
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// Writes `ipgate.1` and a page for every command under it (`ipgate-admin-key-create.1`,
/// …) into `dir`; returns the files written.
pub fn write_pages(cli: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fn each(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            written.push(clap_mangen::Man::new(sub.clone()).generate_to(dir)?);
            each(sub, dir, written)?;
        }
        Ok(())
    }
    let main = dir.join("ipgate.1");
    std::fs::write(&main, main_page(cli.clone())?)?;
    let mut written = vec![main];
    each(&prepared(cli), dir, &mut written)?;
    Ok(written)
}

/// As clap_mangen prepares a command for its pages: no `help` subcommand, globals
/// propagated, every subcommand named `ipgate-…`.
fn prepared(cli: clap::Command) -> clap::Command {
    let mut cli = cli.disable_help_subcommand(true);
    cli.build();
    cli
}

/// Text as roff: backslashes and hyphens escaped, no line read as a request.
fn roff(text: &str) -> String {
    text.lines()
        .map(|line| {
            let line = line.replace('\\', "\\e").replace('-', "\\-");
            if line.starts_with('.') || line.starts_with('\'') {
                format!("\\&{line}")
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A section of labelled paragraphs.
fn section(title: &str, intro: &str, items: &[(&str, &str)]) -> String {
    let mut out = format!(".SH \"{title}\"\n");
    if !intro.is_empty() {
        out.push_str(&roff(intro));
        out.push('\n');
    }
    for (label, text) in items {
        out.push_str(&format!(".TP\n.B {}\n{}\n", roff(label), roff(text)));
    }
    out
}

fn extra_sections() -> String {
    let mut out = String::new();
    out.push_str(&section(
        "CONFIGURATION",
        "ipgate reads one TOML file, named by --config (default ./config.toml). Unknown keys \
         are refused; relative paths in it are relative to its folder. `ipgate check-config \
         FILE` checks a file and lists every problem with its line. Every key, with its \
         default, as the shipped config.toml has it:",
        &[],
    ));
    out.push_str(".PP\n.nf\n.RS 2\n");
    out.push_str(&roff(CONFIG_TOML));
    out.push_str("\n.RE\n.fi\n");
    out.push_str(&section(
        "SIGNALS",
        "",
        &[
            (
                "SIGHUP",
                "ipgate serve reads the configuration file again and applies what may change \
                 while running ([upstream], [auth], [client_ip], [limits], log.level, \
                 refresh.max_staleness, the TLS certificate and key). A file with problems, \
                 or a TLS pair that does not load, is logged and the running configuration \
                 stays.",
            ),
            (
                "SIGTERM, SIGINT",
                "ipgate serve turns /readyz to 503, stops accepting, waits up to \
                 server.shutdown_grace for requests in flight, writes the usage counts, \
                 and exits 0.",
            ),
        ],
    ));
    out.push_str(&section(
        "EXIT STATUS",
        "",
        &[
            ("0", "Success."),
            (
                "1",
                "A runtime failure: the store could not be read or written, there is no \
                 store where store.url points (ipgate admin creates none: see ipgate admin \
                 init), an unknown id, input a rule refuses.",
            ),
            (
                "2",
                "A bad command line. With --json anywhere on it, the error is one JSON \
                 object on stdout, kind \"usage\".",
            ),
            (
                "64",
                "A bad configuration: every problem is listed, with its key and line.",
            ),
        ],
    ));
    out.push_str(&section(
        "ENVIRONMENT",
        "",
        &[
            (
                "RUST_LOG",
                "The log filter; when set, it rules over log.level.",
            ),
            (
                "PGPASSWORD",
                "The PostgreSQL password when neither store.url nor store.password_file \
                 gives one.",
            ),
            (
                "SUDO_USER, USER",
                "Who ipgate admin names in the audit log (admin:NAME), unless --actor says.",
            ),
        ],
    ));
    out.push_str(&section(
        "FILES",
        "",
        &[
            (
                "./config.toml",
                "The configuration read when --config names no other.",
            ),
            (
                "ipgate.db",
                "The embedded store (store.url = \"sqlite://ipgate.db\"), beside the \
                 configuration file, with its -wal and -shm files. Created by ipgate serve \
                 or ipgate admin init, never by another admin command.",
            ),
            (
                "cert.pem, key.pem",
                "The TLS certificate and key named by server.tls, read again on SIGHUP.",
            ),
        ],
    ));
    out.push_str(&section(
        "SEE ALSO",
        "ipgate-serve(1), ipgate-check-config(1), ipgate-admin(1), ipgate-completions(1), \
         ipgate-man(1). `ipgate man --dir DIR` writes every page.",
        &[],
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_cannot_become_a_roff_request() {
        assert_eq!(roff(".SH x\n'a\nb-c \\d"), "\\&.SH x\n\\&'a\nb\\-c \\ed");
    }
}
