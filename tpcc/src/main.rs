//! `tpcc`: parse the options, run, exit 0 (all good), 1 (error or a failed consistency
//! check) or 2 (an option that is not implemented yet).

use clap::Parser;
use std::process::ExitCode;
use tpcc::bench::{self, NotImplemented, Options};

fn main() -> ExitCode {
    common::service::init_tracing("warn");
    let opts = Options::parse();
    match bench::run(&opts) {
        Ok(out) if out.checks_failed => {
            eprintln!("tpcc: consistency checks FAILED");
            ExitCode::from(1)
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<NotImplemented>().is_some() => {
            eprintln!("tpcc: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("tpcc: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
