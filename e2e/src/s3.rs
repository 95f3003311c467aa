//! A real S3-compatible server for tests and benchmarks: `s3s-fs` (from the Rust registry,
//! installed by `make test`), with SigV4 authentication, on a loopback port, storing objects
//! as files under a directory of the test's own. Stopped when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "projstore-test-access";
pub const SECRET_KEY: &str = "projstore-test-secret-key-0123456789";

pub struct S3Server {
    pub endpoint: String,
    pub root: PathBuf,
    child: Child,
}

impl S3Server {
    /// Starts `s3s-fs` storing under `root`, with bucket `bucket` created. None when it is
    /// not installed (`make test` installs it; with PROJSTORE_REQUIRE_ZFS=1 callers fail).
    pub fn start(root: &Path, bucket: &str) -> Result<Option<Self>, String> {
        let Some(bin) = find_binary() else {
            return Ok(None);
        };
        std::fs::create_dir_all(root.join(bucket)).map_err(|e| e.to_string())?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start s3s-fs: {e}"))?;
        let server = Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            root: root.to_owned(),
            child,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let t = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if t.elapsed() > Duration::from_secs(10) {
                return Err("s3s-fs did not listen within 10s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Some(server))
    }

    /// The file an object is stored in.
    pub fn object_file(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(bucket).join(key)
    }

    /// Every object file below `prefix` of `bucket`, with its size.
    pub fn objects(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let base = self.root.join(bucket);
        let mut stack = vec![base.join(prefix)];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(&base) {
                    let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                    out.push((rel.display().to_string(), size));
                }
            }
        }
        out.sort();
        out
    }
}

fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
