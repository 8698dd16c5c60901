//! `fnctl`: command-line client for fn-supervisor's REST API.

mod cli;
mod client;
mod functions;
mod hooks;
mod logs;
mod output;
mod secrets;
mod status;
mod transfer;

use std::fmt;
use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command, HooksCommand, SecretsCommand};
use crate::client::{Client, ServerError, Unreachable};

/// The server refused or failed the request, or a local step failed.
const EXIT_FAILURE: u8 = 1;
/// What clap uses for a bad command line; ours match it.
const EXIT_USAGE: u8 = 2;
/// sysexits' EX_UNAVAILABLE: scripts can tell "down" from "said no".
const EXIT_UNREACHABLE: u8 = 69;

/// A command line clap accepted but that does not make sense, e.g. code
/// from stdin without `--id`.
#[derive(Debug)]
pub struct Usage(pub String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// What every verb needs.
pub struct Ctx {
    pub client: Client,
    pub json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(stack) = e
                .downcast_ref::<ServerError>()
                .and_then(|s| s.stack.as_ref())
            {
                // The first line of a JavaScript stack repeats the message.
                for line in stack.lines().skip(1) {
                    eprintln!("{line}");
                }
            }
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<Unreachable>().is_some() {
        EXIT_UNREACHABLE
    } else if e.downcast_ref::<Usage>().is_some() {
        EXIT_USAGE
    } else {
        EXIT_FAILURE
    }
}

fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx {
        client: Client::new(&cli.url, cli.token),
        json: cli.json,
    };
    match cli.command {
        Command::Deploy(args) => functions::deploy(&ctx, args),
        Command::Invoke { id, data, timeout } => functions::invoke(&ctx, &id, data, timeout),
        Command::Delete { id } => functions::delete(&ctx, &id),
        Command::List => functions::list(&ctx),
        Command::Get { id } => functions::get(&ctx, &id),
        Command::Versions { id } => functions::versions(&ctx, &id),
        Command::Rollback { id, version } => functions::rollback(&ctx, &id, version),
        Command::Logs { id, follow, tail } => logs::show(&ctx, &id, follow, tail),
        Command::Secrets { command } => match command {
            SecretsCommand::Set { id, secrets } => secrets::set(&ctx, &id, secrets),
            SecretsCommand::Unset { id, names } => secrets::unset(&ctx, &id, names),
            SecretsCommand::List { id } => secrets::list(&ctx, &id),
        },
        Command::Export { file } => transfer::export(&ctx, &file),
        Command::Import { file, keep_going } => transfer::import(&ctx, &file, keep_going),
        Command::Status => status::show(&ctx),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "fnctl", &mut std::io::stdout());
            Ok(())
        }
        Command::Hooks { command } => match command {
            HooksCommand::List => hooks::list(&ctx),
            HooksCommand::Fire {
                hook,
                context,
                no_wait,
            } => hooks::fire(&ctx, &hook, &context, no_wait),
        },
        Command::Activations { id, limit } => hooks::activations(&ctx, &id, limit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_error_kind() {
        let down: anyhow::Error = Unreachable {
            base: "http://x".into(),
            reason: "refused".into(),
        }
        .into();
        assert_eq!(exit_code(&down.context("importing 'a'")), EXIT_UNREACHABLE);
        assert_eq!(exit_code(&Usage("x".into()).into()), EXIT_USAGE);
        assert_eq!(exit_code(&anyhow::anyhow!("other")), EXIT_FAILURE);
    }
}
