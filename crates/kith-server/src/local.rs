//! How a `kith` command on the same machine reaches a running server.
//!
//! The server holds the data directory's lock, so commands that write (imports, manual merges)
//! cannot open it themselves. At start the server writes `kith.server` beside the lock: its
//! address and a random token, readable only by the user who owns the data directory. The token
//! is an admin credential for this run of the server only; whoever can read the file can read the
//! data directory anyway, so it grants nothing new on this machine. From any other it is refused
//! (see [`crate::auth::local_token_stays_local`]): a copy of the directory taken while the server
//! runs holds it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rand::RngCore;
use serde::{Deserialize, Serialize};

/// The address and token of the server that holds a data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalServer {
    /// `http://host:port`.
    pub url: String,
    pub token: String,
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("kith.server")
}

/// A new token: `kith_local_` and 40 hex digits.
pub fn new_token() -> String {
    let mut random = [0u8; 20];
    rand::rng().fill_bytes(&mut random);
    format!("kith_local_{}", hex::encode(random))
}

/// Writes the file for a server listening on `addr` (owner-only permissions).
pub fn publish(data_dir: &Path, addr: SocketAddr, token: &str) -> std::io::Result<()> {
    let host = if addr.ip().is_unspecified() {
        // A server on 0.0.0.0 or [::] is reachable on loopback.
        match addr {
            SocketAddr::V4(_) => format!("127.0.0.1:{}", addr.port()),
            SocketAddr::V6(_) => format!("[::1]:{}", addr.port()),
        }
    } else {
        addr.to_string()
    };
    let server = LocalServer {
        url: format!("http://{host}"),
        token: token.to_string(),
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path(data_dir))?;
    file.write_all(
        serde_json::to_string(&server)
            .unwrap_or_default()
            .as_bytes(),
    )
}

/// Removes the file (at shutdown).
pub fn withdraw(data_dir: &Path) {
    let _ = std::fs::remove_file(path(data_dir));
}

/// The server holding `data_dir`, if the file is there and readable.
pub fn find(data_dir: &Path) -> Option<LocalServer> {
    let text = std::fs::read_to_string(path(data_dir)).ok()?;
    serde_json::from_str(&text).ok()
}
