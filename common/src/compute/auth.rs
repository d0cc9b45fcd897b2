//! Client credentials: the tokens file format (one `name token` pair per line, `#`
//! comments; the server reads every line, a client the first), fresh tokens, and the
//! interceptor that puts a client's token on every call (`authorization: Bearer ...`).
//! The server's side (checking tokens and client certificates) is `compute-server`'s
//! `auth` module.

use tonic::{Request, Status};

/// Parses a tokens file's text.
pub fn parse_tokens(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(name), Some(token), None) => out.push((name.to_string(), token.to_string())),
            _ => return Err(format!("line {}: expected `name token`", i + 1)),
        }
    }
    Ok(out)
}

/// A fresh random token (32 hex digits of the OS's randomness).
pub fn random_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Adds a client token to every call (the client side).
#[derive(Clone, Default)]
pub struct Credentials {
    bearer: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Credentials {
    /// No token (a server with `insecure`, or one that takes client certificates).
    pub fn none() -> Credentials {
        Credentials::default()
    }

    pub fn token(token: &str) -> Result<Credentials, String> {
        let v = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| "a token must be printable ASCII".to_string())?;
        Ok(Credentials { bearer: Some(v) })
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.bearer {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}
