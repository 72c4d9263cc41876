//! API keys: generated here, shown once, stored only as SHA-256 digests with a tenant and a
//! tier. The keys file holds no secret: a leaked file does not give anyone a working key.
//!
//! ```yaml
//! keys:
//!   - id: key_5f2c9a1b        # first 8 hex of the digest: safe to log and to show
//!     sha256: 5f2c9a1b…        # hex digest of the key
//!     tenant: dev
//!     tier: default            # a name under rate_limits.tiers, or "default"
//!     disabled: false          # a disabled key is refused with 403
//! ```

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Errors, Path as YamlPath, yaml_error};

/// Every key starts with this, so that a leaked key is recognisable by secret scanners.
pub const KEY_PREFIX: &str = "gwk_";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: String,
    sha256: String,
    tenant: String,
    #[serde(default = "default_tier")]
    tier: String,
    #[serde(default)]
    disabled: bool,
}

fn default_tier() -> String {
    "default".into()
}

/// What a key grants. The key itself is never kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// `key_` + the digest's first 8 hex digits: names the key in logs without revealing it.
    pub id: String,
    pub tenant: String,
    pub tier: String,
    pub disabled: bool,
    digest: [u8; 32],
}

impl KeyInfo {
    /// The key's SHA-256: what rate limits and sticky routing key on.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }
}

/// The outcome of presenting a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Valid(Arc<KeyInfo>),
    Disabled(Arc<KeyInfo>),
    Unknown,
}

#[derive(Debug, Clone, Default)]
pub struct KeyStore {
    /// Hashed with foldhash (seeded per process) rather than SipHash: every request looks a
    /// digest up, and SHA-256 digests are spread evenly already.
    by_digest: HashMap<[u8; 32], Arc<KeyInfo>, foldhash::fast::RandomState>,
}

/// SHA-256 of a key, with ring's assembly implementation (SHA extensions or AVX2 where the
/// CPU has them): it runs on every authenticated request.
pub fn digest(key: &str) -> [u8; 32] {
    digest_bytes(key.as_bytes())
}

pub fn digest_bytes(key: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, key);
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

fn key_id(digest: &[u8; 32]) -> String {
    format!("key_{}", hex::encode(&digest[..4]))
}

impl KeyStore {
    /// Reads a keys file; every malformed entry is reported with its place.
    pub fn load(file: &Path) -> Result<KeyStore, Vec<ConfigError>> {
        let source = crate::config::read_source(file)?;
        // An empty file is a store with no keys yet.
        let parsed: KeysFile = if source.trim().is_empty() {
            KeysFile { keys: Vec::new() }
        } else {
            serde_yaml::from_str(&source).map_err(|e| vec![yaml_error(file, &e)])?
        };
        let mut errors = Errors::new(file, &source);
        let mut store = KeyStore::default();
        for (i, entry) in parsed.keys.into_iter().enumerate() {
            let at = YamlPath::root().key("keys").index(i);
            let KeyEntry {
                id,
                sha256,
                tenant,
                tier,
                disabled,
            } = entry;
            let mut digest = [0u8; 32];
            if hex::decode_to_slice(&sha256, &mut digest).is_err() {
                errors.add(
                    &at.key("sha256"),
                    "must be 64 hex digits (the SHA-256 of the key)",
                );
                continue;
            }
            if id != key_id(&digest) {
                errors.add(
                    &at.key("id"),
                    format!("must be {} (derived from the digest)", key_id(&digest)),
                );
            }
            if tenant.is_empty() {
                errors.add(&at.key("tenant"), "must not be empty");
            }
            if store.by_digest.contains_key(&digest) {
                errors.add(&at.key("sha256"), "the same key is listed twice");
            }
            store.by_digest.insert(
                digest,
                Arc::new(KeyInfo {
                    id,
                    tenant,
                    tier,
                    disabled,
                    digest,
                }),
            );
        }
        if errors.list.is_empty() {
            Ok(store)
        } else {
            Err(errors.list)
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &KeyInfo> {
        self.by_digest.values().map(Arc::as_ref)
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Looks a presented key up by its digest.
    ///
    /// The presented key is never compared with anything: only its SHA-256 is, so the time a
    /// lookup takes depends on the digest, which tells an attacker nothing about any stored
    /// key. The final equality check is constant-time all the same, so that no byte-by-byte
    /// early exit exists anywhere on this path.
    pub fn lookup(&self, presented: &str) -> Lookup {
        self.lookup_digest(&digest(presented))
    }

    /// Looks a key up by the SHA-256 digest of what was presented (see [`Self::lookup`]).
    pub fn lookup_digest(&self, d: &[u8; 32]) -> Lookup {
        match self.by_digest.get(d) {
            Some(info) if constant_time_eq::constant_time_eq_32(&info.digest, d) => {
                if info.disabled {
                    Lookup::Disabled(info.clone())
                } else {
                    Lookup::Valid(info.clone())
                }
            }
            _ => Lookup::Unknown,
        }
    }
}

/// A fresh random key: the prefix and 32 random bytes in hex (256 bits of entropy).
pub fn generate_key() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{KEY_PREFIX}{}", hex::encode(bytes))
}

/// Creates a key for `tenant`, appends its digest to `file` (creating the file, readable by
/// its owner only), and returns the key — the only time it exists in clear.
pub fn add_key(file: &Path, tenant: &str, tier: &str) -> Result<(String, String), String> {
    if tenant.is_empty()
        || !tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "tenant {tenant:?} must be non-empty letters, digits, '-', '_' or '.'"
        ));
    }
    let mut parsed = read_keys_file(file)?;
    let key = generate_key();
    let d = digest(&key);
    let id = key_id(&d);
    parsed.keys.push(KeyEntry {
        id: id.clone(),
        sha256: hex::encode(d),
        tenant: tenant.to_string(),
        tier: tier.to_string(),
        disabled: false,
    });
    write_keys_file(file, &parsed)?;
    Ok((key, id))
}

/// Disables (revokes) or re-enables the key with this id. A running gateway that watches
/// the file refuses the key (403) within a couple of seconds.
pub fn set_disabled(file: &Path, id: &str, disabled: bool) -> Result<(), String> {
    let mut parsed = read_keys_file(file)?;
    let Some(entry) = parsed.keys.iter_mut().find(|k| k.id == id) else {
        let ids: Vec<&str> = parsed.keys.iter().map(|k| k.id.as_str()).collect();
        return Err(format!(
            "no key {id:?} in {} (keys: {})",
            file.display(),
            ids.join(", ")
        ));
    };
    entry.disabled = disabled;
    write_keys_file(file, &parsed)
}

/// `(id, tenant, tier, disabled)` of every key in the file: what `gateway keys list` shows.
pub fn list(file: &Path) -> Result<Vec<(String, String, String, bool)>, String> {
    Ok(read_keys_file(file)?
        .keys
        .into_iter()
        .map(|k| (k.id, k.tenant, k.tier, k.disabled))
        .collect())
}

fn read_keys_file(file: &Path) -> Result<KeysFile, String> {
    if !file.exists() {
        return Ok(KeysFile { keys: Vec::new() });
    }
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if text.trim().is_empty() {
        return Ok(KeysFile { keys: Vec::new() });
    }
    serde_yaml::from_str::<KeysFile>(&text).map_err(|e| yaml_error(file, &e).to_string())
}

fn write_keys_file(file: &Path, parsed: &KeysFile) -> Result<(), String> {
    let body = serde_yaml::to_string(parsed).map_err(|e| e.to_string())?;
    let text =
        format!("# API keys of the gateway: SHA-256 digests only. Add keys with `gateway keys add`.\n{body}");
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    // Write to a temporary file and rename, so a running gateway never reads half a file.
    let tmp = file.with_extension("yaml.tmp");
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options
            .open(&tmp)
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        f.write_all(text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    }
    std::fs::rename(&tmp, file).map_err(|e| format!("cannot write {}: {e}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("gw-keys-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("api-keys.yaml")
    }

    #[test]
    fn added_keys_are_found_and_only_digests_are_stored() {
        let file = temp("add");
        let (key, id) = add_key(&file, "acme", "default").unwrap();
        assert!(key.starts_with(KEY_PREFIX) && key.len() == KEY_PREFIX.len() + 64);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains(&key), "the key itself must never be written");
        assert!(text.contains(&hex::encode(digest(&key))));
        let (key2, _) = add_key(&file, "other", "batch").unwrap();
        let store = KeyStore::load(&file).unwrap();
        assert_eq!(store.len(), 2);
        match store.lookup(&key) {
            Lookup::Valid(info) => {
                assert_eq!((info.id.as_str(), info.tenant.as_str()), (id.as_str(), "acme"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(store.lookup(&key2), Lookup::Valid(i) if i.tier == "batch"));
        assert_eq!(store.lookup("gwk_wrong"), Lookup::Unknown);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[test]
    fn disabled_keys_are_reported_as_such() {
        let file = temp("disabled");
        let (key, _) = add_key(&file, "acme", "default").unwrap();
        let text = std::fs::read_to_string(&file)
            .unwrap()
            .replace("disabled: false", "disabled: true");
        std::fs::write(&file, text).unwrap();
        assert!(matches!(
            KeyStore::load(&file).unwrap().lookup(&key),
            Lookup::Disabled(_)
        ));
    }

    #[test]
    fn malformed_entries_are_located() {
        let file = temp("bad");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(
            &file,
            "keys:\n  - id: key_00000000\n    sha256: nothex\n    tenant: a\n",
        )
        .unwrap();
        let errors = KeyStore::load(&file).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!((errors[0].line, errors[0].column), (Some(3), Some(13)));
        assert!(errors[0].message.contains("64 hex digits"));
    }
}
