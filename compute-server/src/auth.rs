//! Who may call the compute node's gRPC API.
//!
//! Every call is authenticated before a handler sees it (a tonic interceptor,
//! [`AuthInterceptor`]), by one of:
//!
//! * a **client token**: metadata `authorization: Bearer <token>`, compared in constant
//!   time with every token of the server's tokens file (one `name token` pair per line,
//!   `#` comments; several lines so a token can be rotated: add the new one, move the
//!   clients, remove the old one). The client's name is the line's name;
//! * a **client certificate** (mutual TLS, when the server has a client CA): the TLS
//!   layer verified it against that CA; the client's name is `cert:` and the first 16
//!   hex digits of the SHA-256 of the leaf certificate.
//!
//! A call with neither, or with a token no line has, is answered `UNAUTHENTICATED`
//! ("missing or unknown client credentials") and touches nothing. Failures are counted
//! ([`ClientAuth::failures`], in `ClusterStatus` and the metrics) and logged at most once
//! a second with the count since the last line. `insecure` (for local development
//! only, logged loudly at start) lets every call in as the client `insecure`.
//!
//! The client's name ([`ClientId`]) is put in the request's extensions; sessions are
//! bound to it ([`crate::service`]).

// tonic's interceptors and handlers answer `Status` by value (as `crate::service` does).
#![allow(clippy::result_large_err)]

use common::compute::auth::parse_tokens;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// The shortest token accepted in a tokens file.
pub const MIN_TOKEN_LEN: usize = 16;

/// An authenticated client's name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientId(pub Arc<str>);

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The server's credentials check.
pub struct ClientAuth {
    insecure: bool,
    /// (client name, token).
    tokens: Vec<(ClientId, Vec<u8>)>,
    /// A verified client certificate authenticates (the TLS layer checked it).
    client_certs: bool,
    failures: AtomicU64,
    /// When the last failure line was logged, and failures since.
    log: Mutex<(Option<Instant>, u64)>,
}

impl ClientAuth {
    /// Lets every call in (local development only).
    pub fn insecure() -> ClientAuth {
        ClientAuth {
            insecure: true,
            tokens: Vec::new(),
            client_certs: false,
            failures: AtomicU64::new(0),
            log: Mutex::new((None, 0)),
        }
    }

    /// Tokens (`(name, token)` pairs) and, with `client_certs`, verified client
    /// certificates. Refuses a configuration that would let nobody in, and tokens that
    /// are short or shared by two names.
    pub fn new(tokens: Vec<(String, String)>, client_certs: bool) -> Result<ClientAuth, String> {
        if tokens.is_empty() && !client_certs {
            return Err("no client credentials: give tokens or a client CA".into());
        }
        let mut out: Vec<(ClientId, Vec<u8>)> = Vec::new();
        for (name, token) in tokens {
            if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_graphic()) {
                return Err(format!(
                    "client name {name:?}: 1 to 64 printable ASCII characters"
                ));
            }
            if name.starts_with("cert:") || name == "insecure" {
                return Err(format!("client name {name:?} is reserved"));
            }
            if token.len() < MIN_TOKEN_LEN {
                return Err(format!(
                    "the token of client {name:?} has {} characters, fewer than {MIN_TOKEN_LEN}",
                    token.len()
                ));
            }
            if out.iter().any(|(_, t)| t.as_slice() == token.as_bytes()) {
                return Err(format!("the token of client {name:?} is used twice"));
            }
            out.push((ClientId(name.into()), token.into_bytes()));
        }
        Ok(ClientAuth {
            insecure: false,
            tokens: out,
            client_certs,
            failures: AtomicU64::new(0),
            log: Mutex::new((None, 0)),
        })
    }

    /// Reads a tokens file: `name token` per line, `#` comments, blank lines ignored.
    pub fn read_tokens_file(path: &Path) -> Result<Vec<(String, String)>, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading the tokens file {}: {e}", path.display()))?;
        parse_tokens(&text).map_err(|e| format!("tokens file {}: {e}", path.display()))
    }

    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// Calls refused so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The client `req` comes from, or UNAUTHENTICATED.
    pub fn check<T>(&self, req: &Request<T>) -> Result<ClientId, Status> {
        if self.insecure {
            return Ok(ClientId("insecure".into()));
        }
        if let Some(v) = req.metadata().get("authorization") {
            if let Some(token) = v
                .to_str()
                .ok()
                .and_then(|s| s.strip_prefix("Bearer "))
                .map(str::trim)
            {
                // Constant time per token, and every token is compared.
                let mut found: Option<&ClientId> = None;
                for (name, t) in &self.tokens {
                    if bool::from(t.as_slice().ct_eq(token.as_bytes())) {
                        found = Some(name);
                    }
                }
                if let Some(name) = found {
                    return Ok(name.clone());
                }
            }
            return Err(self.refuse("unknown client token"));
        }
        if self.client_certs {
            if let Some(certs) = req.peer_certs() {
                if let Some(leaf) = certs.first() {
                    let digest = Sha256::digest(leaf.as_ref());
                    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
                    return Ok(ClientId(format!("cert:{hex}").into()));
                }
            }
        }
        Err(self.refuse("no client credentials"))
    }

    fn refuse(&self, why: &str) -> Status {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut log = self.log.lock();
        log.1 += 1;
        let now = Instant::now();
        if log
            .0
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            tracing::warn!(
                refused = log.1,
                total = self.failures(),
                "unauthenticated gRPC calls refused ({why})"
            );
            *log = (Some(now), 0);
        }
        Status::unauthenticated(
            "missing or unknown client credentials (a client token as `authorization: \
             Bearer <token>`, or a client certificate the server's client CA signed)",
        )
    }
}

/// The tonic interceptor: authenticates, then files the [`ClientId`] in the request's
/// extensions.
#[derive(Clone)]
pub struct AuthInterceptor(pub Arc<ClientAuth>);

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let id = self.0.check(&req)?;
        req.extensions_mut().insert(id);
        Ok(req)
    }
}

/// The client a handler's request was authenticated as (UNAUTHENTICATED if the
/// service runs without the interceptor, which never happens in `serve`).
pub fn client_of<T>(req: &Request<T>) -> Result<ClientId, Status> {
    req.extensions()
        .get::<ClientId>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("the call was not authenticated"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::compute::auth::random_token;

    fn req(auth: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.parse().unwrap());
        }
        r
    }

    #[test]
    fn tokens_let_their_clients_in_and_nobody_else() {
        let a = ClientAuth::new(
            vec![
                ("alice".into(), "0123456789abcdef0".into()),
                ("bob".into(), "fedcba98765432100".into()),
            ],
            false,
        )
        .unwrap();
        assert_eq!(
            a.check(&req(Some("Bearer 0123456789abcdef0"))).unwrap(),
            ClientId("alice".into())
        );
        assert_eq!(
            a.check(&req(Some("Bearer fedcba98765432100")))
                .unwrap()
                .0
                .as_ref(),
            "bob"
        );
        for bad in [
            None,
            Some("Bearer nope"),
            Some("0123456789abcdef0"),
            Some("Bearer "),
        ] {
            let e = a.check(&req(bad)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
        assert_eq!(a.failures(), 4);
        assert!(ClientAuth::insecure().check(&req(None)).is_ok());
    }

    #[test]
    fn bad_token_files_are_refused_with_the_reason() {
        let err = |t: Vec<(String, String)>| ClientAuth::new(t, false).err().unwrap();
        assert!(ClientAuth::new(vec![], false).is_err());
        assert!(err(vec![("a".into(), "short".into())]).contains("fewer than"));
        let twice = vec![
            ("a".into(), "0123456789abcdef0".into()),
            ("b".into(), "0123456789abcdef0".into()),
        ];
        assert!(err(twice).contains("twice"));
        assert!(
            ClientAuth::new(vec![("cert:x".into(), "0123456789abcdef0".into())], false).is_err()
        );
        assert_eq!(
            parse_tokens("# c\n\nalice  tok1\nbob tok2\n").unwrap(),
            vec![
                ("alice".into(), "tok1".into()),
                ("bob".into(), "tok2".into())
            ]
        );
        assert!(parse_tokens("alice\n").unwrap_err().contains("line 1"));
        assert!(parse_tokens("a b c\n").is_err());
        assert_eq!(random_token().len(), 32);
        assert_ne!(random_token(), random_token());
    }
}
