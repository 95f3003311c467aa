//! A Kubernetes API server for tests and the dev cluster: HTTPS on a loopback address with a
//! generated CA and bearer tokens, discovery, the built-in kinds we need, CRDs with schema
//! validation, defaults and CEL, list/watch with resourceVersions, patches including
//! server-side apply, finalizers, owner garbage collection, Table output for `kubectl get`.
//!
//! Deviations from the real server are documented where they live (see `patch.rs` for
//! server-side apply) and in README.

pub mod http;
pub mod openapi;
pub mod openapi_v2;
pub mod patch;
pub mod protobuf;
pub mod registry;
pub mod select;
pub mod status;
pub mod store;
pub mod stored_rbac;
pub mod table;
pub mod typed;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use http::Shared;
pub use http::{Authorizer, Identity};
use store::{State, WriteOptions};

/// What went wrong starting or driving the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state in {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("{0}")]
    Request(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let what = what.into();
    move |source| ServerError::Io { what, source }
}

/// How to run the server.
pub struct Config {
    /// Loopback address to listen on.
    pub addr: IpAddr,
    /// 0: any free port.
    pub port: u16,
    /// Persist objects (and the CA and tokens) here, so a restart keeps the cluster.
    pub state_dir: Option<PathBuf>,
    /// Changes kept for watches to resume from; older versions get 410 Gone.
    pub watch_log: usize,
    /// Extra identities: token → user and groups (an admin token is always made).
    pub tokens: Vec<(String, Identity)>,
    /// Who may do what (None: everyone authenticated may do everything).
    pub authorizer: Option<Box<dyn Authorizer>>,
    /// Longest a watch stays open.
    pub max_watch: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            state_dir: None,
            watch_log: 200_000,
            tokens: Vec::new(),
            authorizer: None,
            max_watch: Duration::from_secs(1800),
        }
    }
}

/// A running server.
pub struct ApiServer {
    pub url: String,
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub admin_token: String,
    shared: Arc<Shared>,
    stop: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
    state_dir: Option<PathBuf>,
}

/// TLS material: the CA (kept across restarts in the state dir) and a server certificate.
struct Tls {
    ca_pem: String,
    config: tokio_rustls::rustls::ServerConfig,
}

fn make_tls(addr: IpAddr, state_dir: Option<&Path>) -> Result<Tls, ServerError> {
    let tls = |e: rcgen::Error| ServerError::Tls(e.to_string());
    let saved = state_dir.map(|d| (d.join("ca.pem"), d.join("ca-key.pem")));
    let (ca_params, ca_key) = match &saved {
        Some((c, k)) if c.exists() && k.exists() => {
            let key = rcgen::KeyPair::from_pem(
                &std::fs::read_to_string(k).map_err(io_err("read CA key"))?,
            )
            .map_err(tls)?;
            let issuer_pem = std::fs::read_to_string(c).map_err(io_err("read CA"))?;
            (Some(issuer_pem), key)
        }
        _ => (None, rcgen::KeyPair::generate().map_err(tls)?),
    };
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "projstore-test-ca");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = match ca_params {
        Some(pem) => pem,
        None => {
            let pem = params.self_signed(&ca_key).map_err(tls)?.pem();
            if let Some((c, k)) = &saved {
                std::fs::write(c, &pem).map_err(io_err("write CA"))?;
                std::fs::write(k, ca_key.serialize_pem()).map_err(io_err("write CA key"))?;
            }
            pem
        }
    };
    // The same parameters and key as the CA certificate: the issuer name and key id match it.
    let issuer = rcgen::Issuer::from_params(&params, &ca_key);
    let server_key = rcgen::KeyPair::generate().map_err(tls)?;
    let sans = vec!["localhost".to_owned(), addr.to_string()];
    let mut sp = rcgen::CertificateParams::new(sans).map_err(tls)?;
    sp.distinguished_name
        .push(rcgen::DnType::CommonName, "projstore-test-apiserver");
    let server_cert = sp.signed_by(&server_key, &issuer).map_err(tls)?;
    let cert_der = server_cert.der().clone();
    let key_der =
        tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der())
            .map_err(|e| ServerError::Tls(e.to_string()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key_der)
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls { ca_pem, config })
}

fn admin_token(state_dir: Option<&Path>) -> Result<String, ServerError> {
    let path = state_dir.map(|d| d.join("admin-token"));
    if let Some(p) = &path
        && let Ok(t) = std::fs::read_to_string(p)
    {
        return Ok(t.trim().to_owned());
    }
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    if let Some(p) = &path {
        std::fs::write(p, &token).map_err(io_err("write admin token"))?;
    }
    Ok(token)
}

impl ApiServer {
    /// Starts serving in the background (on the current tokio runtime).
    pub async fn start(config: Config) -> Result<Self, ServerError> {
        if let Some(d) = &config.state_dir {
            std::fs::create_dir_all(d).map_err(io_err(format!("create {}", d.display())))?;
        }
        let state_dir = config.state_dir.clone();
        let tls = make_tls(config.addr, state_dir.as_deref())?;
        let admin_token = admin_token(state_dir.as_deref())?;
        let mut state = State::new(config.watch_log);
        if let Some(d) = &state_dir {
            let file = d.join("state.json");
            if file.exists() {
                let text = std::fs::read(&file).map_err(io_err("read state"))?;
                let snap: Value =
                    serde_json::from_slice(&text).map_err(|e| ServerError::State {
                        path: file.clone(),
                        reason: e.to_string(),
                    })?;
                state.restore(&snap).map_err(|reason| ServerError::State {
                    path: file.clone(),
                    reason,
                })?;
            }
        }
        let mut tokens: HashMap<String, Identity> = config.tokens.into_iter().collect();
        tokens.insert(
            admin_token.clone(),
            Identity {
                user: "admin".into(),
                groups: vec!["system:masters".into()],
            },
        );
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            tokens,
            authorizer: config.authorizer,
            max_watch: config.max_watch,
        });
        ensure_default_namespaces(&shared)?;
        let listener = TcpListener::bind((config.addr, config.port))
            .await
            .map_err(io_err("bind"))?;
        let addr = listener.local_addr().map_err(io_err("local address"))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls.config));
        let stop = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        {
            let (shared, stop) = (shared.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        _ = stop.notified() => break,
                        accepted = listener.accept() => {
                            let Ok((tcp, _)) = accepted else { continue };
                            let _ = tcp.set_nodelay(true);
                            let (acceptor, shared) = (acceptor.clone(), shared.clone());
                            conns.spawn(async move {
                                let Ok(tls) = acceptor.accept(tcp).await else { return };
                                let svc = service_fn(move |req| http::handle(shared.clone(), req));
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .keep_alive(true)
                                    .serve_connection(TokioIo::new(tls), svc)
                                    .await;
                            });
                        }
                        Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    }
                }
                conns.abort_all();
            }));
        }
        if let Some(dir) = state_dir.clone() {
            let (shared, stop) = (shared.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.notified() => break,
                        _ = tokio::time::sleep(Duration::from_millis(300)) => {
                            if let Err(e) = save(&shared, &dir) {
                                tracing::warn!(error = %e, "cannot persist API server state");
                            }
                        }
                    }
                }
            }));
        }
        Ok(Self {
            url: format!("https://{addr}"),
            addr,
            ca_pem: tls.ca_pem,
            admin_token,
            shared,
            stop,
            tasks,
            state_dir,
        })
    }

    /// A kubeconfig for `token` (kubectl and kube-rs both read it).
    pub fn kubeconfig(&self, token: &str, user: &str) -> String {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: projstore-dev\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: projstore-dev\n  context:\n    cluster: projstore-dev\n    user: {user}\n    namespace: default\ncurrent-context: projstore-dev\n",
            url = self.url
        )
    }

    /// Writes the admin kubeconfig to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), ServerError> {
        std::fs::write(path, self.kubeconfig(&self.admin_token, "admin"))
            .map_err(io_err(format!("write {}", path.display())))
    }

    /// Creates (or replaces) an object directly, as an admin request would.
    pub fn create_object(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        ns: &str,
        obj: Value,
    ) -> Result<Value, ServerError> {
        let mut state = self
            .shared
            .state
            .lock()
            .map_err(|_| ServerError::Request("state lock poisoned".into()))?;
        let t = state
            .registry
            .get(group, version, plural)
            .cloned()
            .ok_or_else(|| {
                ServerError::Request(format!("{group}/{version} {plural} is not served"))
            })?;
        let opts = WriteOptions {
            field_manager: "projstore-dev".into(),
            ..WriteOptions::default()
        };
        state
            .create(&t, ns, obj, &opts)
            .map_err(|e| ServerError::Request(e.message))
    }

    /// Registers every CRD manifest (`*.yaml`) of `dir`.
    pub fn register_crds(&self, dir: &Path) -> Result<usize, ServerError> {
        let mut n = 0;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io_err(format!("read {}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        for f in files {
            let text =
                std::fs::read_to_string(&f).map_err(io_err(format!("read {}", f.display())))?;
            let crd: Value = serde_yaml::from_str(&text)
                .map_err(|e| ServerError::Request(format!("{}: {e}", f.display())))?;
            match self.create_object(
                "apiextensions.k8s.io",
                "v1",
                "customresourcedefinitions",
                "",
                crd,
            ) {
                Ok(_) => n += 1,
                Err(ServerError::Request(m)) if m.contains("already exists") => n += 1,
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// One field (JSON pointer) of a stored object, as a string.
    pub fn object_field(
        &self,
        group: &str,
        plural: &str,
        ns: &str,
        name: &str,
        pointer: &str,
    ) -> Option<String> {
        let state = self.shared.state.lock().ok()?;
        let t = state
            .registry
            .by_key(&(group.to_owned(), plural.to_owned()))?
            .clone();
        let o = state.get(&t, ns, name)?;
        o.pointer(pointer)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    }

    /// How many objects of `group`/`plural` are stored (for benchmarks and tests).
    pub fn count(&self, group: &str, plural: &str) -> usize {
        self.shared
            .state
            .lock()
            .map(|s| s.count(&(group.to_owned(), plural.to_owned())))
            .unwrap_or(0)
    }

    /// Stops serving (and saves the state when persistent).
    pub async fn shutdown(self) {
        self.stop.notify_waiters();
        for t in &self.tasks {
            t.abort();
        }
        if let Some(d) = &self.state_dir {
            let _ = save(&self.shared, d);
        }
    }
}

fn ensure_default_namespaces(shared: &Shared) -> Result<(), ServerError> {
    let mut state = shared
        .state
        .lock()
        .map_err(|_| ServerError::Request("state lock poisoned".into()))?;
    let Some(t) = state.registry.get("", "v1", "namespaces").cloned() else {
        return Ok(());
    };
    for ns in ["default", "kube-system", "kube-public"] {
        if state.get(&t, "", ns).is_none() {
            let obj = serde_json::json!({"metadata": {"name": ns}});
            state
                .create(
                    &t,
                    "",
                    obj,
                    &WriteOptions {
                        field_manager: "projstore-apiserver".into(),
                        ..Default::default()
                    },
                )
                .map_err(|e| ServerError::Request(e.message))?;
        }
    }
    Ok(())
}

fn save(shared: &Shared, dir: &Path) -> Result<(), ServerError> {
    let snap = {
        let mut state = shared
            .state
            .lock()
            .map_err(|_| ServerError::Request("state lock poisoned".into()))?;
        if !state.dirty {
            return Ok(());
        }
        state.dirty = false;
        state.snapshot()
    };
    let tmp = dir.join("state.json.partial");
    let text = serde_json::to_vec(&snap).map_err(|e| ServerError::Request(e.to_string()))?;
    std::fs::write(&tmp, text).map_err(io_err("write state"))?;
    std::fs::rename(&tmp, dir.join("state.json")).map_err(io_err("rename state"))
}
