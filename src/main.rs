//! The `claid-hotfolder` binary: parse the command line, run the command, exit with its code.
//! Everything else lives in the library (`cli::main` parses, builds the runtime and logging).

fn main() {
    claid_hotfolder::cli::exit_quietly_when_stdout_closes();
    std::process::exit(claid_hotfolder::cli::main(std::env::args_os()));
}
