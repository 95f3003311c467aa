//! The demo tour, what `make demo` runs through the thin `projstore-demo` binary. Starts the
//! dev cluster (three hosts in two datacenters), applies `examples/`, and walks through what
//! projstore does with the real output of `kubectl` and of the hosts: placement with three
//! copies, files, a snapshot replicated, a folder of one project mounted in another, a move
//! the mount follows, a host lost and the project failing over, the old host returning with
//! its diverged writes preserved. It leaves the cluster running (`make demo-down` stops it)
//! unless asked to take it down.
//!
//! This module is the harness (commands shown with their output, waits, reading objects with
//! `kubectl`); the steps themselves are in `tour.rs`.

mod tour;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::dev::Host;

const NS: &str = "demo";

struct Demo {
    dir: PathBuf,
    kubeconfig: PathBuf,
    bin: PathBuf,
    repo: PathBuf,
    started: Instant,
}

type Step = Result<(), String>;

/// How the demo runs.
pub struct Options {
    /// The dev cluster's state directory.
    pub state_dir: PathBuf,
    /// Take the cluster down after the tour (`--tour`) instead of leaving it running.
    pub take_down: bool,
    /// Where `projstore-dev` and the other binaries are.
    pub bin_dir: PathBuf,
}

/// Starts the dev cluster (unless it runs already), walks through the tour, and says what
/// happened; the exit code tells whether every step succeeded.
pub fn run(opts: &Options) -> ExitCode {
    let dir = opts.state_dir.clone();
    let demo = Demo {
        kubeconfig: dir.join("kubeconfig"),
        dir: dir.clone(),
        bin: opts.bin_dir.clone(),
        repo: Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
        started: Instant::now(),
    };
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        eprintln!("projstore-demo: kubectl is needed (make demo installs it)");
        return ExitCode::FAILURE;
    }
    demo.say("0. Start the dev cluster");
    let running = dir.join("ready").exists()
        && Command::new(demo.bin.join("projstore-dev"))
            .arg("status")
            .arg("--state-dir")
            .arg(&dir)
            .output()
            .is_ok_and(|o| o.status.success());
    if running {
        println!("(already running from {})", dir.display());
    } else if let Err(e) = demo.show("projstore-dev", &["up"]) {
        eprintln!("projstore-demo: {e}");
        return ExitCode::FAILURE;
    }
    let result = demo.tour();
    let kubeconfig = dir.join("kubeconfig");
    match &result {
        Ok(()) => println!("\nEvery step succeeded."),
        Err(e) => eprintln!("\nprojstore-demo: a step failed: {e}"),
    }
    if opts.take_down {
        let _ = demo.show("projstore-dev", &["down"]);
    } else {
        println!(
            "\nThe cluster keeps running. Look around:\n  kubectl --kubeconfig {} get proj,sr,sp -A\nStop it and remove its pools: make demo-down",
            kubeconfig.display()
        );
    }
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

impl Demo {
    fn say(&self, text: &str) {
        println!(
            "\n== {text}  [{:.0}s]",
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Runs a command (never through a shell), echoing it and its output.
    fn show(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let shown: Vec<String> = args
            .iter()
            .map(|a| {
                if a.contains(' ') || a.contains('{') {
                    format!("'{a}'")
                } else {
                    (*a).to_owned()
                }
            })
            .collect();
        println!("$ {program} {}", shown.join(" "));
        let out = self.run(program, args)?;
        print!("{out}");
        Ok(out)
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let mut cmd = if program == "kubectl" {
            let mut c = Command::new("kubectl");
            c.arg("--kubeconfig").arg(&self.kubeconfig);
            c
        } else if program == "projstore-dev" {
            let mut c = Command::new(self.bin.join("projstore-dev"));
            c.args(args.first()).arg("--state-dir").arg(&self.dir);
            c.args(args.iter().skip(1));
            return output(c);
        } else {
            Command::new(program)
        };
        cmd.args(args);
        output(cmd)
    }

    fn kubectl_json(&self, args: &[&str]) -> Result<Value, String> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let text = self.run("kubectl", &a)?;
        serde_json::from_str(&text).map_err(|e| format!("kubectl {args:?}: {e}"))
    }

    /// Polls `f` every half second until it gives Some; prints a dot every 5 s.
    fn wait<T>(
        &self,
        what: &str,
        limit: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> Result<T, String> {
        let t = Instant::now();
        let mut dots = 0;
        loop {
            if let Some(v) = f() {
                if dots > 0 {
                    println!();
                }
                println!("   ({what}: {:.1}s)", t.elapsed().as_secs_f64());
                return Ok(v);
            }
            if t.elapsed() > limit {
                return Err(format!(
                    "{what}: not within {}s; logs in {}",
                    limit.as_secs(),
                    self.dir.join("logs").display()
                ));
            }
            if t.elapsed().as_secs() / 5 > dots {
                dots += 1;
                print!(".");
                let _ = std::io::Write::flush(&mut std::io::stdout());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn project(&self, name: &str) -> Option<Value> {
        self.kubectl_json(&["get", "project", name, "-n", NS]).ok()
    }

    fn replicas(&self, project: &str) -> Vec<Value> {
        self.kubectl_json(&[
            "get",
            "streamreplicas",
            "-n",
            NS,
            "-l",
            &format!("projstore.io/project={project}"),
        ])
        .ok()
        .and_then(|v| v["items"].as_array().cloned())
        .unwrap_or_default()
    }

    fn primary(&self, project: &str) -> Option<Value> {
        self.replicas(project)
            .into_iter()
            .find(|r| r["spec"]["role"] == "Primary")
    }

    /// Waits until the project is Ready with `copies` copies holding one newest snapshot
    /// (other than `not`); returns its GUID.
    fn in_sync(&self, project: &str, copies: usize, not: Option<&str>) -> Result<String, String> {
        self.wait(
            &format!("{project}: {copies} copies in sync"),
            Duration::from_secs(120),
            || {
                let p = self.project(project)?;
                if p["status"]["phase"] != "Ready" {
                    return None;
                }
                let guids: Vec<String> = self
                    .replicas(project)
                    .iter()
                    .map(|r| {
                        r["status"]["appliedSnapshot"]["guid"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned()
                    })
                    .collect();
                let first = guids.first()?.clone();
                (guids.len() == copies
                    && !first.is_empty()
                    && guids.iter().all(|g| *g == first)
                    && Some(first.as_str()) != not)
                    .then_some(first)
            },
        )
    }

    fn mount_path(&self, project: &str) -> Option<PathBuf> {
        self.project(project)?["status"]["primary"]["mountPath"]
            .as_str()
            .map(PathBuf::from)
    }

    fn host_pool(&self, pool: &str) -> Option<Host> {
        crate::dev::hosts(3, &self.dir)
            .into_iter()
            .find(|h| format!("{}-storage", h.node) == pool)
    }
}

fn output(mut cmd: Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
