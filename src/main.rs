//! The `sluice` binary: everything is in the library; see `cli`.

fn main() -> std::process::ExitCode {
    sluice::cli::main()
}
