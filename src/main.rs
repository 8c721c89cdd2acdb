//! `ironclad-rls`: parse the command line, set up logging, run the command.

use std::process::ExitCode;

use clap::Parser;
use ironclad_rls::settings::{Cli, Command};
use ironclad_rls::{app, bench, cli, shutdown};

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => {
            cli::init_logging(args.log_format);
            match app::run(args, shutdown::signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Validate(args) => cli::validate(&args),
        Command::Check(args) => cli::check(&args).await,
        Command::Bench(args) => bench::run(&args).await,
        Command::Render(target) => cli::render(&target),
    }
}
