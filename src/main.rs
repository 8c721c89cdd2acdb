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

fn main() -> ExitCode {
    let command = if compat_env::invoked_as_ratelimit(std::env::args_os().next().as_ref()) {
        Command::Ratelimit
    } else {
        Cli::parse().command
    };
    match command {
        Command::Serve(args) => {
            settings::init_logging(args.log_format);
            serve(args)
        }
        Command::Ratelimit => match compat_env::from_process_env() {
            Ok(from_env) => {
                settings::init_logging_at(from_env.args.log_format, &from_env.log_level);
                compat_env::log_warnings(&from_env);
                serve(from_env.args)
            }
            Err(e) => {
                eprintln!("ratelimit: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Validate(args) => on_runtime(async move { validate::run(&args) }),
        Command::Check(args) => on_runtime(async move { check::run(&args).await }),
        Command::Bench(args) => on_runtime(async move { bench::run(&args).await }),
        Command::Render(target) => on_runtime(async move { render::run(&target) }),
        Command::Top(args) => on_runtime(async move { top::run(&args).await }),
        Command::Explain(args) => on_runtime(async move { explain::run(&args).await }),
    }
}

/// Runs a command on the default runtime.
fn on_runtime(command: impl Future<Output = ExitCode>) -> ExitCode {
    match runtime(None) {
        Ok(rt) => rt.block_on(command),
        Err(code) => code,
    }
}

/// The multi-threaded runtime, with `workers` threads (else one per core, or
/// `TOKIO_WORKER_THREADS`). The event and global queue intervals stay tokio's: 127 for both
/// measured no better within the noise of a 2-core machine (README, Performance).
fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder.build().map_err(|e| {
        eprintln!("ironclad-rls: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

/// Serves on a runtime sized by `--worker-threads` (`ServeArgs::runtime_workers`), unless
/// `TOKIO_WORKER_THREADS` says otherwise.
fn serve(args: ServeArgs) -> ExitCode {
    let workers = match std::env::var_os("TOKIO_WORKER_THREADS") {
        Some(_) if args.worker_threads == 0 => None,
        _ => {
            Some(args.runtime_workers(std::thread::available_parallelism().map_or(1, |n| n.get())))
        }
    };
    match runtime(workers) {
        Ok(rt) => rt.block_on(serve_on(args)),
        Err(code) => code,
    }
}

async fn serve_on(args: ServeArgs) -> ExitCode {
    match app::run(args, shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
