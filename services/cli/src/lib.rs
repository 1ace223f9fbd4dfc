//! `berth`, the command-line client of Berth, as a library: the command line
//! ([`args`], with the placement flags' parsers in [`placement`]), the API client
//! ([`client`]), one module per resource under [`commands`], the readers of
//! task-definition files ([`taskdef_file`]) and CreateService files ([`service_file`]),
//! and `berth dev` ([`dev`]), which runs a whole local Berth. `main.rs` only parses and
//! calls [`run`].

pub mod args;
pub mod client;
pub mod commands;
pub mod dev;
pub mod error;
pub mod output;
pub mod placement;
pub mod service_file;
pub mod taskdef_file;

pub use args::Cli;
pub use error::CliError;

/// Runs one `berth` invocation.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        args::Command::Dev(dev_args) => dev::run(&cli.global, dev_args).await,
        command => commands::run(&cli.global, command).await,
    }
}
