//! `projstore-agent`: wires the command line to the library.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = projstore_agent::cli::main(&args, &mut std::io::stdout(), &mut std::io::stderr());
    std::process::exit(code);
}
