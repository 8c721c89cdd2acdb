//! `ironclad-rls`: parse the command line, run the command.

use std::process::ExitCode;

use clap::Parser;
use ironclad_rls::commands::{bench, check, explain, render, top, validate};
use ironclad_rls::settings::{self, Cli, Command};
use ironclad_rls::{app, shutdown};

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => {
            settings::init_logging(args.log_format);
            match app::run(args, shutdown::signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Validate(args) => validate::run(&args),
        Command::Check(args) => check::run(&args).await,
        Command::Bench(args) => bench::run(&args).await,
        Command::Render(target) => render::run(&target),
        Command::Top(args) => top::run(&args).await,
        Command::Explain(args) => explain::run(&args).await,
    }
}
