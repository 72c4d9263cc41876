//! TLS for the client listener: rustls (via pingora), TLS 1.2 and 1.3 only, ALPN h2 and
//! http/1.1. Certificates are checked before pingora sees them, so a missing or broken file
//! is a clear error at start-up and never a panic inside the TLS stack.
//!
//! For development, [`ensure_dev_cert`] makes a local CA (`ca.crt`) and a `localhost`
//! certificate signed by it, so that `curl --cacert certs/ca.crt https://localhost:8443/…`
//! works without disabling verification.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use pingora::listeners::tls::TlsSettings;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// What [`ensure_dev_cert`] did.
pub enum DevCert {
    /// Both files were there; nothing was made.
    Existing,
    /// A certificate was made; clients should trust `ca`.
    Generated { ca: PathBuf },
}

/// Makes a development CA and server certificate where `cert` and `key` are both missing.
pub fn ensure_dev_cert(cert: &Path, key: &Path) -> Result<DevCert, String> {
    if cert.exists() && key.exists() {
        return Ok(DevCert::Existing);
    }
    let dir = cert
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let ca_cert_path = dir.join("ca.crt");
    let ca_key_path = dir.join("ca.key");

    let (year, _) = current_year_and_day();
    // Reuse an existing development CA so that clients that already trust it keep working.
    let (issuer, new_ca) = if ca_cert_path.exists() && ca_key_path.exists() {
        let key_pem =
            std::fs::read_to_string(&ca_key_path).map_err(|e| format!("{}: {e}", ca_key_path.display()))?;
        let cert_pem =
            std::fs::read_to_string(&ca_cert_path).map_err(|e| format!("{}: {e}", ca_cert_path.display()))?;
        let ca_key = KeyPair::from_pem(&key_pem).map_err(|e| format!("{}: {e}", ca_key_path.display()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, ca_key)
            .map_err(|e| format!("{}: {e}", ca_cert_path.display()))?;
        (issuer, None)
    } else {
        let ca_key = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "ML gateway development CA");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "ML gateway (development only)");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
        params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
        let ca_cert = params.self_signed(&ca_key).map_err(|e| e.to_string())?;
        let files = (ca_cert.pem(), ca_key.serialize_pem());
        (Issuer::new(params, ca_key), Some(files))
    };

    let server_key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).map_err(|e| e.to_string())?;
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("literal")));
    params
        .subject_alt_names
        .push(SanType::IpAddress("::1".parse().expect("literal")));
    params.distinguished_name.push(DnType::CommonName, "localhost");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // Browsers and curl accept at most ~13 months for a leaf; a year keeps it simple.
    params.not_before = rcgen::date_time_ymd(year - 1, 12, 1);
    params.not_after = rcgen::date_time_ymd(year + 1, 1, 1);
    let server_cert = params
        .signed_by(&server_key, &issuer)
        .map_err(|e| e.to_string())?;

    if let Some((cert_pem, key_pem)) = new_ca {
        write_file(&ca_cert_path, cert_pem.as_bytes(), 0o644)?;
        write_file(&ca_key_path, key_pem.as_bytes(), 0o600)?;
    }
    write_file(cert, server_cert.pem().as_bytes(), 0o644)?;
    write_file(key, server_key.serialize_pem().as_bytes(), 0o600)?;
    Ok(DevCert::Generated { ca: ca_cert_path })
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = options
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(bytes)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn current_year_and_day() -> (i32, u32) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    // Average Gregorian year: accurate to within a day, which is all validity dates need.
    let year = 1970 + (days as f64 / 365.2425) as i32;
    (year, (days % 365) as u32)
}

/// Loads a certificate chain and its private key and checks that they belong together:
/// the same checks rustls makes, made here so that a broken file is a clear error (at start or
/// on reload) and never a panic inside pingora.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let cert_s = cert.to_string_lossy().to_string();
    let key_s = key.to_string_lossy().to_string();
    let loaded = pingora::tls::load_certs_and_key_files(&cert_s, &key_s).map_err(|e| {
        format!(
            "cannot load TLS certificate {} / key {}: {e}",
            cert.display(),
            key.display()
        )
    })?;
    let Some((certs, private_key)) = loaded else {
        return Err(format!(
            "no certificate in {} or no private key in {} (PEM expected)",
            cert.display(),
            key.display()
        ));
    };
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&private_key)
        .map_err(|e| format!("TLS key {}: {e}", key.display()))?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified.keys_match().map_err(|e| {
        format!(
            "TLS certificate {} and key {} do not work together: {e}",
            cert.display(),
            key.display()
        )
    })?;
    Ok(Arc::new(certified))
}

/// The client listener's certificate, swappable while the listener runs: a reload puts the
/// new one in place for the next handshake; connections already open keep theirs.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    pub fn new(key: Arc<CertifiedKey>) -> Arc<CertResolver> {
        Arc::new(CertResolver {
            current: ArcSwap::new(key),
        })
    }

    pub fn set(&self, key: Arc<CertifiedKey>) {
        self.current.store(key);
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The listener's TLS settings (TLS 1.2 + 1.3, ALPN h2 then http/1.1), serving whatever
/// certificate `resolver` holds.
pub fn settings(resolver: Arc<CertResolver>) -> Result<TlsSettings, String> {
    // With a resolver set, pingora ignores the (empty) file paths.
    let mut settings = TlsSettings::intermediate("", "").map_err(|e| e.to_string())?;
    settings.set_cert_resolver(resolver);
    settings.enable_h2();
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certificates_are_made_once_and_load() {
        let dir = std::env::temp_dir().join(format!("gw-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
        assert!(matches!(
            ensure_dev_cert(&cert, &key).unwrap(),
            DevCert::Generated { .. }
        ));
        assert!(dir.join("ca.crt").exists());
        assert!(matches!(ensure_dev_cert(&cert, &key).unwrap(), DevCert::Existing));
        load_certified_key(&cert, &key).unwrap();
        // A server certificate made again reuses the CA.
        let ca = std::fs::read(dir.join("ca.crt")).unwrap();
        std::fs::remove_file(&cert).unwrap();
        std::fs::remove_file(&key).unwrap();
        ensure_dev_cert(&cert, &key).unwrap();
        assert_eq!(std::fs::read(dir.join("ca.crt")).unwrap(), ca);
    }

    #[test]
    fn broken_files_are_errors_not_panics() {
        let dir = std::env::temp_dir().join(format!("gw-tls-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bad.crt"), "not a certificate").unwrap();
        std::fs::write(dir.join("bad.key"), "not a key").unwrap();
        let err = load_certified_key(&dir.join("bad.crt"), &dir.join("bad.key"))
            .err()
            .unwrap();
        assert!(err.contains("bad.crt"), "{err}");
        let err = load_certified_key(&dir.join("missing.crt"), &dir.join("missing.key"))
            .err()
            .unwrap();
        assert!(err.contains("missing.crt"), "{err}");
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused_and_a_resolver_swaps() {
        let dir = std::env::temp_dir().join(format!("gw-tls-pair-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (a_crt, a_key) = (dir.join("a/server.crt"), dir.join("a/server.key"));
        let (b_crt, b_key) = (dir.join("b/server.crt"), dir.join("b/server.key"));
        ensure_dev_cert(&a_crt, &a_key).unwrap();
        ensure_dev_cert(&b_crt, &b_key).unwrap();
        let err = load_certified_key(&a_crt, &b_key).err().unwrap();
        assert!(err.contains("do not work together"), "{err}");

        let a = load_certified_key(&a_crt, &a_key).unwrap();
        let b = load_certified_key(&b_crt, &b_key).unwrap();
        let resolver = CertResolver::new(a.clone());
        assert!(Arc::ptr_eq(&resolver.current.load_full(), &a));
        resolver.set(b.clone());
        assert!(Arc::ptr_eq(&resolver.current.load_full(), &b));
    }
}
