//! Real ZFS pools for tests: each test makes its own uniquely named pools on sparse image
//! files in its own temporary directory and destroys them when it ends, also on failure.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test support code

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use projstore_agent::zfs::{PoolName, Vdev, Zfs};

/// Whether tests that need ZFS must fail (not skip) when it is missing: `make test` in CI.
pub fn zfs_required() -> bool {
    std::env::var("PROJSTORE_REQUIRE_ZFS").is_ok_and(|v| v == "1")
}

/// The host's ZFS, or `None` (the test then returns early) when it is missing and not required.
pub async fn zfs_or_skip(test: &str) -> Option<Zfs> {
    let root = nix_is_root();
    let zfs = if root {
        Zfs::detect().await.map_err(|e| e.to_string())
    } else {
        Err("not root".into())
    };
    match zfs {
        Ok(z) => Some(z),
        Err(e) if zfs_required() => {
            panic!("{test}: ZFS is required (PROJSTORE_REQUIRE_ZFS=1) but unusable: {e}")
        }
        Err(e) => {
            eprintln!(
                "SKIP {test}: no usable ZFS ({e}); set PROJSTORE_REQUIRE_ZFS=1 to make this a failure"
            );
            None
        }
    }
}

fn nix_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A pool on a sparse image file, destroyed on drop.
pub struct TestPool {
    pub name: PoolName,
    pub dir: tempfile::TempDir,
}

impl TestPool {
    /// Creates pool `pst<pid>x<n>` of `size` bytes.
    pub async fn new(zfs: &Zfs, size: u64) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = PoolName::parse(&format!("pst{}x{n}", std::process::id())).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("projstore-test-")
            .tempdir()
            .unwrap();
        let img = dir.path().join("vdev0.img");
        let vdev = Vdev::new(img.to_str().unwrap(), Some(size)).unwrap();
        let pool = Self { name, dir };
        zfs.pool_create(&pool.name, &[vdev], &[]).await.unwrap();
        pool
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        // zfs-fuse answers "busy" for a moment after unmounts or an aborted receive: retry.
        for attempt in 0..40 {
            match Command::new("zpool")
                .args(["destroy", "-f", self.name.as_str()])
                .output()
            {
                Ok(out) if out.status.success() => return,
                Ok(out) if attempt == 39 => {
                    eprintln!(
                        "cannot destroy test pool {}: {}",
                        self.name,
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(250)),
            }
        }
    }
}

/// Writes a tree of files (nested directories, a symlink, odd modes, one larger file).
pub fn write_tree(root: &Path, seed: u64, large: usize) {
    std::fs::create_dir_all(root.join("src/deep/er")).unwrap();
    std::fs::write(root.join("README"), format!("project seed {seed}\n")).unwrap();
    for i in 0..20u64 {
        let body: Vec<u8> = (0..(i * 97 + seed) % 5000)
            .map(|b| (b * 31 + i + seed) as u8)
            .collect();
        std::fs::write(root.join(format!("src/deep/er/f{i}.dat")), body).unwrap();
    }
    let big: Vec<u8> = (0..large)
        .map(|b| ((b as u64).wrapping_mul(2654435761).wrapping_add(seed) >> 7) as u8)
        .collect();
    std::fs::write(root.join("large.bin"), big).unwrap();
    let _ = std::fs::remove_file(root.join("link"));
    std::os::unix::fs::symlink("src/deep", root.join("link")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("README"), std::fs::Permissions::from_mode(0o640)).unwrap();
}

/// A fingerprint of a tree: path → (kind, mode, uid, gid, size, content hash or link target).
pub fn fingerprint(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let m = std::fs::symlink_metadata(&p).unwrap();
        let meta = format!("{:o} {}:{}", m.mode(), m.uid(), m.gid());
        if m.file_type().is_symlink() {
            out.insert(
                rel,
                format!(
                    "link {meta} -> {}",
                    std::fs::read_link(&p).unwrap().display()
                ),
            );
        } else if m.is_dir() {
            out.insert(rel, format!("dir {meta}"));
            walk(root, &p, out);
        } else {
            let mut hasher = sha2_hex::Hasher::default();
            let mut f = std::fs::File::open(&p).unwrap();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            out.insert(rel, format!("file {meta} {} {}", m.len(), hasher.hex()));
        }
    }
}

mod sha2_hex {
    use sha2::{Digest, Sha256};
    #[derive(Default)]
    pub struct Hasher(Sha256);
    impl Hasher {
        pub fn update(&mut self, b: &[u8]) {
            self.0.update(b);
        }
        pub fn hex(self) -> String {
            hex::encode(self.0.finalize())
        }
    }
}

/// Runs a command (test-side inspection only), panicking with its stderr on failure.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
