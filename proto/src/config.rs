//! Daemon configuration: a TOML file, then `--set key=value` overrides.
//!
//! Every field of every daemon's configuration can be overridden from the
//! command line by its dotted path (`--set transport.connections_per_peer=4`),
//! so flags can never drift out of step with the file format. Unknown keys
//! are errors: a typo must not silently fall back to a default.

use crate::error::{Error, ErrorCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;

fn invalid(message: String) -> Error {
    Error::new(ErrorCode::InvalidArgument, message)
}

/// Loads `T` from an optional TOML file with overrides applied in order.
///
/// Keys that `T` does not use are refused. This is checked by serializing the
/// result back and comparing key sets, rather than with serde's
/// `deny_unknown_fields`, because daemon configurations flatten the shared
/// [`NodeConfig`] into their own and serde cannot combine the two.
pub fn load<T: DeserializeOwned + Serialize>(
    path: Option<&Path>,
    overrides: &[String],
) -> Result<T, Error> {
    let mut table = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|err| Error::io(&format!("read config {}", path.display()), &err))?;
            text.parse::<toml::Table>()
                .map_err(|err| invalid(format!("parse config {}: {err}", path.display())))?
        }
        None => toml::Table::new(),
    };
    for item in overrides {
        apply_override(&mut table, item)?;
    }
    let source = path
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "flags".to_string());
    let config = T::deserialize(toml::Value::Table(table.clone()))
        .map_err(|err| invalid(format!("config from {source}: {err}")))?;
    let used = toml::Value::try_from(&config)
        .map_err(|err| Error::internal(format!("re-encode config: {err}")))?;
    if let Some(unknown) = first_unknown_key(&toml::Value::Table(table), &used, "") {
        return Err(invalid(format!(
            "config from {source}: unknown key {unknown:?}; see deploy/ for the documented keys"
        )));
    }
    Ok(config)
}

fn first_unknown_key(given: &toml::Value, used: &toml::Value, prefix: &str) -> Option<String> {
    match (given, used) {
        (toml::Value::Table(given), toml::Value::Table(used)) => {
            for (key, value) in given {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                match used.get(key) {
                    None => return Some(path),
                    Some(inner) => {
                        if let Some(found) = first_unknown_key(value, inner, &path) {
                            return Some(found);
                        }
                    }
                }
            }
            None
        }
        (toml::Value::Array(given), toml::Value::Array(used)) => given
            .iter()
            .zip(used)
            .enumerate()
            .find_map(|(i, (g, u))| first_unknown_key(g, u, &format!("{prefix}[{i}]"))),
        _ => None,
    }
}

/// Applies one `dotted.key=value` override. The value is read as TOML (so
/// numbers, booleans, arrays and quoted strings work) and as a bare string
/// when it is not valid TOML.
pub fn apply_override(table: &mut toml::Table, item: &str) -> Result<(), Error> {
    let Some((key, raw)) = item.split_once('=') else {
        return Err(invalid(format!(
            "override {item:?} must look like key=value"
        )));
    };
    let path: Vec<&str> = key.trim().split('.').collect();
    if path.iter().any(|segment| segment.is_empty()) {
        return Err(invalid(format!(
            "override key {key:?} has an empty segment"
        )));
    }
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let (last, parents) = path
        .split_last()
        .ok_or_else(|| invalid("empty override key".to_string()))?;
    let mut current = table;
    for segment in parents {
        let entry = current
            .entry(segment.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| invalid(format!("override {key:?}: {segment} is not a table")))?;
    }
    current.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, serde::Serialize, Debug, PartialEq, Default)]
    #[serde(default)]
    struct Inner {
        port: u16,
        names: Vec<String>,
    }

    #[derive(Deserialize, serde::Serialize, Debug, PartialEq, Default)]
    #[serde(default)]
    struct Sample {
        listen: String,
        verbose: bool,
        inner: Inner,
    }

    #[derive(Deserialize, serde::Serialize, Debug, PartialEq, Default)]
    struct Flattened {
        #[serde(flatten)]
        sample: Sample,
        #[serde(default)]
        extra: u32,
    }

    #[test]
    fn unknown_keys_are_caught_through_flatten() {
        let ok: Flattened = load(None, &["extra=3".into(), "inner.port=2".into()]).unwrap();
        assert_eq!((ok.extra, ok.sample.inner.port), (3, 2));
        let err = load::<Flattened>(None, &["inner.prot=2".into()]).unwrap_err();
        assert!(err.message.contains("inner.prot"), "{err}");
        let err = load::<Flattened>(None, &["extar=2".into()]).unwrap_err();
        assert!(err.message.contains("extar"), "{err}");
    }

    #[test]
    fn file_then_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "listen = \"a\"\n[inner]\nport = 1\n").unwrap();
        let loaded: Sample = load(
            Some(&path),
            &[
                "inner.port=7".to_string(),
                "listen=127.0.0.1:9000".to_string(),
                "verbose=true".to_string(),
                "inner.names=[\"x\", \"y\"]".to_string(),
            ],
        )
        .unwrap();
        assert_eq!(
            loaded,
            Sample {
                listen: "127.0.0.1:9000".into(),
                verbose: true,
                inner: Inner {
                    port: 7,
                    names: vec!["x".into(), "y".into()]
                },
            }
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let err = load::<Sample>(None, &["nope=1".to_string()]).unwrap_err();
        assert!(err.message.contains("nope"), "{err}");
        let err = load::<Sample>(None, &["inner.port=x".to_string()]).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        let err = load::<Sample>(None, &["novalue".to_string()]).unwrap_err();
        assert!(err.message.contains("key=value"), "{err}");
        let err =
            load::<Sample>(None, &["listen.x=1".to_string(), "listen=1".to_string()]).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        let err = load::<Sample>(Some(Path::new("/nonexistent/c.toml")), &[]).unwrap_err();
        assert!(err.message.contains("/nonexistent/c.toml"), "{err}");
    }
}

/// Where a daemon finds its certificate, key and the cluster CA.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl TlsFiles {
    pub fn load(&self) -> Result<crate::tls::Identity, Error> {
        crate::tls::Identity::load(&self.ca, &self.cert, &self.key)
    }

    /// Loads the identity and refuses a certificate issued for another role,
    /// so a daemon started with the wrong files says so at start-up rather
    /// than being refused by every peer.
    pub fn load_for(&self, role: crate::tls::Role) -> Result<crate::tls::Identity, Error> {
        let identity = self.load()?;
        let actual = identity
            .chain
            .first()
            .and_then(crate::tls::role_of_certificate);
        if actual != Some(role) {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "{} is not a {role} certificate; issue one with `tessera ca issue --role {role}`",
                    self.cert.display()
                ),
            ));
        }
        Ok(identity)
    }
}

/// Logging settings; flags override them.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A level or a RUST_LOG-style filter; `RUST_LOG`, then `info`, when unset.
    pub level: Option<String>,
    /// One JSON object per line instead of human-readable lines.
    pub json: bool,
}

impl NodeConfig {
    /// Where the daemon's own outgoing QUIC endpoint binds: any address of
    /// the listen address's family.
    pub fn client_bind_addr(&self) -> std::net::SocketAddr {
        if self.listen.is_ipv4() {
            std::net::SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            std::net::SocketAddr::from(([0u16; 8], 0))
        }
    }
}

/// The part every daemon's configuration shares, flattened into it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeConfig {
    /// The node's name, as on its certificate.
    pub name: String,
    /// QUIC listen address.
    pub listen: std::net::SocketAddr,
    /// Prometheus endpoint (`/metrics`, and a metaserver's status page at
    /// `/`); none when unset.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// A file holding the token requests to `metrics_listen` must carry
    /// (`Authorization: Bearer TOKEN`). Required when the listener is not
    /// on loopback.
    #[serde(default)]
    pub metrics_token_file: Option<std::path::PathBuf>,
    pub tls: TlsFiles,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub transport: crate::rpc::TransportOptions,
}

/// What a client (the CLI, a mount, the gateway) needs to reach a cluster;
/// `tessera dev` and `deploy/local-cluster.sh` write it as `client.toml`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClientConfig {
    /// Metaserver addresses (host:port); any member will do.
    pub meta: Vec<String>,
    pub tls: TlsFiles,
    #[serde(default)]
    pub transport: crate::rpc::TransportOptions,
    #[serde(default)]
    pub io: IoOptions,
}

/// How a client moves file data and how long it waits for servers, as
/// `[io]` in `client.toml`. The metadata call timeouts sit here beside the
/// data timeouts rather than at the top level, so a configuration built in
/// code with `io: Default::default()` picks them up without naming them.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IoOptions {
    /// Bytes one open file may hold on their way to chunkservers; a writer
    /// that gets further ahead waits.
    pub write_buffer_bytes: u64,
    /// Bytes a sequential reader fetches ahead of the application.
    pub readahead_bytes: u64,
    /// A chunkserver that takes no bytes for this long during a write is
    /// given up on for that chunk.
    pub stall_timeout_ms: u64,
    /// A read of one piece range that takes longer goes to another replica
    /// or to parity.
    pub read_timeout_ms: u64,
    /// Longest one metaserver may take over one attempt of a metadata call
    /// before the attempt is given up and the member asked again. Members
    /// are asked in parallel when no leader is known, so a dead one does not
    /// hold a call up while another answers; `meta_call_deadline_ms` cuts
    /// every attempt short regardless.
    pub meta_attempt_timeout_ms: u64,
    /// Longest one metadata call keeps trying, across dead members, redirects
    /// and elections, before it fails. Bounds every attempt.
    pub meta_call_deadline_ms: u64,
    /// Files whose every byte lies below this offset are written into the
    /// metaservers (inline) rather than to chunks: one Raft entry instead
    /// of an allocation, the pieces' seals and a commit. 0 turns it off;
    /// at most 32 KiB (`meta::INLINE_MAX_BYTES`) is used. The bytes live
    /// in every voter's RocksDB, so a larger limit trades metaserver disk
    /// for speed (docs/posix.md).
    pub inline_max_bytes: u64,
    /// Whether closing a file also waits for its bytes to be fsynced on
    /// every server holding them (as `fsync` does), rather than leaving that
    /// to the chunkservers' flusher within their `sync_interval_ms`.
    pub sync_on_close: bool,
}

impl Default for IoOptions {
    fn default() -> IoOptions {
        IoOptions {
            write_buffer_bytes: 8 * 1024 * 1024,
            readahead_bytes: 64 * 1024 * 1024,
            stall_timeout_ms: 10_000,
            read_timeout_ms: 10_000,
            meta_attempt_timeout_ms: 5_000,
            meta_call_deadline_ms: 30_000,
            inline_max_bytes: 16 * 1024,
            sync_on_close: false,
        }
    }
}
