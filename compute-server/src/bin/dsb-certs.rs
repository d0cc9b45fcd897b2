//! `dsb-certs`: credentials for a test or development cluster's client API.
//!
//! ```text
//! dsb-certs pki --dir certs [--hosts localhost,127.0.0.1] [--clients harness,ops]
//!     a local CA (ca.pem, ca.key), a server certificate for the hosts (server.pem,
//!     server.key) and one client certificate per name (client-NAME.pem/.key)
//! dsb-certs token --out client-tokens [--name harness]
//!     appends `NAME TOKEN` (a fresh 128-bit random token) to the tokens file (0600)
//!     and prints the token
//! ```

use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "dsb-certs",
    version,
    about = "Credentials for a test cluster's client API"
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A CA, a server certificate and client certificates (PEM).
    Pki {
        #[arg(long)]
        dir: PathBuf,
        /// DNS names or IP addresses the server certificate is for.
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
        hosts: Vec<String>,
        /// Client certificate names (mutual TLS).
        #[arg(long, value_delimiter = ',')]
        clients: Vec<String>,
    },
    /// Appends a client with a fresh random token to a tokens file.
    Token {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "client")]
        name: String,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let r = match args.cmd {
        Cmd::Pki {
            dir,
            hosts,
            clients,
        } => compute_server::tls::make_test_pki(&dir, &hosts, &clients).map(|()| {
            eprintln!(
                "wrote ca.pem, server.pem/.key and {} client certificate(s) to {}",
                clients.len(),
                dir.display()
            );
        }),
        Cmd::Token { out, name } => append_token(&out, &name),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dsb-certs: {e}");
            ExitCode::from(1)
        }
    }
}

fn append_token(out: &PathBuf, name: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let token = common::compute::auth::random_token();
    // Checked as the server will check it.
    compute_server::auth::ClientAuth::new(vec![(name.to_string(), token.clone())], false)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| format!("opening {}: {e}", out.display()))?;
    writeln!(f, "{name} {token}").map_err(|e| format!("writing {}: {e}", out.display()))?;
    println!("{token}");
    Ok(())
}
