//! Service configuration files: TOML into a `serde` struct, with errors that name the
//! file and the key.
//!
//! Each service defines one config struct with `#[serde(default, deny_unknown_fields)]`
//! and a doc comment per key; a CLI flag overrides the file's value. A typo'd key is an
//! error, not a silently ignored line.

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

/// Loads `path` (or the defaults when `None`).
pub fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, ConfigError> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// A service's configuration struct: TOML keys with defaults, checked once by
/// [`ServiceConfig::validate`] after the command line's overrides.
pub trait ServiceConfig: DeserializeOwned + Default {
    /// Checks what the types cannot; errors name the key.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// How the three service binaries read their configuration: `path`'s file (or the
/// defaults), then `apply` (the command line's overrides), then one validation. On an
/// error it prints `<binary>: <error>` (naming the config file) to stderr and answers
/// the exit code 2, for `main` to return.
pub fn load_or_exit<C: ServiceConfig>(
    binary: &str,
    path: Option<&Path>,
    apply: impl FnOnce(&mut C),
) -> Result<C, std::process::ExitCode> {
    let fail = |e: &ConfigError| {
        let where_ = match (e, path) {
            (ConfigError::Invalid(_), Some(p)) => format!(" (config file {})", p.display()),
            _ => String::new(),
        };
        tracing::error!("{e}{where_}");
        eprintln!("{binary}: {e}{where_}");
        std::process::ExitCode::from(2)
    };
    let mut cfg: C = load(path).map_err(|e| fail(&e))?;
    apply(&mut cfg);
    cfg.validate().map_err(|e| fail(&e))?;
    Ok(cfg)
}

/// Parses TOML text; `path` is only used in error messages.
pub fn parse<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().replace('\n', " "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Example {
        listen: String,
        frames: u64,
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let e = parse::<Example>("listn = \"x\"", Path::new("/etc/x.toml")).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("/etc/x.toml") && m.contains("listn"), "{m}");
        let e = parse::<Example>("frames = \"many\"", Path::new("a.toml")).unwrap_err();
        assert!(e.to_string().contains("frames"), "{e}");
        let ok: Example = parse("frames = 3", Path::new("a.toml")).unwrap();
        assert_eq!(ok.frames, 3);
        assert!(ok.listen.is_empty());
    }
}
