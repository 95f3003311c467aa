//! The agents' cluster CA and node certificates for the dev cluster and tests (in a real
//! cluster the Helm chart makes them): each agent gets its own key and a certificate naming
//! its node (DNS SAN) and the addresses peers dial (IP SANs), signed by one CA.

use std::net::IpAddr;
use std::path::Path;

/// A certificate authority kept in memory.
pub struct ClusterCa {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    pem: String,
}

fn err(e: impl std::fmt::Display) -> String {
    format!("certificate: {e}")
}

impl ClusterCa {
    /// A new CA with common name `name`.
    pub fn new(name: &str) -> Result<Self, String> {
        let key = rcgen::KeyPair::generate().map_err(err)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).map_err(err)?.pem();
        Ok(Self { params, key, pem })
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A key and a certificate (PEM) for `node`, valid for the node's name and `ips`, for
    /// both ends of a connection.
    pub fn issue(&self, node: &str, ips: &[IpAddr]) -> Result<(String, String), String> {
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let key = rcgen::KeyPair::generate().map_err(err)?;
        let mut p = rcgen::CertificateParams::new(vec![node.to_owned()]).map_err(err)?;
        for ip in ips {
            p.subject_alt_names.push(rcgen::SanType::IpAddress(*ip));
        }
        p.distinguished_name.push(rcgen::DnType::CommonName, node);
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &issuer).map_err(err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Writes what the agent of `node` reads from `--tls-dir`: `ca.crt`, `tls.crt` and
    /// `tls.key` (0600), the layout of a `kubernetes.io/tls` Secret with its CA.
    pub fn write_node_dir(&self, dir: &Path, node: &str, ips: &[IpAddr]) -> Result<(), String> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let (cert, key) = self.issue(node, ips)?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let write = |name: &str, text: &str, mode: u32| {
            let path = dir.join(name);
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&path)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .map_err(|e| format!("{}: {e}", path.display()))
        };
        write("ca.crt", &self.pem, 0o644)?;
        write("tls.crt", &cert, 0o644)?;
        write("tls.key", &key, 0o600)
    }
}
