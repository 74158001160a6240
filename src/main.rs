//! The `claid-hotfolder` binary: parse the command line, run the command, exit with its code.
//! Everything else lives in the library (`cli::execute` builds the runtime and logging).

use clap::Parser;

fn main() {
    let cli = claid_hotfolder::cli::Cli::parse();
    std::process::exit(claid_hotfolder::cli::execute(cli));
}
