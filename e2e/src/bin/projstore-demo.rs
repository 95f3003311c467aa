//! `projstore-demo [--state-dir DIR] [--tour]`: what `make demo` runs; the tour itself is
//! `projstore_e2e::demo`. It leaves the cluster running (`make demo-down` stops it); `--tour`
//! walks through and then takes the cluster down.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use projstore_e2e::demo::{Options, run};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut dir = PathBuf::from("/var/lib/projstore-demo");
    let mut tour = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--state-dir" => match it.next() {
                Some(d) => dir = PathBuf::from(d),
                None => {
                    eprintln!("projstore-demo: --state-dir needs a value");
                    return ExitCode::from(2);
                }
            },
            "--tour" => tour = true,
            other => {
                eprintln!("usage: projstore-demo [--state-dir DIR] [--tour] (unknown {other})");
                return ExitCode::from(2);
            }
        }
    }
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    run(&Options {
        state_dir: dir,
        take_down: tour,
        bin_dir,
    })
}
