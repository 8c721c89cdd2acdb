//! `ironclad-rls`: parse the command line, run the command. Invoked as `ratelimit` (the
//! image's `/bin/ratelimit` link) it is `ironclad-rls ratelimit`: no flags, the reference's
//! environment (`compat_env`).

use std::process::ExitCode;

use clap::Parser;
use ironclad_rls::commands::{bench, check, explain, render, top, validate};
use ironclad_rls::settings::{self, Cli, Command, ServeArgs};
use ironclad_rls::{app, compat_env, shutdown};

// jemalloc, chosen by measurement (README, Performance): glibc's malloc spent about a sixth
// of the service's CPU under load (`malloc`, `free`, `malloc_consolidate`); jemalloc took
// about a quarter off the CPU per call on the memory store, mimalloc about a tenth, and
// mimalloc's resident memory was higher (26 MB against 16 MB; glibc 14 MB).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// The tokio defaults (one worker per core, event and global queue intervals of 61 and 31)
// are kept: one worker, and both intervals at 127, measured no better within the noise of
// this 2-core machine (README, Performance).
#[tokio::main]
async fn main() -> ExitCode {
    let command = if compat_env::invoked_as_ratelimit(std::env::args_os().next().as_ref()) {
        Command::Ratelimit
    } else {
        Cli::parse().command
    };
    match command {
        Command::Serve(args) => {
            settings::init_logging(args.log_format);
            serve(args).await
        }
        Command::Ratelimit => match compat_env::from_process_env() {
            Ok(from_env) => {
                settings::init_logging_at(from_env.args.log_format, &from_env.log_level);
                compat_env::log_warnings(&from_env);
                serve(from_env.args).await
            }
            Err(e) => {
                eprintln!("ratelimit: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Validate(args) => validate::run(&args),
        Command::Check(args) => check::run(&args).await,
        Command::Bench(args) => bench::run(&args).await,
        Command::Render(target) => render::run(&target),
        Command::Top(args) => top::run(&args).await,
        Command::Explain(args) => explain::run(&args).await,
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    match app::run(args, shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
