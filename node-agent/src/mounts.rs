//! Mounts (DESIGN §5.7): a folder of project B inside project A.
//!
//! Source side: an sftp-only sshd run by the agent, chrooted to the projects root, key auth
//! only. Consumer side: sshfs from B's host into a staging directory, then bindfs onto the
//! mount path (files created through it belong to B's owner; they show as A's owner); on the
//! same host, bindfs alone. What is mounted is read back from `/proc/self/mounts`, so a
//! restarted agent knows its mounts without any other state.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// The key material of the sftp mounts (files of the Secret): the shared host key of every
/// agent's sshd and the client key agents log in with.
#[derive(Debug, Clone)]
pub struct SshKeys {
    pub dir: PathBuf,
}

impl SshKeys {
    pub fn host_key(&self) -> PathBuf {
        self.dir.join("ssh-host-key")
    }
    pub fn host_pub(&self) -> PathBuf {
        self.dir.join("ssh-host-key.pub")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("ssh-client-key")
    }
    pub fn client_pub(&self) -> PathBuf {
        self.dir.join("ssh-client-key.pub")
    }
}

/// Copies the private keys of the Secret (`ssh-host-key`, `ssh-client-key`) to
/// `<run_dir>/ssh` with mode 0600 (ssh refuses keys others can read, and Secret volumes
/// may be group-readable) and derives their public halves there.
pub fn install_keys(secret_dir: &Path, run_dir: &Path) -> Result<SshKeys, String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = run_dir.join("ssh");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    for name in ["ssh-host-key", "ssh-client-key"] {
        let from = secret_dir.join(name);
        let key = std::fs::read(&from).map_err(|e| format!("{}: {e}", from.display()))?;
        let to = dir.join(name);
        let _ = std::fs::remove_file(&to);
        std::fs::write(&to, key).map_err(|e| format!("{}: {e}", to.display()))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{}: {e}", to.display()))?;
        let out = std::process::Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&to)
            .output()
            .map_err(|e| format!("cannot run ssh-keygen: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{} is not a usable private key: {}",
                from.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let public = dir.join(format!("{name}.pub"));
        std::fs::write(&public, &out.stdout).map_err(|e| format!("{}: {e}", public.display()))?;
    }
    Ok(SshKeys { dir })
}

/// sshd refuses a chroot whose path components are not root-owned and unwritable by others;
/// say which one is wrong instead of letting every login fail.
pub fn check_chroot(root: &Path) -> Result<(), String> {
    let mut p = PathBuf::new();
    for c in root.components() {
        p.push(c);
        let m = std::fs::metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        if m.uid() != 0 || m.mode() & 0o022 != 0 {
            return Err(format!(
                "{} must be owned by root and not writable by group or others to serve as the sftp chroot (owner {}, mode {:o})",
                p.display(),
                m.uid(),
                m.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

/// Starts the sftp-only sshd; it runs until the returned child is dropped.
pub async fn start_sshd(
    listen: SocketAddr,
    keys: &SshKeys,
    projects_root: &Path,
    run_dir: &Path,
) -> Result<Child, String> {
    check_chroot(projects_root)?;
    let host_key = keys.host_key();
    for f in [&host_key, &keys.client_pub()] {
        if !f.is_file() {
            return Err(format!("{} is missing", f.display()));
        }
    }
    std::fs::create_dir_all(run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
    // sshd wants its privilege-separation directory even with UsePAM no.
    let _ = std::fs::create_dir_all("/run/sshd");
    let config = run_dir.join("sshd_config");
    let pid_file = run_dir.join("sshd.pid");
    stop_stale_sshd(&pid_file, &config);
    let text = format!(
        "ListenAddress {listen}\nHostKey {}\nPidFile none\nAuthorizedKeysFile {}\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
         PermitRootLogin prohibit-password\nAllowUsers root\nChrootDirectory {}\n\
         ForceCommand internal-sftp\nSubsystem sftp internal-sftp\nAllowTcpForwarding no\n\
         AllowAgentForwarding no\nX11Forwarding no\nPermitTTY no\nUsePAM no\nStrictModes no\n",
        host_key.display(),
        keys.client_pub().display(),
        projects_root.display()
    );
    std::fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))?;
    let mut child = Command::new("/usr/sbin/sshd")
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start sshd: {e}"))?;
    // sshd -D writes no pid file: record it, so a restarted agent can stop an orphan.
    if let Some(pid) = child.id() {
        let _ = std::fs::write(&pid_file, pid.to_string());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Ok(Some(status)) = child.try_wait() {
        return Err(format!(
            "sshd exited at once ({status}); see the agent's log"
        ));
    }
    Ok(child)
}

/// An agent killed with SIGKILL leaves its sshd running (holding the port): stop it, but
/// only when the recorded pid is an sshd started with our config.
fn stop_stale_sshd(pid_file: &Path, config: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
    else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if started_with(&cmdline, config) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        for _ in 0..50 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = std::fs::remove_file(pid_file);
}

/// Whether a process command line (`/proc/PID/cmdline`) is an sshd started with `config`.
/// sshd rewrites its title to `sshd: /usr/sbin/sshd -D -e -f CONFIG [listener] …`, one
/// string: the path is looked for as a whole word, in either form.
fn started_with(cmdline: &[u8], config: &Path) -> bool {
    let config = config.as_os_str().as_encoded_bytes();
    cmdline
        .split(|b| *b == 0 || *b == b' ')
        .any(|word| word == config)
}

/// An sftp endpoint as `host:port` (host a DNS name, an IPv4 address, or `[IPv6]`): it ends
/// up in sshfs's arguments, so nothing else is let through.
pub fn check_endpoint(ep: &str) -> Result<(), String> {
    let bad = || format!("sftp endpoint {ep:?} is not host:port");
    let (host, port) = ep.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ok = !host.is_empty()
        && host.len() <= 253
        && !host.starts_with('-')
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
    if ok { Ok(()) } else { Err(bad()) }
}

/// One wanted mount on the consumer's primary host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// `<consumer mountpoint>/<mountPath>`.
    pub target: PathBuf,
    /// The source folder relative to the projects root: `<ns>/<project>/<path>`.
    pub source: PathBuf,
    /// The source's sftp endpoint, or None when the source is served on this host.
    pub remote: Option<String>,
    pub read_only: bool,
    /// The source project's owner: files created through the mount get it.
    pub source_owner: (u32, u32),
    /// The consumer project's owner: files show as owned by it.
    pub owner: (u32, u32),
}

/// A mounted filesystem from `/proc/self/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounted {
    pub source: String,
    pub target: PathBuf,
    pub fstype: String,
}

/// The mount table (octal escapes in paths decoded).
pub fn mount_table() -> Vec<Mounted> {
    let text = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    parse_mounts(&text)
}

pub fn parse_mounts(text: &str) -> Vec<Mounted> {
    let unescape = |s: &str| {
        let mut out = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\'
                && i + 3 < b.len()
                && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
            {
                out.push(v);
                i += 4;
                continue;
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (src, tgt, ty) = (f.next()?, f.next()?, f.next()?);
            Some(Mounted {
                source: unescape(src),
                target: PathBuf::from(unescape(tgt)),
                fstype: ty.to_owned(),
            })
        })
        .collect()
}

/// Where the sshfs of a mount is staged: outside every project, one directory per target.
fn staging_for(run_dir: &Path, target: &Path) -> PathBuf {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in target.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    run_dir.join("mounts").join(format!("{h:016x}"))
}

/// A relative path with no `..`, `.`, or root: safe to join below a project.
pub fn safe_relative(p: &str) -> Result<PathBuf, String> {
    let path = Path::new(p);
    if p.is_empty() || p.contains('\0') {
        return Err(format!("{p:?} is not a path"));
    }
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(format!(
                    "{p:?} must stay inside the project (no `..`, not absolute)"
                ));
            }
        }
    }
    Ok(out)
}

async fn run(program: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .map_err(|_| format!("{program} did not finish within 30 s"))?
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Unmounts `target` (lazily, so a dead sshfs connection cannot block it).
pub async fn unmount(target: &Path) -> Result<(), String> {
    run("umount", &["-l".as_ref(), target.as_os_str()]).await
}

/// Makes `w` mounted (idempotent): nothing happens when it already is, from the same source;
/// a mount from another source (the source project moved) is replaced.
pub async fn ensure(
    w: &Wanted,
    keys: &SshKeys,
    projects_root: &Path,
    run_dir: &Path,
) -> Result<(), String> {
    let table = mount_table();
    let staging = staging_for(run_dir, &w.target);
    let lower = match &w.remote {
        Some(_) => staging.clone(),
        None => projects_root.join(&w.source),
    };
    let top = table.iter().rev().find(|m| m.target == w.target);
    let sshfs_source = w.remote.as_ref().map(|r| {
        let host = r.rsplit_once(':').map_or(r.as_str(), |(h, _)| h);
        format!("root@{host}:/{}", w.source.display())
    });
    let staged = table.iter().rev().find(|m| m.target == staging);
    let staging_ok = match &sshfs_source {
        Some(src) => staged.is_some_and(|m| &m.source == src),
        None => true,
    };
    if top.is_some_and(|m| m.source == lower.display().to_string()) && staging_ok {
        return Ok(());
    }
    // Wrong or half-made: take it down and mount afresh.
    if top.is_some() {
        unmount(&w.target).await?;
    }
    if staged.is_some() {
        unmount(&staging).await?;
    }
    if !probe(&w.target).await? {
        let (target, owner) = (w.target.clone(), w.owner);
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&target)
                .and_then(|()| std::os::unix::fs::chown(&target, Some(owner.0), Some(owner.1)))
                .map_err(|e| format!("{}: {e}", target.display()))
        })
        .await
        .map_err(|e| e.to_string())??;
    }
    if let (Some(remote), Some(src)) = (&w.remote, &sshfs_source) {
        let (_, port) = remote
            .rsplit_once(':')
            .ok_or_else(|| format!("sftp endpoint {remote:?} has no port"))?;
        std::fs::create_dir_all(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
        let known = run_dir.join("known_hosts");
        let host_pub = std::fs::read_to_string(keys.host_pub())
            .map_err(|e| format!("{}: {e}", keys.host_pub().display()))?;
        std::fs::write(&known, format!("* {}", host_pub.trim()))
            .map_err(|e| format!("{}: {e}", known.display()))?;
        let opts = format!(
            "IdentityFile={},UserKnownHostsFile={},StrictHostKeyChecking=yes,BatchMode=yes,port={port},\
             reconnect,ServerAliveInterval=15,ServerAliveCountMax=3,\
             cache_timeout=10,kernel_cache,auto_cache,allow_other,default_permissions",
            keys.client_key().display(),
            known.display()
        );
        run(
            "sshfs",
            &[
                "-o".as_ref(),
                opts.as_ref(),
                src.as_ref(),
                staging.as_os_str(),
            ],
        )
        .await?;
    } else if !probe(&lower).await? {
        return Err(format!(
            "{} does not exist in the source project",
            w.source.display()
        ));
    }
    let mut args: Vec<std::ffi::OsString> = vec![
        format!("--create-for-user={}", w.source_owner.0).into(),
        format!("--create-for-group={}", w.source_owner.1).into(),
        "-u".into(),
        w.owner.0.to_string().into(),
        "-g".into(),
        w.owner.1.to_string().into(),
        "-o".into(),
        if w.read_only {
            "allow_other,ro"
        } else {
            "allow_other"
        }
        .into(),
    ];
    args.push(lower.into());
    args.push(w.target.clone().into());
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    run("bindfs", &refs).await
}

/// Unmounts the same-host bindfs mounts whose source lies in `dir` (a project about to stop
/// serving): they must go before the project's own filesystem does, or they hang.
pub async fn release_sourced_from(dir: &Path, run_dir: &Path) -> Vec<PathBuf> {
    let mut done = Vec::new();
    for m in mount_table() {
        if m.fstype.starts_with("fuse") && Path::new(&m.source).starts_with(dir) {
            release(&m.target, run_dir).await;
            done.push(m.target);
        }
    }
    done
}

/// Whether `p` exists, asked off the async threads with a time limit: a path below a dead
/// FUSE mount must not stall the agent.
async fn probe(p: &Path) -> Result<bool, String> {
    let owned = p.to_path_buf();
    match tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || owned.exists()),
    )
    .await
    {
        Ok(Ok(b)) => Ok(b),
        _ => Err(format!("{} does not answer (a hung mount?)", p.display())),
    }
}

/// Unmounts the mount at `target` and the sshfs staged behind it.
pub async fn release(target: &Path, run_dir: &Path) {
    let _ = unmount(target).await;
    let staging = staging_for(run_dir, target);
    if mount_table().iter().any(|s| s.target == staging) {
        let _ = unmount(&staging).await;
    }
}

/// Unmounts every FUSE mount below `dir` (deepest first), and the staging mounts behind them.
/// Returns what was unmounted.
pub async fn release_under(dir: &Path, run_dir: &Path) -> Vec<PathBuf> {
    let mut done = Vec::new();
    let mut inside: Vec<Mounted> = mount_table()
        .into_iter()
        .filter(|m| m.fstype.starts_with("fuse") && m.target.starts_with(dir) && m.target != dir)
        .collect();
    inside.sort_by_key(|m| std::cmp::Reverse(m.target.as_os_str().len()));
    for m in inside {
        if unmount(&m.target).await.is_ok() {
            done.push(m.target.clone());
        }
        let staging = staging_for(run_dir, &m.target);
        if mount_table().iter().any(|s| s.target == staging) && unmount(&staging).await.is_ok() {
            done.push(staging);
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_must_stay_inside_the_project() {
        assert_eq!(safe_relative("a/b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(safe_relative("./a").unwrap(), PathBuf::from("a"));
        for bad in ["", "../x", "a/../../x", "/etc", "a\0b"] {
            assert!(safe_relative(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_orphaned_sshd_is_recognised_by_its_config_also_after_it_renamed_itself() {
        let config = Path::new("/run/projstore/sshd_config");
        // Debian 12's sshd as a listener (its title rewritten), and as first started.
        let titled = b"sshd: /usr/sbin/sshd -D -e -f /run/projstore/sshd_config [listener] 0 of 10-100 startups\0";
        let plain = b"/usr/sbin/sshd\0-D\0-e\0-f\0/run/projstore/sshd_config\0";
        assert!(started_with(titled, config));
        assert!(started_with(plain, config));
        let other = b"sshd: /usr/sbin/sshd -D -f /run/projstore/sshd_config.old [listener]\0";
        assert!(!started_with(other, config));
        assert!(!started_with(b"", config));
    }

    #[test]
    fn sftp_endpoints_are_host_and_port_only() {
        for ok in ["127.0.0.2:7422", "host-a.example:22", "[fe80::1]:7422"] {
            assert!(check_endpoint(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "host",
            "host:",
            "host:99999",
            "host:22,ssh_command=sh",
            "-oProxyCommand=x:22",
            "a b:22",
            ":22",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_mount_table_is_read_with_escapes() {
        let t = "root@127.0.0.2:/ns/b/sub /run/p/mounts/ab fuse.sshfs rw 0 0\n/a\\040b /p/ns/a/in\\040here fuse rw 0 0\n";
        let m = parse_mounts(t);
        assert_eq!(m[0].source, "root@127.0.0.2:/ns/b/sub");
        assert_eq!(m[1].target, PathBuf::from("/p/ns/a/in here"));
        assert_eq!(m[1].source, "/a b");
    }

    #[test]
    fn a_chroot_below_a_world_writable_directory_is_refused_with_the_reason() {
        let e = check_chroot(Path::new("/tmp")).unwrap_err();
        assert!(e.contains("/tmp") && e.contains("not writable"), "{e}");
    }
}
