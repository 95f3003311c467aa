//! `projstore-demo [--state-dir DIR] [--tour]`: what `make demo` runs. Starts the dev cluster
//! (three hosts in two datacenters), applies `examples/`, and walks through what projstore
//! does with the real output of `kubectl` and of the hosts: placement with three copies,
//! files, a snapshot replicated, a folder of one project mounted in another, a move the mount
//! follows, a host lost and the project failing over, the old host returning with its
//! diverged writes preserved. It leaves the cluster running (`make demo-down` stops it);
//! `--tour` walks through and then takes the cluster down.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const NS: &str = "demo";

struct Demo {
    dir: PathBuf,
    kubeconfig: PathBuf,
    bin: PathBuf,
    repo: PathBuf,
    started: Instant,
}

type Step = Result<(), String>;

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

    fn host_pool(&self, pool: &str) -> Option<projstore_e2e::dev::Host> {
        projstore_e2e::dev::hosts(3, &self.dir)
            .into_iter()
            .find(|h| format!("{}-storage", h.node) == pool)
    }

    fn tour(&self) -> Step {
        self.say("1. Three hosts in two datacenters, each with a ZFS pool and an agent");
        self.show("kubectl", &["get", "storagepools"])?;
        self.say("2. Apply examples/ (the dev cluster declared its own pools like examples/01-storagepools.yaml)");
        let ex = self.repo.join("examples");
        let files: Vec<String> = [
            "00-namespace.yaml",
            "10-project-plain.yaml",
            "11-project-pinned.yaml",
            "12-project-mounts.yaml",
            "13-project-closed.yaml",
        ]
        .iter()
        .map(|f| ex.join(f).display().to_string())
        .collect();
        let mut args = vec!["apply"];
        for f in &files {
            args.extend(["-f", f.as_str()]);
        }
        self.show("kubectl", &args)?;
        self.say("3. thesis is placed with three copies across both datacenters");
        let first = self.in_sync("thesis", 3, None)?;
        self.show("kubectl", &["get", "proj,sr", "-n", NS])?;

        self.say("4. Files written into thesis on its primary host");
        let mount = self
            .mount_path("thesis")
            .ok_or("thesis has no mount path")?;
        let file = mount.join("chapter1.txt");
        std::fs::write(&file, "It was a dark and stormy night.\n").map_err(|e| e.to_string())?;
        std::os::unix::fs::chown(&file, Some(2001), Some(2001)).map_err(|e| e.to_string())?;
        self.show("ls", &["-ln", &mount.display().to_string()])?;

        self.say("5. A snapshot on demand, replicated to every copy");
        let stamp = chrono::Utc::now().timestamp().to_string();
        self.show(
            "kubectl",
            &[
                "annotate",
                "proj",
                "thesis",
                "-n",
                NS,
                "--overwrite",
                &format!("projstore.io/snapshot-now={stamp}"),
            ],
        )?;
        let snap = self.in_sync("thesis", 3, Some(&first))?;
        self.show(
            "kubectl",
            &["get", "sr", "-n", NS, "-l", "projstore.io/project=thesis"],
        )?;

        self.say("6. A folder of course mounted in student-alice (sshfs from course's host, then bindfs)");
        let course = self.wait("course Ready", Duration::from_secs(60), || {
            self.mount_path("course")
        })?;
        for d in ["handin/alice", "materials"] {
            let p = course.join(d);
            std::fs::create_dir_all(&p).map_err(|e| e.to_string())?;
            for q in [course.join("handin"), p] {
                std::os::unix::fs::chown(&q, Some(3000), Some(3000)).map_err(|e| e.to_string())?;
            }
        }
        std::fs::write(course.join("materials/week1.txt"), "Read chapter 1.\n")
            .map_err(|e| e.to_string())?;
        let alice = self.wait(
            "student-alice's mounts Mounted",
            Duration::from_secs(90),
            || {
                let p = self.project("student-alice")?;
                let mounts = p["status"]["mounts"].as_array()?.clone();
                (mounts.len() == 2 && mounts.iter().all(|m| m["phase"] == "Mounted"))
                    .then(|| self.mount_path("student-alice"))
                    .flatten()
            },
        )?;
        self.show(
            "kubectl",
            &[
                "get",
                "proj",
                "student-alice",
                "-n",
                NS,
                "-o",
                "jsonpath={range .status.mounts[*]}{.mountPath}: {.phase} ({.message}){\"\\n\"}{end}",
            ],
        )?;
        let answer = alice.join("handin/answer.txt");
        std::fs::write(&answer, "42\n").map_err(|e| e.to_string())?;
        println!("(wrote {} through the mount)", answer.display());
        self.show(
            "ls",
            &["-ln", &course.join("handin/alice").display().to_string()],
        )?;
        println!("(created through the mount, owned by course's owner 3000)");

        self.say("7. course moves to another pool; the mount in student-alice follows it");
        let course_primary = self.primary("course").ok_or("course has no primary")?;
        let from = course_primary["spec"]["pool"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let to = self
            .replicas("course")
            .iter()
            .map(|r| r["spec"]["pool"].as_str().unwrap_or_default().to_owned())
            .find(|p| *p != from)
            .ok_or("course has no second copy")?;
        self.show(
            "kubectl",
            &[
                "patch",
                "proj",
                "course",
                "-n",
                NS,
                "--type",
                "merge",
                "-p",
                &format!("{{\"spec\":{{\"placement\":{{\"pool\":\"{to}\"}}}}}}"),
            ],
        )?;
        let to_host = self.host_pool(&to).ok_or("unknown pool")?;
        self.wait("moved, mount followed", Duration::from_secs(120), || {
            let p = self.primary("course")?;
            let table = std::fs::read_to_string("/proc/self/mounts").ok()?;
            let follows = table
                .lines()
                .any(|l| l.starts_with(&format!("root@{}:/{NS}/course/", to_host.addr)));
            (p["spec"]["pool"] == to.as_str()
                && follows
                && alice.join("handin/answer.txt").exists())
            .then_some(())
        })?;
        self.show(
            "kubectl",
            &["get", "sr", "-n", NS, "-l", "projstore.io/project=course"],
        )?;
        self.show(
            "cat",
            &[&alice.join("handin/answer.txt").display().to_string()],
        )?;

        self.say("8. thesis's primary host is lost (its agent killed); thesis fails over");
        let old = self.primary("thesis").ok_or("thesis has no primary")?;
        let old_pool = old["spec"]["pool"].as_str().unwrap_or_default().to_owned();
        let old_epoch = old["spec"]["epoch"].as_u64().unwrap_or(0);
        let old_host = self.host_pool(&old_pool).ok_or("unknown pool")?;
        let agent = format!("agent-{}", old_host.node);
        self.show("projstore-dev", &["kill", &agent, "--hold"])?;
        std::fs::write(
            mount.join("late.txt"),
            "written on the lost host after its last snapshot\n",
        )
        .map_err(|e| e.to_string())?;
        println!("(wrote late.txt on the lost host: it was never replicated)");
        println!(
            "(the pool turns NotReady after 40 s without a heartbeat; failover after the 30 s grace)"
        );
        let new = self.wait("failed over", Duration::from_secs(180), || {
            let p = self.primary("thesis")?;
            (p["spec"]["pool"] != old_pool.as_str()).then_some(p)
        })?;
        self.show(
            "kubectl",
            &[
                "get",
                "proj,sr",
                "-n",
                NS,
                "-l",
                "projstore.io/project=thesis",
            ],
        )?;
        self.show("kubectl", &["get", "proj", "thesis", "-n", NS])?;
        let applied = new["status"]["appliedSnapshot"]["guid"]
            .as_str()
            .unwrap_or_default();
        println!(
            "(the new primary holds the last replicated snapshot: {})",
            if applied == snap { "yes" } else { "not yet" }
        );
        let new_mount = self.wait("new primary mounted", Duration::from_secs(60), || {
            let m = self.mount_path("thesis")?;
            m.join("chapter1.txt").exists().then_some(m)
        })?;
        self.show("ls", &["-ln", &new_mount.display().to_string()])?;

        self.say("9. The old host returns: demoted, its diverged writes kept under forks/");
        self.show("projstore-dev", &["release", &agent])?;
        let msg = self.wait("Diverged", Duration::from_secs(120), || {
            let p = self.project("thesis")?;
            p["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Diverged" && c["status"] == "True")
                .and_then(|c| c["message"].as_str().map(str::to_owned))
        })?;
        println!("Diverged: {msg}");
        self.show(
            "zfs",
            &[
                "list",
                "-r",
                "-o",
                "name,used,mountpoint",
                &format!("{}/forks", old_host.pool),
            ],
        )?;
        self.show(
            "zfs",
            &[
                "list",
                "-t",
                "snapshot",
                "-o",
                "name",
                "-r",
                &format!("{}/forks/{NS}/thesis-e{old_epoch}", old_host.pool),
            ],
        )?;
        self.in_sync("thesis", 3, None)?;
        self.show("kubectl", &["get", "proj,sr,sp", "-n", NS])?;
        Ok(())
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
    let bin = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let demo = Demo {
        kubeconfig: dir.join("kubeconfig"),
        dir: dir.clone(),
        bin,
        repo,
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
    if tour {
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
