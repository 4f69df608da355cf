fn main() -> std::process::ExitCode {
    sidewatch::cli::main()
}
