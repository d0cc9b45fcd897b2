//! The cluster key and the connection handshake.
//!
//! ```text
//! client                                   server
//!   HELLO(magic, version, batching, Nc) ->
//!                                        <- CHALLENGE(version, Ns, Ms = HMAC(K, "DSBF server" | Nc | Ns))
//!   check Ms
//!   AUTH(Mc = HMAC(K, "DSBF client" | Ns | Nc)) ->
//!                                           check Mc (constant time)
//!                                        <- WELCOME(conn id, regions) or REFUSED(reason)
//! ```
//!
//! Both sides prove the key over fresh 32-byte nonces, so a recorded handshake cannot be
//! replayed and a server without the key is detected by the client. A wrong magic or an
//! unsupported version is answered with REFUSED naming both versions.

use hmac::{Hmac, Mac as _};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;

use super::wire::{Mac, Nonce};

/// The shared secret of a cluster. Built from any key material (a key file's contents);
/// the material is hashed to 32 bytes.
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// Shortest accepted key material.
pub const MIN_KEY_BYTES: usize = 16;

impl ClusterKey {
    pub fn from_material(material: &[u8]) -> Result<ClusterKey, String> {
        if material.len() < MIN_KEY_BYTES {
            return Err(format!(
                "cluster key is {} bytes; at least {MIN_KEY_BYTES} are required",
                material.len()
            ));
        }
        Ok(ClusterKey(Sha256::digest(material).into()))
    }

    /// Reads a key file; surrounding whitespace is ignored so `echo secret > key` works.
    pub fn from_file(path: &Path) -> Result<ClusterKey, String> {
        let raw = std::fs::read(path)
            .map_err(|e| format!("cannot read cluster key file {}: {e}", path.display()))?;
        let trimmed = raw.trim_ascii();
        ClusterKey::from_material(trimmed).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// A random key, for embedded clusters and tests.
    pub fn random() -> ClusterKey {
        ClusterKey(rand::random())
    }

    fn mac(&self, label: &[u8], a: &[u8], b: &[u8]) -> Mac {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.0).expect("any key length");
        m.update(label);
        m.update(a);
        m.update(b);
        m.finalize().into_bytes().into()
    }

    pub fn server_mac(&self, client_nonce: &Nonce, server_nonce: &Nonce) -> Mac {
        self.mac(b"DSBF server", client_nonce, server_nonce)
    }

    pub fn client_mac(&self, server_nonce: &Nonce, client_nonce: &Nonce) -> Mac {
        self.mac(b"DSBF client", server_nonce, client_nonce)
    }

    /// Constant-time check of a peer's mac.
    pub fn verify(expected: &Mac, got: &Mac) -> bool {
        use subtle::ConstantTimeEq;
        expected.ct_eq(got).into()
    }
}

pub fn nonce() -> Nonce {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_depend_on_key_and_direction() {
        let k1 = ClusterKey::from_material(b"0123456789abcdef").unwrap();
        let k2 = ClusterKey::from_material(b"0123456789abcdeX").unwrap();
        let (a, b) = (nonce(), nonce());
        assert!(ClusterKey::verify(
            &k1.server_mac(&a, &b),
            &k1.server_mac(&a, &b)
        ));
        assert!(!ClusterKey::verify(
            &k1.server_mac(&a, &b),
            &k2.server_mac(&a, &b)
        ));
        assert_ne!(k1.server_mac(&a, &b), k1.client_mac(&b, &a));
        assert!(ClusterKey::from_material(b"short").is_err());
    }
}
