//! Mutual TLS between agents (DESIGN §5.4, invariant 7): each agent has its own key and a
//! certificate naming its node, signed by the cluster CA. The stream server asks every client
//! for a certificate of that CA, and a client checks that the server's certificate names the
//! node it meant to reach; a request for a project's data names the asking node, which its
//! certificate must prove. The files are read again when they change (a renewed certificate,
//! a new CA): new connections use them, running ones finish on the old.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// What went wrong loading the TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error(
        "the certificate in {path} does not name node {node:?}: each agent needs its own certificate with its node name as a DNS SAN"
    )]
    NotOurs { path: PathBuf, node: String },
}

/// This node's TLS identity: the configurations of the stream server and of its clients.
pub struct NodeTls {
    pub node: String,
    dir: PathBuf,
    current: RwLock<Loaded>,
}

/// The configurations made from one version of the files.
struct Loaded {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    /// What the files held (SHA-256 of CA, certificate and key): a change means a reload.
    digest: [u8; 32],
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_slice()).collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(c),
        Ok(_) => Err(TlsError::File {
            path: path.to_path_buf(),
            reason: "holds no PEM certificate".into(),
        }),
        Err(e) => Err(TlsError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// Whether `cert` (already verified against the CA) names `node`.
pub fn names_node(cert: &CertificateDer<'_>, node: &str) -> bool {
    let Ok(name) = ServerName::try_from(node.to_owned()) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl NodeTls {
    /// Loads `ca.crt`, `tls.crt` and `tls.key` from `dir` (a `kubernetes.io/tls` Secret with
    /// its CA; where the files are named `<node>.crt` and `<node>.key`, those are used).
    pub fn load(dir: &Path, node: &str) -> Result<Self, TlsError> {
        Ok(Self {
            node: node.into(),
            dir: dir.to_path_buf(),
            current: RwLock::new(Loaded::read(dir, node)?),
        })
    }

    /// Reads the files again; when they changed and are valid, new connections use them.
    /// Returns whether they changed. Invalid files (a half-written update, a certificate for
    /// another node) change nothing: the error says why.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let fresh = Loaded::read(&self.dir, &self.node)?;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.digest == fresh.digest {
            return Ok(false);
        }
        *current = fresh;
        Ok(true)
    }

    fn loaded<T>(&self, f: impl FnOnce(&Loaded) -> T) -> T {
        f(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.loaded(|l| tokio_rustls::TlsAcceptor::from(l.server.clone()))
    }

    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        self.loaded(|l| tokio_rustls::TlsConnector::from(l.client.clone()))
    }
}

impl Loaded {
    fn read(dir: &Path, node: &str) -> Result<Self, TlsError> {
        let (cert_path, key_path) = if dir.join(format!("{node}.crt")).exists() {
            (
                dir.join(format!("{node}.crt")),
                dir.join(format!("{node}.key")),
            )
        } else {
            (dir.join("tls.crt"), dir.join("tls.key"))
        };
        let ca_path = dir.join("ca.crt");
        let digest = {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            for p in [&ca_path, &cert_path, &key_path] {
                h.update(read_pem(p)?);
            }
            h.finalize().into()
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&ca_path)? {
            roots.add(c).map_err(|e| TlsError::File {
                path: ca_path.clone(),
                reason: e.to_string(),
            })?;
        }
        let roots = Arc::new(roots);
        let chain = certs(&cert_path)?;
        if !names_node(&chain[0], node) {
            return Err(TlsError::NotOurs {
                path: cert_path,
                node: node.into(),
            });
        }
        let key_pem = read_pem(&key_path)?;
        let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .ok()
            .flatten()
            .ok_or_else(|| TlsError::File {
                path: key_path.clone(),
                reason: "holds no PEM private key".into(),
            })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = |e: rustls::Error| TlsError::Config(e.to_string());
        // No handshake completes without a client certificate of the cluster CA: health and
        // metrics are on a port of their own (`server::serve_health`).
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(config)?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(config)?;
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            server: Arc::new(server),
            client: Arc::new(client),
            digest,
        })
    }
}
