//! The sftp side of folder mounts across hosts (DESIGN §5.7): this host's ssh keys, its
//! sftp-only sshd, and which peer node may reach which project's export. Every key is made
//! on its host; a peer is let in with its own client key, from its own address, and sees the
//! exports of the projects it mounts from here alone.

use std::borrow::Borrow;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::mounts::MountDirs;
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;

/// The key material of the sftp mounts, all made on this host: its sshd host key (the public
/// half published in the StoragePool status, so peers trust exactly it) and the client key it
/// logs in to peers with (the public half published too: a peer lets in exactly this key,
/// from this host's address, and shows it only the projects this host mounts).
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
    /// The key a peer node is let in with: one file per node, named like its chroot,
    /// written by `Sshd::let_in` and read by sshd in that node's `Match` block only.
    pub fn peer_keys(&self, node: &str) -> PathBuf {
        self.dir
            .join("peers")
            .join(format!("{}.keys", crate::mounts::node_tag(node)))
    }
}

fn keygen(args: &[&std::ffi::OsStr]) -> Result<Vec<u8>, String> {
    let out = std::process::Command::new("ssh-keygen")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ssh-keygen: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "ssh-keygen: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Prepares `<run_dir>/ssh` (0700) with this host's own ed25519 keys, each made once: the
/// sshd host key and the client key this agent logs in to its peers with. Their public
/// halves go into the StoragePool status; no other host holds either private key.
pub fn install_keys(run_dir: &Path) -> Result<SshKeys, String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = run_dir.join("ssh");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let keys = SshKeys { dir: dir.clone() };
    for (key, public, comment) in [
        (keys.host_key(), keys.host_pub(), "projstore-sftp-host"),
        (
            keys.client_key(),
            keys.client_pub(),
            "projstore-sftp-client",
        ),
    ] {
        if key.exists() && public.exists() {
            continue;
        }
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(&public);
        keygen(&[
            "-q".as_ref(),
            "-t".as_ref(),
            "ed25519".as_ref(),
            "-N".as_ref(),
            "".as_ref(),
            "-C".as_ref(),
            comment.as_ref(),
            "-f".as_ref(),
            key.as_os_str(),
        ])?;
    }
    Ok(keys)
}

/// A peer's published sshd host key as `known_hosts` takes it: one `type base64` line.
pub fn check_host_key(key: &str) -> Result<(), String> {
    let mut words = key.split(' ');
    let (kind, blob) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let ok = (kind.starts_with("ssh-") || kind.starts_with("ecdsa-sha2-"))
        && kind
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '@')
        && !blob.is_empty()
        && blob
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
        && words.all(|w| w.chars().all(|c| c.is_ascii_graphic()));
    if ok && !key.contains(['\n', '\r']) {
        Ok(())
    } else {
        Err(format!("{key:?} is not an ssh public key"))
    }
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

/// The sftp-only sshd of this host, chrooted per peer: a peer node logs in with its own
/// client key, from its own address only (`from=`), and its session is chrooted to a
/// directory that holds the exports of the projects it mounts from this host, nothing else
/// (`MountDirs::peer_root`, filled by `mounts::sync_peers`). It runs until dropped.
pub struct Sshd {
    child: Child,
    listen: SocketAddr,
    keys: SshKeys,
    run_dir: PathBuf,
    chroots: MountDirs,
    config: String,
}

impl Sshd {
    /// Starts sshd with no peer let in yet.
    pub async fn start(
        listen: SocketAddr,
        keys: &SshKeys,
        dirs: &MountDirs,
        run_dir: &Path,
    ) -> Result<Self, String> {
        check_chroot(&dirs.peers_root())?;
        for f in [&keys.host_key(), &keys.client_pub()] {
            if !f.is_file() {
                return Err(format!("{} is missing", f.display()));
            }
        }
        std::fs::create_dir_all(run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
        // sshd wants its privilege-separation directory even with UsePAM no, root's and not
        // writable by others (a Kubernetes emptyDir is made 0777).
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::create_dir_all("/run/sshd");
        let _ = std::fs::set_permissions("/run/sshd", std::fs::Permissions::from_mode(0o755));
        let peers = keys.dir.join("peers");
        std::fs::create_dir_all(&peers).map_err(|e| format!("{}: {e}", peers.display()))?;
        std::fs::set_permissions(&peers, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", peers.display()))?;
        let config = run_dir.join("sshd_config");
        let pid_file = run_dir.join("sshd.pid");
        stop_stale_sshd(&pid_file, &config);
        let text = sshd_config(listen, keys, dirs, &[]);
        std::fs::write(&config, &text).map_err(|e| format!("{}: {e}", config.display()))?;
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
        Ok(Self {
            child,
            listen,
            keys: keys.clone(),
            run_dir: run_dir.to_path_buf(),
            chroots: dirs.clone(),
            config: text,
        })
    }

    /// Whether sshd still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// Lets in exactly the peers of `grants` (their keys, from their addresses, each to its
    /// own chroot). The keys file is read at each login; a new peer address changes the
    /// config, which sshd reads again on SIGHUP (it re-executes itself, same pid).
    pub fn let_in(&mut self, grants: &[Grant]) -> Result<(), String> {
        let mut files = std::collections::BTreeSet::new();
        for g in grants {
            let file = self.keys.peer_keys(&g.node);
            write_private(&file, &authorized_key(g))?;
            files.insert(file);
        }
        // Nodes no longer let in: their keys go.
        if let Ok(entries) = std::fs::read_dir(self.keys.dir.join("peers")) {
            for e in entries.flatten() {
                if !files.contains(&e.path()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let text = sshd_config(self.listen, &self.keys, &self.chroots, grants);
        if text != self.config {
            let config = self.run_dir.join("sshd_config");
            std::fs::write(&config, &text).map_err(|e| format!("{}: {e}", config.display()))?;
            if let Some(pid) = self
                .child
                .id()
                .and_then(|p| rustix::process::Pid::from_raw(p as i32))
            {
                rustix::process::kill_process(pid, rustix::process::Signal::HUP)
                    .map_err(|e| format!("reload sshd: {e}"))?;
            }
            self.config = text;
        }
        Ok(())
    }
}

/// Writes `text` to `path` (0600) through a temporary file and a rename: sshd never reads
/// half a file.
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// sshd's configuration: key logins of root only, sftp only, no forwarding of any kind; no key
/// is accepted but in a peer's `Match Address` block, which accepts that peer's key alone
/// (from that address alone) and chroots its session to that peer's directory. A session
/// from any other address has no key to log in with and an empty chroot. Unauthenticated
/// connections get 10 s and at most 3 at a time per address (per /64 in IPv6).
pub fn sshd_config(
    listen: SocketAddr,
    keys: &SshKeys,
    dirs: &MountDirs,
    grants: &[Grant],
) -> String {
    let mut text = format!(
        "ListenAddress {listen}\nHostKey {}\nPidFile none\nAuthorizedKeysFile none\n\
         LoginGraceTime 10\nPerSourceMaxStartups 3\nPerSourceNetBlockSize 32:64\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
         PermitRootLogin prohibit-password\nAllowUsers root\nChrootDirectory {}\n\
         ForceCommand internal-sftp\nSubsystem sftp internal-sftp\nAllowTcpForwarding no\n\
         AllowAgentForwarding no\nAllowStreamLocalForwarding no\nX11Forwarding no\nPermitTTY no\n\
         PermitTunnel no\nUsePAM no\nStrictModes yes\n",
        keys.host_key().display(),
        dirs.no_peer_root().display()
    );
    // `grants` holds one node per address (see `grants`).
    for g in grants {
        text.push_str(&format!(
            "Match Address {}\n    AuthorizedKeysFile {}\n    ChrootDirectory {}\n",
            g.address,
            keys.peer_keys(&g.node).display(),
            dirs.peer_root(&g.node).display()
        ));
    }
    text
}

/// A granted peer's `authorized_keys` line: its client key, usable from its address only,
/// with every forwarding, pty and rc refused (`restrict`).
pub fn authorized_key(g: &Grant) -> String {
    format!("from=\"{}\",restrict {}\n", g.address, g.client_key)
}

/// The IP address of a `host:port` endpoint (None for a DNS name).
pub fn address_of(endpoint: &str) -> Option<std::net::IpAddr> {
    let host = endpoint.rsplit_once(':').map_or(endpoint, |(h, _)| h);
    // IPv4-mapped IPv6 as IPv4 (sshd sees such clients so): one address, one form.
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .ok()
        .map(|a| a.to_canonical())
}

/// A peer node let in to this host's sftp: from its address, with its client key, to the
/// exports of the projects (`<ns>/<name>`) it mounts from here, each read-only unless one of
/// its mounts of it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub node: String,
    pub address: std::net::IpAddr,
    pub client_key: String,
    pub projects: std::collections::BTreeMap<PathBuf, bool>,
}

/// Who may mount what from `me`, from what the controller published: every primary replica
/// whose mount sources name a project served on `me` lets that replica's node in to that
/// project, with the client key and from the address its pools publish. Peers that have
/// not published a usable key or an IP address are left out, with the reason.
pub fn grants<R, P>(replicas: &[R], pools: &[P], me: &str) -> (Vec<Grant>, Vec<String>)
where
    R: Borrow<projstore_api::StreamReplica>,
    P: Borrow<projstore_api::StoragePool>,
{
    use kube::ResourceExt;
    let mut wanted: std::collections::BTreeMap<&str, std::collections::BTreeMap<PathBuf, bool>> =
        Default::default();
    for sr in replicas.iter().map(Borrow::borrow) {
        // A live primary's mounts only: a trashed or archived project mounts nothing.
        if sr.spec.role != projstore_api::ReplicaRole::Primary
            || sr.spec.state != projstore_api::ReplicaState::Live
            || sr.spec.node == me
        {
            continue;
        }
        let Ok(sources) = projstore_api::contract::mount_sources(sr.annotations()) else {
            continue;
        };
        let ns = sr.namespace().unwrap_or_default();
        for (project, src) in sources {
            if src.node == me {
                let read_only = wanted
                    .entry(sr.spec.node.as_str())
                    .or_default()
                    .entry(Path::new(&ns).join(project))
                    .or_insert(true);
                *read_only &= src.read_only;
            }
        }
    }
    let (mut out, mut problems) = (Vec::new(), Vec::new());
    for (node, projects) in wanted {
        let agent = pools
            .iter()
            .map(Borrow::borrow)
            .filter(|p| p.spec.node_name == node)
            .filter_map(|p| p.status.as_ref()?.agent.as_ref())
            .find(|a| a.sftp_client_key.is_some() && a.sftp_endpoint.is_some());
        let Some(agent) = agent else {
            problems.push(format!("node {node} has published no sftp client key yet"));
            continue;
        };
        let endpoint = agent.sftp_endpoint.as_deref().unwrap_or_default();
        let key = agent.sftp_client_key.clone().unwrap_or_default();
        match (address_of(endpoint).ok_or(()), check_host_key(&key)) {
            (Ok(address), Ok(())) => out.push(Grant {
                node: node.to_owned(),
                address,
                client_key: key,
                projects,
            }),
            (Err(_), _) => problems.push(format!(
                "node {node}: sftp endpoint {endpoint:?} is not an IP address (a peer is let in by its address)"
            )),
            (_, Err(e)) => problems.push(format!("node {node}: client key: {e}")),
        }
    }
    // An address claimed by two nodes (a mistake, or a host publishing another's) lets
    // neither in: the address decides the chroot.
    let mut claims: std::collections::BTreeMap<std::net::IpAddr, Vec<String>> = Default::default();
    for g in &out {
        claims.entry(g.address).or_default().push(g.node.clone());
    }
    out.retain(|g| claims[&g.address].len() == 1);
    for (address, nodes) in claims.into_iter().filter(|(_, n)| n.len() > 1) {
        problems.push(format!(
            "nodes {} all publish the sftp address {address}: none of them is let in",
            nodes.join(", ")
        ));
    }
    (out, problems)
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

#[cfg(test)]
mod tests;
