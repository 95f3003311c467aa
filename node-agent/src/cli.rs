//! The `projstore-agent` command line (the agent runtime's `run` and `check` are not built
//! yet; see README).

use std::io::Write;

use crate::streams::{PlanOutput, parse_plan_input, plan};

/// Usage text.
pub const USAGE: &str = "usage: projstore-agent streams plan --json FILE\n\n\
  streams plan --json FILE   print the chain and the deletable streams of the stream graph in FILE\n\
                             (DESIGN §5.3); exit code 2 on invalid input\n";

/// Runs the command line `args` (without the program name); returns the exit code.
pub fn main(args: &[String], out: &mut impl Write, err: &mut impl Write) -> i32 {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["streams", "plan", "--json", file] => streams_plan(file, out, err),
        ["help" | "--help" | "-h"] => {
            let _ = write!(out, "{USAGE}");
            0
        }
        _ => {
            let _ = write!(err, "{USAGE}");
            2
        }
    }
}

fn streams_plan(file: &str, out: &mut impl Write, err: &mut impl Write) -> i32 {
    let fail = |err: &mut dyn Write, msg: String| {
        // One line, whatever the message holds.
        let _ = writeln!(
            err,
            "projstore-agent streams plan: {}",
            msg.replace('\n', " ")
        );
        2
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return fail(err, format!("cannot read {file}: {e}")),
    };
    let edges = match parse_plan_input(&text) {
        Ok(e) => e,
        Err(e) => return fail(err, e),
    };
    match plan(&edges) {
        Ok(p) => {
            let output = PlanOutput {
                chain: p.chain,
                deletable: p.deletable,
            };
            match serde_json::to_string(&output) {
                Ok(json) => {
                    let _ = writeln!(out, "{json}");
                    0
                }
                Err(e) => fail(err, e.to_string()),
            }
        }
        Err(e) => fail(err, e.to_string()),
    }
}
