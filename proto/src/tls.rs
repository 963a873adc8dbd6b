//! The cluster CA, node certificates, and the rustls configurations every
//! QUIC endpoint uses.
//!
//! Identity model: each certificate carries its role as a DNS name
//! `<role>.role.tessera` in its subject alternative names. A client dials a
//! server under the name of the role it expects, so rustls itself checks that a
//! "chunkserver" really holds a chunkserver certificate; a server reads the
//! client's role from its verified certificate (see [`peer_role`]). Every
//! endpoint demands a certificate from the cluster CA: there is no anonymous
//! path. Invariant: TLS 1.3 only, ring provider only (two providers in one
//! process make rustls's default builders panic).

use crate::error::{Error, ErrorCode};
use crate::wire::ALPN_SUPPORTED;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

/// What a certificate allows its holder to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Meta,
    Chunk,
    Client,
    Gateway,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Meta, Role::Chunk, Role::Client, Role::Gateway];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Meta => "meta",
            Role::Chunk => "chunk",
            Role::Client => "client",
            Role::Gateway => "gateway",
        }
    }

    /// The DNS name that encodes this role in a certificate, and that a client
    /// dials when it expects a server of this role.
    pub fn dns_name(self) -> &'static str {
        match self {
            Role::Meta => "meta.role.tessera",
            Role::Chunk => "chunk.role.tessera",
            Role::Client => "client.role.tessera",
            Role::Gateway => "gateway.role.tessera",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(text: &str) -> Result<Role, Error> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::InvalidArgument,
                    format!("unknown role {text:?}; use meta, chunk, client or gateway"),
                )
            })
    }
}

/// Files of a CA directory.
pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
pub const CA_NAME_FILE: &str = "ca.name";
pub const TOKEN_KEY_FILE: &str = "token.key";

fn tls_error(context: &str, err: impl fmt::Display) -> Error {
    Error::new(ErrorCode::InvalidArgument, format!("{context}: {err}"))
}

fn write_private(path: &Path, contents: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|err| Error::io(&format!("create {}", path.display()), &err))?;
    file.write_all(contents.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|err| Error::io(&format!("write {}", path.display()), &err))
}

fn write_public(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents)
        .map_err(|err| Error::io(&format!("write {}", path.display()), &err))
}

fn current_year() -> i32 {
    let secs = crate::token::unix_now_ms() / 1000;
    1970 + (secs / 31_556_952) as i32
}

fn ca_params(ca_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, ca_name);
    dn.push(DnType::OrganizationName, "Tessera");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let year = current_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 30, 1, 1);
    params
}

/// Creates a cluster CA and token key in `dir`. Refuses to overwrite an
/// existing CA: replacing it would orphan every certificate already issued.
pub fn ca_init(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir)
        .map_err(|err| Error::io(&format!("create CA directory {}", dir.display()), &err))?;
    if dir.join(CA_KEY_FILE).exists() {
        return Err(Error::new(
            ErrorCode::AlreadyExists,
            format!(
                "a CA already exists in {}; issue certificates from it or pick another directory",
                dir.display()
            ),
        ));
    }
    let ca_name = format!("Tessera cluster CA {:016x}", rand::random::<u64>());
    let key = KeyPair::generate().map_err(|err| tls_error("generate CA key", err))?;
    let cert = ca_params(&ca_name)
        .self_signed(&key)
        .map_err(|err| tls_error("sign CA certificate", err))?;
    write_private(&dir.join(CA_KEY_FILE), &key.serialize_pem())?;
    write_public(&dir.join(CA_NAME_FILE), &ca_name)?;
    write_private(
        &dir.join(TOKEN_KEY_FILE),
        &crate::token::TokenKey::generate().to_hex(),
    )?;
    // The certificate goes last: its presence marks a complete CA directory.
    write_public(&dir.join(CA_CERT_FILE), &cert.pem())?;
    Ok(())
}

/// Node names become file names and DNS labels, so they are restricted to
/// what is safe as both.
pub fn validate_node_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::InvalidArgument,
            format!(
                "node name {name:?} must be 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'"
            ),
        ))
    }
}

/// Paths of an issued certificate and its key.
#[derive(Clone, Debug)]
pub struct IssuedPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Issues a certificate for `name` with `role`, signed by the CA in `dir`,
/// written as `<name>.crt` and `<name>.key` in `dir`.
pub fn ca_issue(dir: &Path, role: Role, name: &str) -> Result<IssuedPaths, Error> {
    validate_node_name(name)?;
    let read = |file: &str| {
        std::fs::read_to_string(dir.join(file)).map_err(|err| {
            Error::io(
                &format!(
                    "read {} (create the CA first with `tessera ca init --dir {}`)",
                    dir.join(file).display(),
                    dir.display()
                ),
                &err,
            )
        })
    };
    let ca_key =
        KeyPair::from_pem(&read(CA_KEY_FILE)?).map_err(|err| tls_error("parse CA key", err))?;
    let ca_name = read(CA_NAME_FILE)?;
    let ca_params = ca_params(ca_name.trim());
    let issuer = Issuer::from_params(&ca_params, &ca_key);

    let paths = IssuedPaths {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    if paths.cert.exists() || paths.key.exists() {
        return Err(Error::new(
            ErrorCode::AlreadyExists,
            format!(
                "{} already exists; pick another name or remove it first",
                paths.cert.display()
            ),
        ));
    }
    let mut params = CertificateParams::new(vec![
        role.dns_name().to_string(),
        format!("{name}.node.tessera"),
    ])
    .map_err(|err| tls_error("certificate names", err))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationalUnitName, role.as_str());
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let year = current_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    let key = KeyPair::generate().map_err(|err| tls_error("generate node key", err))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|err| tls_error("sign node certificate", err))?;
    write_private(&paths.key, &key.serialize_pem())?;
    write_public(&paths.cert, &cert.pem())?;
    Ok(paths)
}

/// A node's certificate, key and the CA it trusts.
#[derive(Debug)]
pub struct Identity {
    pub ca: CertificateDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Identity {
        Identity {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Loads PEM files: the CA certificate, this node's certificate, its key.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Identity, Error> {
        let pem_error = |path: &Path, err: rustls::pki_types::pem::Error| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!("read PEM from {}: {err}", path.display()),
            )
        };
        let ca_cert = CertificateDer::from_pem_file(ca).map_err(|err| pem_error(ca, err))?;
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|err| pem_error(cert, err))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| pem_error(cert, err))?;
        if chain.is_empty() {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("{} holds no certificate", cert.display()),
            ));
        }
        let private = PrivateKeyDer::from_pem_file(key).map_err(|err| pem_error(key, err))?;
        Ok(Identity {
            ca: ca_cert,
            chain,
            key: private,
        })
    }

    /// Loads `<name>.crt` and `<name>.key` with the CA from a CA directory.
    pub fn load_from_dir(dir: &Path, name: &str) -> Result<Identity, Error> {
        Identity::load(
            &dir.join(CA_CERT_FILE),
            &dir.join(format!("{name}.crt")),
            &dir.join(format!("{name}.key")),
        )
    }

    fn roots(&self) -> Result<RootCertStore, Error> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca.clone())
            .map_err(|err| tls_error("add CA certificate to trust roots", err))?;
        Ok(roots)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn alpn() -> Vec<Vec<u8>> {
    ALPN_SUPPORTED.iter().map(|p| p.to_vec()).collect()
}

/// The server half: demands a client certificate signed by the cluster CA.
pub fn server_crypto(identity: &Identity) -> Result<rustls::ServerConfig, Error> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(identity.roots()?), provider())
            .build()
            .map_err(|err| tls_error("build client certificate verifier", err))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| tls_error("TLS versions", err))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|err| tls_error("server certificate", err))?;
    config.alpn_protocols = alpn();
    Ok(config)
}

/// The client half: trusts only the cluster CA and presents our certificate.
pub fn client_crypto(identity: &Identity) -> Result<rustls::ClientConfig, Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| tls_error("TLS versions", err))?
        .with_root_certificates(identity.roots()?)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|err| tls_error("client certificate", err))?;
    config.alpn_protocols = alpn();
    Ok(config)
}

/// A client configuration that presents no certificate. Servers refuse it;
/// it exists so tests can prove that.
pub fn anonymous_client_crypto(
    ca: &CertificateDer<'static>,
) -> Result<rustls::ClientConfig, Error> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.clone())
        .map_err(|err| tls_error("add CA certificate to trust roots", err))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| tls_error("TLS versions", err))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn();
    Ok(config)
}

/// The role named in a verified end-entity certificate, if any. Called only
/// after rustls verified the chain, so the names can be trusted.
pub fn role_of_certificate(cert: &CertificateDer<'_>) -> Option<Role> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    Role::ALL.into_iter().find(|role| {
        ServerName::try_from(role.dns_name())
            .map(|name| parsed.verify_is_valid_for_subject_name(&name).is_ok())
            .unwrap_or(false)
    })
}

/// The role of the peer of an established connection.
pub fn peer_role(connection: &quinn::Connection) -> Option<Role> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    role_of_certificate(chain.first()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_their_role() {
        let dir = tempfile::tempdir().unwrap();
        ca_init(dir.path()).unwrap();
        for role in Role::ALL {
            let name = format!("n-{role}");
            ca_issue(dir.path(), role, &name).unwrap();
            let identity = Identity::load_from_dir(dir.path(), &name).unwrap();
            assert_eq!(role_of_certificate(&identity.chain[0]), Some(role));
        }
    }

    #[test]
    fn ca_init_and_issue_refuse_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        ca_init(dir.path()).unwrap();
        assert_eq!(
            ca_init(dir.path()).unwrap_err().code,
            ErrorCode::AlreadyExists
        );
        ca_issue(dir.path(), Role::Chunk, "c1").unwrap();
        assert_eq!(
            ca_issue(dir.path(), Role::Chunk, "c1").unwrap_err().code,
            ErrorCode::AlreadyExists
        );
    }

    #[test]
    fn bad_names_and_missing_ca_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["", "Upper", "a/b", "-x", "x-", "..", &"a".repeat(64)] {
            assert_eq!(
                validate_node_name(name).unwrap_err().code,
                ErrorCode::InvalidArgument
            );
        }
        let err = ca_issue(dir.path(), Role::Meta, "m1").unwrap_err();
        assert!(err.message.contains("tessera ca init"), "{err}");
        assert_eq!(
            "nope".parse::<Role>().unwrap_err().code,
            ErrorCode::InvalidArgument
        );
    }
}
