//! API keys: generated here, shown once, stored only as SHA-256 digests with a tenant and a
//! tier. The keys file holds no secret: a leaked file does not give anyone a working key.
//!
//! ```yaml
//! keys:
//!   - id: key_5f2c9a1b0c3d4e5f6a7b8c9d   # the digest's first 24 hex digits: safe to log and to show
//!     sha256: 5f2c9a1b…                 # hex digest of the key
//!     tenant: dev
//!     tier: default            # a name under rate_limits.tiers, or "default"
//!     disabled: false          # a disabled key is refused with 403
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Errors, Path as YamlPath, yaml_error};
use crate::durable::FileLock;

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
    /// `key_` + the digest's first 24 hex digits (8 in files made before): names the key in
    /// logs without revealing it.
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
    /// xxh3-128 of the text the store was parsed from (`None`: no file, as an empty one). The
    /// keys watcher compares the file's hash with the one of the keys in force; hashing the
    /// file again later could see an edit made since, which would then never be loaded.
    source_hash: Option<u128>,
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

/// Bytes of the digest an id shows: 96 bits, so two keys' ids never meet in practice (a
/// billion keys collide with a probability of about 10^-11; the 32-bit ids of earlier files
/// were likely to collide from about 65,000 keys). A duplicate id is refused all the same.
const ID_BYTES: usize = 12;
/// What ids of keys made before were: still accepted when they name their digest.
const LEGACY_ID_BYTES: usize = 4;

fn key_id(digest: &[u8; 32]) -> String {
    format!("key_{}", hex::encode(&digest[..ID_BYTES]))
}

/// The id of a key (what `gateway keys list` and the access log show for it).
pub fn id_of(key: &str) -> String {
    key_id(&digest(key))
}

/// Whether `id` is written as a key id is (`key_` and 8 or 24 lower-case hex digits).
pub fn looks_like_id(id: &str) -> bool {
    id.strip_prefix("key_").is_some_and(|h| {
        (h.len() == 2 * ID_BYTES || h.len() == 2 * LEGACY_ID_BYTES)
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Whether `id` is the id of the key with this digest (current or earlier form).
fn id_names(id: &str, digest: &[u8; 32]) -> bool {
    id == key_id(digest) || id == format!("key_{}", hex::encode(&digest[..LEGACY_ID_BYTES]))
}

impl KeyStore {
    /// Reads a keys file; every malformed entry is reported with its place.
    pub fn load(file: &Path) -> Result<KeyStore, Vec<ConfigError>> {
        let source = crate::config::read_source(file)?;
        Self::parse(file, &source)
    }

    /// [`KeyStore::load`] of text already read from `file`.
    pub fn parse(file: &Path, source: &str) -> Result<KeyStore, Vec<ConfigError>> {
        let source = source.to_string();
        // An empty file is a store with no keys yet.
        let parsed: KeysFile = if source.trim().is_empty() {
            KeysFile { keys: Vec::new() }
        } else {
            yaml_serde::from_str(&source).map_err(|e| vec![yaml_error(file, &e)])?
        };
        let mut errors = Errors::new(file, &source);
        let mut store = KeyStore {
            source_hash: Some(xxhash_rust::xxh3::xxh3_128(source.as_bytes())),
            ..KeyStore::default()
        };
        let mut ids = std::collections::HashSet::new();
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
            if !id_names(&id, &digest) {
                errors.add(
                    &at.key("id"),
                    format!("must be {} (derived from the digest)", key_id(&digest)),
                );
            }
            if !ids.insert(id.clone()) {
                errors.add(&at.key("id"), format!("{id} is the id of another key too"));
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

    /// A problem for each key whose tier `rate_limits.tiers` does not define.
    pub fn unknown_tiers(&self, limits: &crate::config::RateLimits) -> Vec<String> {
        let mut problems: Vec<String> = self
            .keys()
            .filter(|k| k.tier != "default" && !limits.tiers.contains_key(&k.tier))
            .map(|k| {
                format!(
                    "key {} has tier {:?}, which rate_limits.tiers does not define",
                    k.id, k.tier
                )
            })
            .collect();
        problems.sort();
        problems
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// The xxh3-128 of the text these keys were read from (of no bytes for a store made
    /// without a file): what the file's bytes hash to while these keys are the ones in it.
    pub fn source_hash(&self) -> u128 {
        self.source_hash
            .unwrap_or_else(|| xxhash_rust::xxh3::xxh3_128(b""))
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
    edit(file, |parsed| {
        // A new key whose id another key has is drawn again (never seen in practice).
        let (key, d, id) = loop {
            let key = generate_key();
            let d = digest(&key);
            let id = key_id(&d);
            if !parsed.keys.iter().any(|k| k.id == id) {
                break (key, d, id);
            }
        };
        parsed.keys.push(KeyEntry {
            id: id.clone(),
            sha256: hex::encode(d),
            tenant: tenant.to_string(),
            tier: tier.to_string(),
            disabled: false,
        });
        Ok((key, id))
    })
}

/// Disables (revokes) or re-enables the key with this id. A running gateway that watches
/// the file refuses the key (403) within a couple of seconds.
pub fn set_disabled(file: &Path, id: &str, disabled: bool) -> Result<(), String> {
    edit(file, |parsed| {
        let Some(entry) = parsed.keys.iter_mut().find(|k| k.id == id) else {
            let ids: Vec<&str> = parsed.keys.iter().map(|k| k.id.as_str()).collect();
            return Err(format!(
                "no key {id:?} in {} (keys: {})",
                file.display(),
                ids.join(", ")
            ));
        };
        entry.disabled = disabled;
        Ok(())
    })
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
    yaml_serde::from_str::<KeysFile>(&text).map_err(|e| yaml_error(file, &e).to_string())
}

/// Reads the keys file, changes it and writes it back, holding `<file>.lock` throughout: two
/// edits at once (two operators, or a script) are made one after the other, and neither is
/// lost.
fn edit<T>(file: &Path, change: impl FnOnce(&mut KeysFile) -> Result<T, String>) -> Result<T, String> {
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let _lock = FileLock::exclusive(&lock_path(file))?;
    let mut parsed = read_keys_file(file)?;
    let out = change(&mut parsed)?;
    let body = yaml_serde::to_string(&parsed).map_err(|e| e.to_string())?;
    let text =
        format!("# API keys of the gateway: SHA-256 digests only. Add keys with `gateway keys add`.\n{body}");
    crate::durable::write_atomically(file, text.as_bytes(), 0o600)?;
    Ok(out)
}

fn lock_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    file.with_file_name(name)
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
    fn ids_are_long_legacy_ids_still_load_and_duplicates_are_refused() {
        let file = temp("ids");
        let (key, id) = add_key(&file, "acme", "default").unwrap();
        assert_eq!(id.len(), "key_".len() + 24, "{id}");
        assert!(looks_like_id(&id));
        // A file written before, with the 8-digit id of the same key, loads.
        let d = digest(&key);
        let legacy = format!(
            "keys:\n  - id: key_{}\n    sha256: {}\n    tenant: old\n",
            hex::encode(&d[..4]),
            hex::encode(d)
        );
        std::fs::write(&file, &legacy).unwrap();
        assert!(matches!(
            KeyStore::load(&file).unwrap().lookup(&key),
            Lookup::Valid(_)
        ));
        // Two keys with one id: refused, with the place of the second.
        let other = digest("gwk_other");
        let twice = format!(
            "{legacy}  - id: key_{}\n    sha256: {}\n    tenant: x\n",
            hex::encode(&d[..4]),
            hex::encode(other)
        );
        std::fs::write(&file, twice).unwrap();
        let errors = KeyStore::load(&file).unwrap_err();
        assert!(
            errors.iter().any(|e| e.message.contains("the id of another key")),
            "{errors:?}"
        );
    }

    /// Edits made at once by several writers all land: the lock makes them take turns.
    #[test]
    fn concurrent_edits_lose_nothing() {
        let file = temp("concurrent");
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let file = file.clone();
                std::thread::spawn(move || {
                    (0..5)
                        .map(|_| add_key(&file, &format!("t{i}"), "default").unwrap().1)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let made: Vec<String> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        let listed: Vec<String> = list(&file).unwrap().into_iter().map(|k| k.0).collect();
        assert_eq!(listed.len(), 40);
        for id in made {
            assert!(listed.contains(&id), "{id} was lost");
        }
        // No temporary file is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(file.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
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
