fn main() { std::process::exit(epcheck::cli::main()) }
