//! TLS for the client API (rustls through tonic): the server's and the client's
//! settings from PEM files, and a local certificate authority for test clusters
//! ([`make_test_pki`], the `dsb-certs` binary).
//!
//! * Server: its certificate chain and key; with a client CA, clients may present a
//!   certificate that CA signed (mutual TLS), which then authenticates them
//!   ([`crate::auth`]). Required when the server has no client tokens; optional
//!   beside tokens.
//! * Client: the CA to trust the server with, the name to expect in the server's
//!   certificate (default: the host of the address), and optionally its own
//!   certificate and key.

use std::path::Path;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use common::compute::tls::read_pem as read;

/// The server side: `cert` and `key` (PEM); `client_ca` (PEM) accepts client
/// certificates it signed, required unless `tokens_too` (token clients need none).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    tokens_too: bool,
) -> Result<ServerTlsConfig, String> {
    let identity = Identity::from_pem(read(cert, "TLS certificate")?, read(key, "TLS key")?);
    let mut c = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = client_ca {
        c = c
            .client_ca_root(Certificate::from_pem(read(ca, "client CA")?))
            .client_auth_optional(tokens_too);
    }
    Ok(c)
}

/// Writes a fresh CA (`ca.pem`, `ca.key`), a server certificate for `hosts` (DNS
/// names or IP addresses; `server.pem`, `server.key`) and one client certificate per
/// name in `clients` (`client-NAME.pem`, `client-NAME.key`) into `dir`. For test and
/// development clusters: keys are written unencrypted, readable by the owner only.
pub fn make_test_pki(dir: &Path, hosts: &[String], clients: &[String]) -> Result<(), String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let err = |e: rcgen::Error| format!("making certificates: {e}");
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let write = |name: &str, text: &str, secret: bool| -> Result<(), String> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        if secret {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("chmod {}: {e}", path.display()))?;
        }
        Ok(())
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "dsb test cluster CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca = ca_params.self_signed(&ca_key).map_err(err)?;
    write("ca.pem", &ca.pem(), false)?;
    write("ca.key", &ca_key.serialize_pem(), true)?;
    let leaf = |sans: Vec<String>, cn: &str, base: &str| -> Result<(), String> {
        let mut p = CertificateParams::new(sans).map_err(err)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().map_err(err)?;
        let cert = p.signed_by(&key, &ca, &ca_key).map_err(err)?;
        write(&format!("{base}.pem"), &cert.pem(), false)?;
        write(&format!("{base}.key"), &key.serialize_pem(), true)
    };
    if hosts.is_empty() {
        return Err("a server certificate needs at least one host name or address".into());
    }
    leaf(hosts.to_vec(), &hosts[0], "server")?;
    for c in clients {
        if c.is_empty() || !c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-') {
            return Err(format!("client name {c:?}: letters, digits and '-' only"));
        }
        // A client certificate names the client; its SAN is a DNS-style name.
        leaf(vec![format!("{c}.client")], c, &format!("client-{c}"))?;
    }
    Ok(())
}
