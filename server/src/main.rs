//! `llm-serve`: the command-line entry point.

mod admin;
mod bench;
mod bench_engine;
mod build_config;
mod cli;
mod client;
mod config;
mod control;
mod daemon;
mod engine_kwargs;
mod generate;
mod logs;
mod proxy;
mod replica;
mod replica_process;
mod resources;
mod serve;
mod signals;
mod start;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    // The daemon and replicas set up their own logging (files, formats).
    match &cli.command {
        cli::Command::Start(_) | cli::Command::Run(_) | cli::Command::Serve(_) => {}
        cli::Command::Replica(r) => logs::init_replica(&r.replica_id),
        _ => logs::init_cli(cli.log_level.as_deref()),
    }
    let result = match cli.command {
        cli::Command::Start(args) => start::start(args),
        cli::Command::Run(args) => start::run(args),
        cli::Command::Serve(args) => serve::run(args),
        cli::Command::Deploy(args) => client::deploy(args),
        cli::Command::Status(args) => client::status(args),
        cli::Command::Config(args) => client::config(args),
        cli::Command::Shutdown(args) => client::shutdown(args),
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
