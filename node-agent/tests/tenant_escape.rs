//! A tenant trying to leave its project (DESIGN §5.7, invariant 6), on real zfs-fuse
//! datasets, bindfs, sshfs and sshd. Everything the tenant does runs as the tenant's uid
//! (`setpriv --reuid/--regid --clear-groups`); the agent's side is the agent's own code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use projstore_agent::layout::{NewProject, PoolLayout, create_project, secure_root};
use projstore_agent::mounts::{self, MountDirs, Wanted};
use projstore_agent::sftp::{self, Grant, SshKeys};
use projstore_agent::streams::ProjectKey;
use support::{TestPool, zfs_or_skip};

const CONSUMER: (u32, u32) = (2001, 2001);
const SOURCE: (u32, u32) = (2002, 2002);
const OTHER: (u32, u32) = (2003, 2003);
const SECRET: &str = "TOP-SECRET-ROOT-ONLY";
/// Root-owned and not writable by others all the way up: it serves as the sftp chroot.
const TESTS_DIR: &str = "/var/lib/projstore-agent-tests";
/// The consumer host's address, as the source host lets it in (its sftp client connects
/// from it).
const PEER: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 5));

/// One storage host: a pool with three projects (`ns/a` consumes, `ns/b` is the source,
/// `other/victim` belongs to someone else), served as the agent serves a primary.
struct Host {
    _pool: TestPool,
    base: tempfile::TempDir,
    dirs: MountDirs,
    _watchdog: Watchdog,
}

/// Ends the test process, saying what each process involved waits on, if its test has not
/// finished within `limit`: a hung FUSE daemon would otherwise hold the whole run until CI's
/// own time limit, saying nothing. Dropping it (the test ended) stops it.
struct Watchdog {
    _stop: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    fn new(test: &str, limit: Duration) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let test = test.to_owned();
        std::thread::spawn(move || {
            if rx.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                // Reading /proc can itself block on a hung FUSE daemon: the report gets 20 s.
                let (report_tx, report) = std::sync::mpsc::channel();
                std::thread::spawn(move || report_tx.send(waits()));
                let report = report
                    .recv_timeout(Duration::from_secs(20))
                    .unwrap_or_else(|_| "(reading /proc did not finish within 20 s)".into());
                // Past the test harness's capture of `eprintln!`, which an abort would lose.
                let _ = writeln!(
                    std::io::stderr(),
                    "{test}: still running after {limit:?}; what waits on what:\n{report}"
                );
                // An abort runs no Drop: the tenants' loops, this process's children, would
                // live on and race the next test's loop (the deadlock their turns prevent).
                kill_children();
                std::process::abort();
            }
        });
        Self { _stop: tx }
    }
}

/// Kills every child of this process (the tenants' processes, the commands it runs).
fn kill_children() {
    let me = std::process::id().to_string();
    for pid in pids() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // "pid (comm) state ppid …", where comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if ppid == Some(me.as_str()) {
            kill9(pid);
        }
    }
}

/// The processes on the machine, by their directories in /proc.
fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

fn kill9(pid: u32) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Per process of these tests (this one, zfs-fuse, the FUSE daemons, sftp, the tenants' and
/// the agent's commands): how many of its threads wait in which kernel function.
fn waits() -> String {
    let me = std::process::id();
    let involved = |pid: u32, comm: &str, cmdline: &str| {
        pid == me
            || cmdline.contains(TESTS_DIR)
            || [
                "zfs-fuse",
                "bindfs",
                "sshfs",
                "sftp-server",
                "sshd",
                "zfs",
                "zpool",
            ]
            .contains(&comm)
    };
    let mut out = String::new();
    for pid in pids() {
        let dir = PathBuf::from(format!("/proc/{pid}"));
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let comm = read("comm").trim().to_owned();
        let cmdline = read("cmdline").replace(['\0', '\n'], " ");
        if !involved(pid, &comm, &cmdline) {
            continue;
        }
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for task in std::fs::read_dir(dir.join("task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let wchan = std::fs::read_to_string(task.path().join("wchan")).unwrap_or_default();
            *counts.entry(wchan).or_default() += 1;
        }
        let cmd: String = cmdline.chars().take(160).collect();
        out += &format!("{pid} {cmd}: {counts:?}\n");
    }
    for m in mounts::mount_table() {
        if m.target.starts_with(TESTS_DIR) {
            out += &format!("mounted: {} ({})\n", m.target.display(), m.fstype);
        }
    }
    out
}

impl Host {
    async fn new(test: &str) -> Option<Self> {
        // First: creating the pool is what hangs when zfs-fuse already is.
        let watchdog = Watchdog::new(test, Duration::from_secs(240));
        let zfs = zfs_or_skip(test).await?;
        require(&["bindfs", "setpriv", "/usr/bin/python3"]);
        let pool = TestPool::new(&zfs, 256 << 20).await;
        std::fs::create_dir_all(TESTS_DIR).unwrap();
        let base = tempfile::Builder::new()
            .prefix("tenant-")
            .tempdir_in(TESTS_DIR)
            .unwrap();
        let dirs = MountDirs::new(&base.path().join("run"));
        dirs.prepare().unwrap();
        // The projects root shared, as the chart's Bidirectional host path makes it: every
        // mount below it propagates to its peers.
        let projects = base.path().join("projects");
        std::fs::create_dir(&projects).unwrap();
        rustix::mount::mount_bind(&projects, &projects).unwrap();
        rustix::mount::mount_change(&projects, rustix::mount::MountPropagationFlags::SHARED)
            .unwrap();
        let layout = PoolLayout::new(pool.name.clone());
        let host = Self {
            _pool: pool,
            base,
            dirs,
            _watchdog: watchdog,
        };
        for (ns, name, owner) in [
            ("ns", "a", CONSUMER),
            ("ns", "b", SOURCE),
            ("other", "victim", OTHER),
        ] {
            let key = ProjectKey::new(ns, name).unwrap();
            let mp = host.root(ns, name);
            let new = NewProject {
                key: &key,
                mountpoint: &mp,
                quota_bytes: 64 << 20,
                uid: owner.0,
                gid: owner.1,
                epoch: 1,
            };
            create_project(&zfs, &layout, &new).await.unwrap();
            secure_root(&mp, owner).unwrap();
            mounts::export(&host.dirs, &Path::new(ns).join(name), &mp).unwrap();
        }
        std::fs::write(host.root("other", "victim").join("diary"), SECRET).unwrap();
        // A root-only directory outside every project.
        let vault = host.base.path().join("vault");
        std::fs::create_dir(&vault).unwrap();
        std::fs::set_permissions(&vault, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(vault.join("secret"), SECRET).unwrap();
        std::fs::set_permissions(vault.join("secret"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        Some(host)
    }

    fn root(&self, ns: &str, name: &str) -> PathBuf {
        self.base.path().join("projects").join(ns).join(name)
    }
    fn vault(&self) -> PathBuf {
        self.base.path().join("vault")
    }

    fn wanted(&self, path: &str, mount_path: &str, remote: Option<String>) -> Wanted {
        Wanted {
            consumer_root: self.root("ns", "a"),
            mount_path: PathBuf::from(mount_path),
            source_project: PathBuf::from("ns/b"),
            source_root: self.root("ns", "b"),
            path: PathBuf::from(path),
            remote_host_key: remote.as_ref().map(|_| {
                std::fs::read_to_string(self.base.path().join("run/ssh/ssh-host-key.pub"))
                    .unwrap()
                    .trim()
                    .to_owned()
            }),
            bind_address: remote.as_ref().map(|_| PEER),
            remote,
            read_only: false,
            source_owner: SOURCE,
            owner: CONSUMER,
        }
    }

    /// The agent's staging mounts (what folder mounts read, or are made on, before they are
    /// moved into a project).
    fn staging_mounts(&self) -> Vec<PathBuf> {
        let staging = self.base.path().join("run/mnt");
        mounts::mount_table()
            .into_iter()
            .map(|m| m.target)
            .filter(|t| t.starts_with(&staging) && *t != staging)
            .collect()
    }

    /// FUSE mounts (other than the project datasets themselves) anywhere below `dir`.
    fn fuse_mounts_below(&self, dir: &Path) -> Vec<PathBuf> {
        mounts::mount_table()
            .into_iter()
            .filter(|m| m.fstype == "fuse" || m.fstype == "fuse.sshfs")
            .map(|m| m.target)
            .filter(|t| t.starts_with(dir))
            .collect()
    }
}

/// Before the pool goes, nothing may use its datasets any more: zfs-fuse crashes when a pool
/// is destroyed under a FUSE daemon (bindfs, sshfs) or an sftp session still reading it, and
/// a lazy unmount alone leaves those running. So: unmount deepest first (a FUSE daemon exits
/// when its mount goes), kill whatever still runs in or holds a file below the test's
/// directory, then detach what is left and wait until nothing below it is mounted.
impl Drop for Host {
    fn drop(&mut self) {
        let base = self.base.path().to_path_buf();
        let below = || {
            let mut all: Vec<_> = mounts::mount_table()
                .into_iter()
                .map(|m| m.target)
                .filter(|t| t.starts_with(&base))
                .collect();
            all.sort_by_key(|t| std::cmp::Reverse(t.as_os_str().len()));
            all
        };
        for t in below() {
            for _ in 0..20 {
                if Command::new("umount")
                    .arg(&t)
                    .status()
                    .is_ok_and(|s| s.success())
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        for _ in 0..100 {
            let users = processes_using(&base);
            if users.is_empty() {
                break;
            }
            users.into_iter().for_each(kill9);
            std::thread::sleep(Duration::from_millis(100));
        }
        for _ in 0..100 {
            let left = below();
            if left.is_empty() {
                break;
            }
            for t in left {
                let _ = Command::new("umount").arg("-l").arg(&t).status();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Processes other than this one whose command line names `dir`, or whose root, working
/// directory or an open file lies below it.
fn processes_using(dir: &Path) -> Vec<u32> {
    let me = std::process::id();
    let needle = dir.as_os_str().as_encoded_bytes();
    pids()
        .filter(|&pid| pid != me)
        .filter(|pid| {
            let p = PathBuf::from(format!("/proc/{pid}"));
            let under = |link: PathBuf| std::fs::read_link(link).is_ok_and(|t| t.starts_with(dir));
            let named = std::fs::read(p.join("cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle));
            named
                || under(p.join("root"))
                || under(p.join("cwd"))
                || std::fs::read_dir(p.join("fd"))
                    .is_ok_and(|fds| fds.flatten().any(|fd| under(fd.path())))
        })
        .collect()
}

/// The tests run on real tools: a missing one is a failure, not a skip.
fn require(tools: &[&str]) {
    for tool in tools {
        let found = Command::new("which")
            .arg(tool)
            .output()
            .unwrap()
            .status
            .success();
        assert!(found, "{tool} is required (make test installs it)");
    }
}

/// Runs `program args` as the tenant `who`.
fn as_tenant(who: (u32, u32), program: &str, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .arg(format!("--reuid={}", who.0))
        .arg(format!("--regid={}", who.1))
        .arg("--clear-groups")
        .arg("--")
        .arg(program)
        .args(args)
        .output()
        .unwrap()
}

fn tenant_ok(who: (u32, u32), program: &str, args: &[&str]) {
    let out = as_tenant(who, program, args);
    assert!(
        out.status.success(),
        "as {who:?}: {program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A python loop run as the tenant until killed (the tenant racing the agent). One such loop
/// runs at a time on the machine (see `one_racer_at_a_time`).
fn tenant_loop(who: (u32, u32), script: &str) -> Tenant {
    let turn = one_racer_at_a_time();
    let mut child = Command::new("setpriv")
        .arg(format!("--reuid={}", who.0))
        .arg(format!("--regid={}", who.1))
        .arg("--clear-groups")
        .args(["--", "/usr/bin/python3", "-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the tenant's loop did not start"
    );
    Tenant {
        child,
        _turn: Some(turn),
    }
}

/// zfs-fuse deadlocks for good (every worker thread waiting on a lock of its own, every
/// request to any of its datasets unanswered) when two tenants rename and symlink in tight
/// loops on its datasets at once: seen with the loops of two of these tests running side by
/// side. That is zfs-fuse's own bug (production hosts run OpenZFS), so the loops take turns:
/// an exclusive lock on a file, held while the loop runs, across tests and test processes.
fn one_racer_at_a_time() -> std::fs::File {
    std::fs::create_dir_all(TESTS_DIR).unwrap();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(Path::new(TESTS_DIR).join("racers.lock"))
        .unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    lock
}

/// A tenant's process, killed when the test lets go of it (also when an assertion fails: a
/// writer left behind would keep a FUSE mount busy while the test pool is destroyed, and
/// zfs-fuse then waits on itself for good); then the racers' turn it held, if any, is free.
struct Tenant {
    child: std::process::Child,
    _turn: Option<std::fs::File>,
}

impl Drop for Tenant {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// EROFS: a write to a read-only mount.
fn libc_erofs() -> i32 {
    rustix::io::Errno::ROFS.raw_os_error()
}

/// This host's own keys (made as the agent makes them), and an impostor's host key.
fn keys_dir(base: &Path) -> SshKeys {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(base.join("impostor-host-key"))
        .status()
        .unwrap();
    assert!(ok.success());
    sftp::install_keys(&base.join("run")).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What the source's owner makes: symlinks out of its project at the last and at an
/// intermediate component, and one legitimate folder.
fn plant_symlinks(h: &Host) {
    let b = h.root("ns", "b");
    let s = |p: &Path| p.display().to_string();
    tenant_ok(
        SOURCE,
        "mkdir",
        &["-p", &s(&b.join("shared")), &s(&b.join("real"))],
    );
    tenant_ok(SOURCE, "ln", &["-s", "/etc", &s(&b.join("etc"))]);
    tenant_ok(SOURCE, "ln", &["-s", &s(&h.vault()), &s(&b.join("vault"))]);
    tenant_ok(
        SOURCE,
        "ln",
        &["-s", "../../other/victim", &s(&b.join("real/esc"))],
    );
    tenant_ok(SOURCE, "ln", &["-s", "/", &s(&b.join("root"))]);
    tenant_ok(
        SOURCE,
        "sh",
        &[
            "-c",
            &format!("echo from-b > {}", s(&b.join("shared/readme"))),
        ],
    );
}

/// Every source path that leaves the project is refused, naming the component; nothing is
/// mounted in the consumer.
async fn source_escapes_are_refused(h: &Host, remote: Option<String>, keys: &SshKeys) {
    for (path, named) in [
        ("etc", "etc"),
        ("vault", "vault"),
        ("real/esc", "real/esc"),
        ("real/esc/sub", "real/esc"),
        ("root/etc", "root"),
    ] {
        let w = h.wanted(path, "m", remote.clone());
        let e = mounts::ensure(&w, keys, &h.dirs).await.unwrap_err();
        assert!(e.contains(named), "{path}: the message names {named}: {e}");
        assert!(e.contains("symbolic link"), "{path}: {e}");
        assert!(
            h.fuse_mounts_below(&h.root("ns", "a")).is_empty(),
            "{path}: nothing is mounted in the consumer"
        );
    }
}

#[tokio::test]
async fn a_same_host_mount_resolves_the_source_path_beneath_its_project() {
    let Some(h) = Host::new("a_same_host_mount_resolves_the_source_path_beneath_its_project").await
    else {
        return;
    };
    plant_symlinks(&h);
    let keys = SshKeys {
        dir: PathBuf::new(),
    };
    source_escapes_are_refused(&h, None, &keys).await;

    // The legitimate folder mounts; files created through it belong to the source's owner.
    let w = h.wanted("shared", "from-b", None);
    mounts::ensure(&w, &keys, &h.dirs).await.unwrap();
    mounts::ensure(&w, &keys, &h.dirs).await.unwrap(); // idempotent
    let target = h.root("ns", "a").join("from-b");
    assert_eq!(h.staging_mounts().len(), 1, "{:?}", h.staging_mounts());

    // The consumer's owner changes: the mount is made again for the new owner, and what the
    // old one read is released.
    let owner_of = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner_of(&target.join("readme")), CONSUMER);
    let other_owner = Wanted {
        owner: OTHER,
        ..w.clone()
    };
    mounts::ensure(&other_owner, &keys, &h.dirs).await.unwrap();
    assert_eq!(owner_of(&target.join("readme")), OTHER);
    mounts::ensure(&w, &keys, &h.dirs).await.unwrap();
    assert_eq!(owner_of(&target.join("readme")), CONSUMER);
    assert_eq!(h.staging_mounts().len(), 1, "{:?}", h.staging_mounts());

    // An agent that starts again releases the staging mounts no folder mount reads (one left
    // by a crash between staging and moving) and keeps the ones in use.
    let leaked = h.base.path().join("run/mnt/0123456789abcdef/source");
    std::fs::create_dir_all(&leaked).unwrap();
    rustix::mount::mount_bind(h.vault(), &leaked).unwrap();
    assert_eq!(h.dirs.release_unused_staging(), vec![leaked.clone()]);
    assert_eq!(h.staging_mounts().len(), 1, "{:?}", h.staging_mounts());
    assert_eq!(owner_of(&target.join("readme")), CONSUMER);
    // Exports hold a project's own files only: the folder mounted inside `ns/a` does not
    // show in its export (whence sftp-server, root, would reach it without `nosymfollow`).
    let export_a = h.base.path().join("run/exports/ns/a");
    let inside: Vec<_> = mounts::mount_table()
        .into_iter()
        .filter(|m| m.target.starts_with(&export_a) && m.target != export_a)
        .map(|m| m.target)
        .collect();
    assert!(
        inside.is_empty(),
        "mounts inside the export of ns/a: {inside:?}"
    );
    assert!(
        mounts::mount_table().iter().any(|m| m.target == export_a),
        "ns/a is exported"
    );
    let out = as_tenant(
        CONSUMER,
        "cat",
        &[&target.join("readme").display().to_string()],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-b\n");
    tenant_ok(
        CONSUMER,
        "touch",
        &[&target.join("made").display().to_string()],
    );
    let made = std::fs::metadata(h.root("ns", "b").join("shared/made")).unwrap();
    assert_eq!((made.uid(), made.gid()), SOURCE);

    // A symlink inside the mounted folder is the consumer's to follow, with its own rights.
    let link = h.root("ns", "b").join("shared/to-vault");
    tenant_ok(
        SOURCE,
        "ln",
        &[
            "-s",
            &h.vault().join("secret").display().to_string(),
            &link.display().to_string(),
        ],
    );
    let out = as_tenant(
        CONSUMER,
        "cat",
        &[&target.join("to-vault").display().to_string()],
    );
    assert!(!out.status.success() && !String::from_utf8_lossy(&out.stdout).contains(SECRET));

    // The source's owner swaps a folder for a symlink to the vault as fast as it can while
    // the consumer reads through it: bindfs (root) never follows the symlink.
    let shared = h.root("ns", "b").join("shared");
    std::fs::create_dir(shared.join("d")).unwrap();
    std::fs::write(shared.join("d/secret"), "harmless").unwrap();
    std::os::unix::fs::chown(shared.join("d"), Some(SOURCE.0), Some(SOURCE.1)).unwrap();
    let racer = tenant_loop(
        SOURCE,
        &format!(
            "import os\nos.chdir({:?})\nwhile True:\n  os.rename('d','d.real'); os.symlink({:?},'d'); os.unlink('d'); os.rename('d.real','d')\n",
            shared.display().to_string(),
            h.vault().display().to_string()
        ),
    );
    let (reads, leaks) = tenant_reads(CONSUMER, &target.join("d/secret"), 4);
    kill(racer);
    assert_eq!(leaks, 0, "the vault was read through the mount");
    assert!(reads > 100, "the reader hardly ran: {reads}");

    // Something not the agent's covers the mount (a tenant's own FUSE mount where /dev/fuse
    // is open to users; here, where it is not, a bind mount made for it), and the mount
    // leaves the spec: the agent's mount underneath does not live on (its connection is
    // aborted).
    let cover = h.root("ns", "a").join("cover");
    tenant_ok(CONSUMER, "mkdir", &[&cover.display().to_string()]);
    rustix::mount::mount_bind(&cover, &target).unwrap();
    mounts::release(&h.root("ns", "a"), Path::new("from-b"), &h.dirs).await;
    rustix::mount::unmount(&target, rustix::mount::UnmountFlags::empty()).unwrap();
    let out = as_tenant(
        CONSUMER,
        "cat",
        &[&target.join("readme").display().to_string()],
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("from-b"),
        "the removed mount lived on under the tenant's"
    );
    mounts::ensure(&w, &keys, &h.dirs).await.unwrap();
    let out = as_tenant(
        CONSUMER,
        "cat",
        &[&target.join("readme").display().to_string()],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-b\n");

    // The source stops serving (a move, a failover): the consumer's open file stops working.
    let writer = tenant_writer(CONSUMER, &target.join("kept-open"));
    writes_stop_when_the_source_stops_serving(
        &h,
        writer,
        &h.root("ns", "b").join("shared/kept-open"),
        true,
    );

    // Removing the mount from the spec: released by mount ID, nothing left anywhere.
    mounts::release(&h.root("ns", "a"), Path::new("from-b"), &h.dirs).await;
    assert!(
        h.fuse_mounts_below(h.base.path()).is_empty(),
        "{:?}",
        h.fuse_mounts_below(h.base.path())
    );
}

/// The tenant `who` appends to `file` (through a mount) every 20 ms and keeps it open; the
/// child prints `STOPPED` and exits at the first write that fails.
fn tenant_writer(who: (u32, u32), file: &Path) -> Tenant {
    let script = format!(
        "import time,sys\nf=open({:?},'a')\nend=time.time()+20\nwhile time.time()<end:\n  try:\n    f.write('x'); f.flush()\n  except OSError:\n    print('STOPPED'); sys.exit(0)\n  time.sleep(0.02)\n",
        file.display().to_string()
    );
    let child = Command::new("setpriv")
        .arg(format!("--reuid={}", who.0))
        .arg(format!("--regid={}", who.1))
        .args(["--clear-groups", "--", "/usr/bin/python3", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    Tenant { child, _turn: None }
}

/// A project that stops serving (`unexport`, before its dataset is unmounted) leaves no way
/// to keep writing to it through a folder mounted elsewhere: `file` (the source's side of
/// what `writer` appends to) stops growing. When `noticed`, the writer's next write fails at
/// once (a same-host mount; sshfs reports a failed write only when the file is closed).
fn writes_stop_when_the_source_stops_serving(
    h: &Host,
    mut writer: Tenant,
    file: &Path,
    noticed: bool,
) {
    let before = std::fs::metadata(file).unwrap().len();
    assert!(
        before > 0,
        "the tenant's writer wrote nothing through the mount"
    );
    let released = mounts::unexport(&h.dirs, &h.root("ns", "b"));
    assert!(!released.is_empty());
    std::thread::sleep(Duration::from_millis(300));
    let after = std::fs::metadata(file).unwrap().len();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        std::fs::metadata(file).unwrap().len(),
        after,
        "the file still grows"
    );
    if noticed {
        let ended = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            writer.child.try_wait().unwrap().is_some()
        });
        assert!(ended, "writes went on: the writer never saw a write fail");
        let mut out = String::new();
        use std::io::Read;
        let _ = writer.child.stdout.take().unwrap().read_to_string(&mut out);
        assert_eq!(out.trim(), "STOPPED", "writes went on");
    }
}

/// The tenant `who` reads `file` for `seconds` as fast as it can: (reads tried, reads that
/// returned the secret).
fn tenant_reads(who: (u32, u32), file: &Path, seconds: u64) -> (u64, u64) {
    let script = format!(
        "import time\nend=time.time()+{seconds}\nn=0\nleak=0\nwhile time.time()<end:\n  n+=1\n  try:\n    leak+= {SECRET:?} in open({:?}).read()\n  except OSError: pass\nprint(n, leak)\n",
        file.display().to_string()
    );
    let out = as_tenant(who, "/usr/bin/python3", &["-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut it = text.split_whitespace().map(|x| x.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

fn kill(c: Tenant) {
    drop(c);
}

#[tokio::test]
async fn a_mount_path_that_leaves_the_consumer_is_refused_and_nothing_is_made_outside() {
    let Some(h) =
        Host::new("a_mount_path_that_leaves_the_consumer_is_refused_and_nothing_is_made_outside")
            .await
    else {
        return;
    };
    plant_symlinks(&h);
    let a = h.root("ns", "a");
    let outside = h.base.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o777)).unwrap();
    let s = |p: &Path| p.display().to_string();
    tenant_ok(CONSUMER, "ln", &["-s", &s(&outside), &s(&a.join("out"))]);
    tenant_ok(
        CONSUMER,
        "ln",
        &["-s", "/nonexistent/dir", &s(&a.join("dangling"))],
    );
    tenant_ok(CONSUMER, "mkdir", &[&s(&a.join("dir"))]);
    tenant_ok(
        CONSUMER,
        "ln",
        &["-s", "../../../other/victim", &s(&a.join("dir/victim"))],
    );
    let keys = SshKeys {
        dir: PathBuf::new(),
    };
    for (mount_path, named) in [
        ("out", "out"),
        ("out/x", "out"),
        ("dangling", "dangling"),
        ("dangling/x", "dangling"),
        ("dir/victim", "dir/victim"),
        ("dir/victim/x", "dir/victim"),
    ] {
        let e = mounts::ensure(&h.wanted("shared", mount_path, None), &keys, &h.dirs)
            .await
            .unwrap_err();
        assert!(
            e.contains(named) && e.contains("symbolic link"),
            "{mount_path}: {e}"
        );
    }
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing created outside"
    );
    assert!(!Path::new("/nonexistent").exists());
    assert!(h.fuse_mounts_below(h.base.path()).is_empty());
    let victim = std::fs::read_dir(h.root("other", "victim"))
        .unwrap()
        .count();
    assert_eq!(
        victim, 1,
        "nothing created in the other namespace's project"
    );

    // The consumer swaps its mount path between a folder and a symlink out while the agent
    // mounts and releases again and again: no mount and no directory ever lands outside.
    let racer = tenant_loop(
        CONSUMER,
        &format!(
            "import os\nos.chdir({:?})\nos.makedirs('m.real', exist_ok=True)\ndef t(f, *a):\n  try: f(*a)\n  except OSError: pass\nwhile True:\n  t(os.rename, 'm', 'm.old'); t(os.symlink, {:?}, 'm'); t(os.unlink, 'm'); t(os.rename, 'm.real', 'm'); t(os.rename, 'm', 'm.real')\n",
            s(&a),
            s(&outside)
        ),
    );
    let (mut mounted, mut refused) = (0, 0);
    for _ in 0..30 {
        match mounts::ensure(&h.wanted("shared", "m", None), &keys, &h.dirs).await {
            Ok(()) => mounted += 1,
            Err(_) => refused += 1,
        }
        // Every FUSE mount on the machine but those of the other tests running beside this one.
        let others = |t: &Path| t.starts_with(TESTS_DIR) && !t.starts_with(h.base.path());
        for t in h
            .fuse_mounts_below(Path::new("/"))
            .into_iter()
            .filter(|t| !others(t))
        {
            assert!(
                !t.starts_with(&outside)
                    && (t.starts_with(&a) || t.starts_with(h.base.path().join("run"))),
                "a mount outside the consumer: {}",
                t.display()
            );
        }
        mounts::release_under(&a, &h.dirs).await;
    }
    kill(racer);
    eprintln!("racing mount path: {mounted} mounted, {refused} refused");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing created outside"
    );
    mounts::release_under(&a, &h.dirs).await;
    assert!(
        h.fuse_mounts_below(h.base.path())
            .iter()
            .all(|t| !t.starts_with(&a))
    );
}

#[tokio::test]
async fn across_hosts_the_sftp_side_exposes_the_source_project_alone() {
    let Some(h) = Host::new("across_hosts_the_sftp_side_exposes_the_source_project_alone").await
    else {
        return;
    };
    require(&["sshfs", "ssh-keygen", "/usr/sbin/sshd"]);
    plant_symlinks(&h);
    let keys = keys_dir(h.base.path());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}").parse().unwrap();
    let mut sshd = sftp::Sshd::start(listen, &keys, &h.dirs, &h.base.path().join("run"))
        .await
        .unwrap();
    let remote = Some(format!("127.0.0.1:{port}"));
    let peer = |projects: &[(&str, bool)]| Grant {
        node: "consumer-host".into(),
        address: PEER,
        client_key: std::fs::read_to_string(keys.client_pub())
            .unwrap()
            .trim()
            .to_owned(),
        projects: projects
            .iter()
            .map(|(p, read_only)| (PathBuf::from(p), *read_only))
            .collect(),
    };
    let mut let_in = async |grants: &[Grant]| {
        // The other tests in this process export too: a busy lock means "the next pass".
        let mut problems = Vec::new();
        for _ in 0..100 {
            problems = mounts::sync_peers(&h.dirs, &h.base.path().join("projects"), grants);
            if !problems.iter().any(|p| p.contains("being taken down")) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(problems.is_empty(), "{problems:?}");
        sshd.let_in(grants).unwrap();
        // sshd re-executes itself on SIGHUP.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };

    // Not let in yet (the consumer mounts nothing from this host): refused.
    let e = mounts::ensure(
        &h.wanted("shared", "from-b", remote.clone()),
        &keys,
        &h.dirs,
    )
    .await
    .unwrap_err();
    assert!(e.contains("sshfs"), "{e}");
    let_in(&[peer(&[("ns/b", false)])]).await;
    source_escapes_are_refused(&h, remote.clone(), &keys).await;

    // Let in to ns/b alone: neither a project of this host it does not mount (exported, but
    // not to it) nor one that is not served here is reachable.
    for other in ["other/victim", "other/nonexistent", "ns/a"] {
        let w = Wanted {
            source_project: PathBuf::from(other),
            ..h.wanted("", "m", remote.clone())
        };
        assert!(
            mounts::ensure(&w, &keys, &h.dirs).await.is_err(),
            "{other} was mounted"
        );
    }
    // Its key from another address, and another key from its address: refused.
    let w = Wanted {
        bind_address: Some("127.0.0.6".parse().unwrap()),
        ..h.wanted("shared", "from-b", remote.clone())
    };
    assert!(mounts::ensure(&w, &keys, &h.dirs).await.is_err());
    let intruder = sftp::install_keys(&h.base.path().join("intruder")).unwrap();
    let w = h.wanted("shared", "from-b", remote.clone());
    assert!(mounts::ensure(&w, &intruder, &h.dirs).await.is_err());
    assert!(h.fuse_mounts_below(&h.root("ns", "a")).is_empty());

    // A host that does not hold the key the source host published is not trusted.
    let impostor = std::fs::read_to_string(h.base.path().join("impostor-host-key.pub")).unwrap();
    let w = Wanted {
        remote_host_key: Some(impostor.trim().to_owned()),
        ..h.wanted("shared", "from-b", remote.clone())
    };
    let e = mounts::ensure(&w, &keys, &h.dirs).await.unwrap_err();
    assert!(e.contains("sshfs"), "{e}");
    assert!(h.fuse_mounts_below(&h.root("ns", "a")).is_empty());
    // A mount that failed half-way leaves nothing staged.
    assert!(h.staging_mounts().is_empty(), "{:?}", h.staging_mounts());

    let w = h.wanted("shared", "from-b", remote.clone());
    mounts::ensure(&w, &keys, &h.dirs).await.unwrap();
    let target = h.root("ns", "a").join("from-b");
    // The source moves to the consumer's host and back: each switch releases what the
    // other kind of mount read (no sshfs left behind a local mount, no copy behind sshfs).
    let sshfs_staged = || {
        mounts::mount_table()
            .iter()
            .filter(|m| m.fstype == "fuse.sshfs" && m.target.starts_with(h.base.path()))
            .count()
    };
    assert_eq!(sshfs_staged(), 1);
    mounts::ensure(&h.wanted("shared", "from-b", None), &keys, &h.dirs)
        .await
        .unwrap();
    assert_eq!(sshfs_staged(), 0);
    assert_eq!(h.staging_mounts().len(), 1, "{:?}", h.staging_mounts());
    mounts::ensure(&w, &keys, &h.dirs).await.unwrap();
    assert_eq!(sshfs_staged(), 1);
    assert_eq!(h.staging_mounts().len(), 1, "{:?}", h.staging_mounts());
    let out = as_tenant(
        CONSUMER,
        "cat",
        &[&target.join("readme").display().to_string()],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-b\n");

    // Symlinks made inside the mounted folder after the mount lead nowhere on either host.
    let shared = h.root("ns", "b").join("shared");
    let s = |p: &Path| p.display().to_string();
    tenant_ok(
        SOURCE,
        "ln",
        &["-s", "../../../other/victim", &s(&shared.join("esc"))],
    );
    tenant_ok(
        SOURCE,
        "ln",
        &["-s", &s(&h.vault()), &s(&shared.join("vault"))],
    );
    for p in ["esc/diary", "vault/secret"] {
        let out = as_tenant(CONSUMER, "cat", &[&s(&target.join(p))]);
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains(SECRET),
            "{p} was read"
        );
    }

    // Mounted read-only (every mount of ns/b by that node is): the peer's view is read-only,
    // whatever its sshfs asks for.
    let_in(&[peer(&[("ns/b", true)])]).await;
    mounts::ensure(&w, &keys, &h.dirs).await.unwrap();
    let out = as_tenant(CONSUMER, "cat", &[&s(&target.join("readme"))]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-b\n");
    let out = as_tenant(CONSUMER, "touch", &[&s(&target.join("written-read-only"))]);
    assert!(!out.status.success(), "a read-only view was written");
    assert!(!shared.join("written-read-only").exists());
    let_in(&[peer(&[("ns/b", false)])]).await;
    mounts::ensure(&w, &keys, &h.dirs).await.unwrap();

    // The consumer stops mounting from this host (its grant goes): nothing new reaches it;
    // let in again, the mount works again.
    let_in(&[]).await;
    std::fs::write(shared.join("after-revoke"), "new").unwrap();
    let out = as_tenant(CONSUMER, "cat", &[&s(&target.join("after-revoke"))]);
    assert!(!out.status.success(), "read after the grant went");
    let_in(&[peer(&[("ns/b", false)])]).await;
    mounts::ensure(&w, &keys, &h.dirs).await.unwrap();
    let out = as_tenant(CONSUMER, "cat", &[&s(&target.join("after-revoke"))]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "new");

    // The source's owner swaps a folder for a symlink into another namespace's project (as
    // the sftp chroot sees it) while the consumer reads: sftp-server (root) never follows it.
    std::fs::create_dir(shared.join("d")).unwrap();
    std::fs::write(shared.join("d/diary"), "harmless").unwrap();
    std::os::unix::fs::chown(shared.join("d"), Some(SOURCE.0), Some(SOURCE.1)).unwrap();
    let racer = tenant_loop(
        SOURCE,
        &format!(
            "import os\nos.chdir({:?})\nwhile True:\n  os.rename('d','d.real'); os.symlink('../../../other/victim','d'); os.unlink('d'); os.rename('d.real','d')\n",
            s(&shared)
        ),
    );
    let (reads, leaks) = tenant_reads(CONSUMER, &target.join("d/diary"), 4);
    kill(racer);
    assert_eq!(
        leaks, 0,
        "another namespace's project was read through sftp"
    );
    assert!(reads > 100, "the reader hardly ran: {reads}");

    // The source stops serving: the sftp session holding the consumer's open file ends, and
    // nothing written through it reaches the source any more.
    let writer = tenant_writer(CONSUMER, &target.join("kept-open"));
    writes_stop_when_the_source_stops_serving(&h, writer, &shared.join("kept-open"), false);

    mounts::release(&h.root("ns", "a"), Path::new("from-b"), &h.dirs).await;
    assert!(h.fuse_mounts_below(&h.root("ns", "a")).is_empty());
    assert!(
        h.fuse_mounts_below(&h.base.path().join("run/mnt"))
            .is_empty()
    );
}

#[tokio::test]
async fn a_project_is_nosuid_nodev_and_closed_to_other_tenants() {
    let Some(h) = Host::new("a_project_is_nosuid_nodev_and_closed_to_other_tenants").await else {
        return;
    };
    let a = h.root("ns", "a");
    let mode = std::fs::metadata(&a).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o700);
    let out = as_tenant(OTHER, "ls", &[&a.display().to_string()]);
    assert!(!out.status.success(), "another tenant lists the project");

    // A setuid-root binary in the project (as a restore or a receive could bring one).
    let id = a.join("id");
    std::fs::copy("/usr/bin/id", &id).unwrap();
    std::os::unix::fs::chown(&id, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let out = as_tenant(CONSUMER, &id.display().to_string(), &["-u"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "2001",
        "ran with euid 0"
    );

    // A peer's root sftp session cannot write in its chroot (a read-only alias), not even
    // root; and were a symlink planted there, it would lead no export anywhere.
    let outside = h.base.path().join("outside-sftp");
    std::fs::create_dir(&outside).unwrap();
    let chroot = h.dirs.peer_root("peer-host");
    let behind = h
        .base
        .path()
        .join("run/sftp-dirs")
        .join(chroot.file_name().unwrap());
    std::fs::create_dir_all(&behind).unwrap();
    let e = std::fs::create_dir(chroot.join("x")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc_erofs()), "{e}");
    std::os::unix::fs::symlink(&outside, behind.join("ns")).unwrap();
    let grant = Grant {
        node: "peer-host".into(),
        address: PEER,
        client_key:
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
                .into(),
        projects: [(PathBuf::from("ns/a"), false)].into(),
    };
    let mut problems = Vec::new();
    for _ in 0..100 {
        problems = mounts::sync_peers(
            &h.dirs,
            &h.base.path().join("projects"),
            std::slice::from_ref(&grant),
        );
        if !problems.iter().any(|p| p.contains("being taken down")) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        problems.len() == 1 && problems[0].contains("symbolic link"),
        "{problems:?}"
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert!(h.fuse_mounts_below(&outside).is_empty());
    assert!(
        !mounts::mount_table()
            .iter()
            .any(|m| m.target.starts_with(&outside))
    );

    // A device node cannot be opened, not even by root.
    let ok = Command::new("mknod")
        .arg(a.join("null"))
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(ok.success());
    assert!(
        std::fs::File::open(a.join("null")).is_err(),
        "a device node opened in a project"
    );
}
