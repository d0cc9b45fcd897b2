//! TLS for a client of the compute node's API (rustls through tonic): the CA to trust
//! the server with, the name to expect in its certificate (default: the host of the
//! address), and optionally the client's own certificate and key (mutual TLS).

use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The contents of a PEM file; the error names `what` and the path.
pub fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("reading the {what} {}: {e}", path.display()))
}

/// How a client reaches a TLS server.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// The CA (PEM) the server's certificate must chain to.
    pub ca: PathBuf,
    /// The name the server's certificate must carry (default: the address's host).
    pub domain: Option<String>,
    /// This client's certificate and key (PEM), for mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl ClientTls {
    /// tonic's client settings; `host` names the server when `domain` is not set.
    pub fn config(&self, host: &str) -> Result<ClientTlsConfig, String> {
        let mut c = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read_pem(&self.ca, "CA certificate")?))
            .domain_name(self.domain.clone().unwrap_or_else(|| host.to_string()));
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(
                read_pem(cert, "client certificate")?,
                read_pem(key, "client key")?,
            ));
        }
        Ok(c)
    }
}
