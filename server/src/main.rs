//! `llm-serve`: the command-line entry point.

mod bench;
mod bench_engine;
mod build_config;
mod cli;
mod config;
mod engine_kwargs;
mod generate;
mod replica;
mod replica_process;
mod serve;
mod signals;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    init_logging(cli.log_level.as_deref());
    let result = match cli.command {
        cli::Command::Serve(args) => serve::run(args),
        cli::Command::Build(args) => build_config::build(args),
        cli::Command::Check(args) => build_config::check(args),
        cli::Command::Replica(args) => replica::run(args),
        cli::Command::Generate(args) => generate::run(args),
        cli::Command::Bench(args) => bench::run(args),
        cli::Command::BenchEngine(args) => bench_engine::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(level: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.unwrap_or("warn")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
