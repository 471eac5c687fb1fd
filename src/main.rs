//! The `sluice` binary: everything is in the library; see `cli`.

fn main() -> std::process::ExitCode {
    // `sluice __spawner` is the helper that starts commands (see process).
    sluice::process::main_hook();
    sluice::cli::main()
}
