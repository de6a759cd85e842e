//! The `ledger` binary: `serve` runs a node; the other subcommands are the operator CLI
//! (cluster status, SKU admin, orders) and the flash-sale demo driver.

#[cfg(not(madsim))]
mod cli;

#[cfg(not(madsim))]
use clap::Parser;

/// The simulator builds this crate with `--cfg madsim`, where there are no real sockets or
/// signals: nodes run inside `sim/` instead.
#[cfg(madsim)]
fn main() {
    eprintln!("the ledger binary does not run under --cfg madsim; see sim/");
}

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    let command = cli::Command::parse();
    if !matches!(command.action, cli::Action::Serve { .. }) {
        end_quietly_on_a_closed_pipe();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(command)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `ledger status | head` must end like any Unix tool when `head` closes the pipe, not panic in
/// `println!` (Rust ignores SIGPIPE, so the write fails and `println!` panics: exit 101). The
/// operator commands get the default action back; `serve` keeps it ignored, so a peer that
/// closes a socket is an error to handle, never the end of the node.
#[cfg(not(madsim))]
fn end_quietly_on_a_closed_pipe() {
    // SAFETY: called at the start of main, before any thread is spawned; restores the
    // default disposition of one signal.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
