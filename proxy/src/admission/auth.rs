//! API key authentication: `Authorization: Bearer <key>` or `x-api-key: <key>`.
//! Missing → 401 with `WWW-Authenticate`; unknown → 401; disabled → 403; two different keys
//! in one request (two `x-api-key` fields, or one that differs from the bearer token) → 400,
//! as which one would count is a guess a proxy in front may make otherwise. The key is never
//! logged or used as a metric label: downstream code sees only [`KeyInfo`] (id, tenant, tier).

use std::sync::Arc;

use http::HeaderMap;

use crate::config::keys::{KeyInfo, KeyStore, Lookup};
use crate::errors::GatewayError;

/// The key a request presents, if any; a 400 when it presents two different ones.
pub fn presented_key(headers: &HeaderMap) -> Result<Option<&str>, GatewayError> {
    let mut found: Option<&str> = None;
    for v in headers.get_all(crate::http::names::X_API_KEY) {
        keep(
            &mut found,
            v.to_str().ok().map(str::trim).filter(|k| !k.is_empty()),
        )?;
    }
    for v in headers.get_all(http::header::AUTHORIZATION) {
        let bearer = v.to_str().ok().map(str::trim).and_then(|auth| {
            let (scheme, token) = auth.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim())
                .filter(|t| !t.is_empty())
        });
        keep(&mut found, bearer)?;
    }
    Ok(found)
}

/// Adds a key seen in one header field to what was found so far: the same key again is
/// fine, another one is not.
fn keep<'h>(found: &mut Option<&'h str>, key: Option<&'h str>) -> Result<(), GatewayError> {
    match (*found, key) {
        (_, None) => Ok(()),
        (None, Some(k)) => {
            *found = Some(k);
            Ok(())
        }
        (Some(a), Some(b)) if a == b => Ok(()),
        (Some(_), Some(_)) => Err(GatewayError::BadHeader(
            "the request carries two different API keys (x-api-key and Authorization, or one of them twice): send one"
                .into(),
        )),
    }
}

/// The last key an HTTP/1 connection presented, and its SHA-256: a client sends the same key
/// with every request on a connection, and hashing it (two SHA-256 blocks, about 4,500
/// instructions without SHA extensions) was a twentieth of a proxied request's cost.
///
/// Only the digest is remembered for the key, never the answer: every request is still looked
/// up in the current key store, so a key disabled or removed by a reload is refused at once.
/// The comparison is constant-time, and it tells the client only whether it sent the same
/// key as on its previous request, which it knows.
///
/// pingora gives an HTTP/2 stream no connection context, so HTTP/2 streams share their worker
/// thread's memo instead ([`thread_memo`]): a gRPC client's every call hashed its key again
/// (4,300 instructions of a call's 192,000 under callgrind). What timing could tell a client
/// there is whether its key was the last one presented on that thread; a key equal to another
/// client's valid key is accepted anyway, and says so.
#[derive(Default)]
pub struct KeyMemo {
    key: Vec<u8>,
    digest: [u8; 32],
}

impl KeyMemo {
    /// The digest of `key`, computed only when it differs from the last one.
    fn digest(&mut self, key: &str) -> [u8; 32] {
        let key = key.as_bytes();
        if self.key.is_empty() || !constant_time_eq::constant_time_eq(&self.key, key) {
            self.digest = crate::config::keys::digest_bytes(key);
            self.key.clear();
            self.key.extend_from_slice(key);
        }
        self.digest
    }
}

thread_local! {
    static THREAD_MEMO: std::cell::Cell<Option<Box<KeyMemo>>> = const { std::cell::Cell::new(None) };
}

/// The worker thread's memo for an HTTP/2 stream (a fresh one while another stream has it).
pub fn thread_memo() -> Box<KeyMemo> {
    THREAD_MEMO.take().unwrap_or_default()
}

/// Gives the memo back to the thread the stream ended on.
pub fn return_thread_memo(memo: Box<KeyMemo>) {
    THREAD_MEMO.set(Some(memo));
}

/// Who is calling, or why they may not. `memo` holds the connection's last key, if it has one.
pub fn authenticate(
    keys: &KeyStore,
    headers: &HeaderMap,
    memo: Option<&mut KeyMemo>,
) -> Result<Arc<KeyInfo>, GatewayError> {
    let Some(key) = presented_key(headers)? else {
        return Err(GatewayError::MissingKey);
    };
    let found = match memo {
        Some(memo) => keys.lookup_digest(&memo.digest(key)),
        None => keys.lookup(key),
    };
    match found {
        Lookup::Valid(info) => Ok(info),
        Lookup::Disabled(info) => Err(GatewayError::DisabledKey(info.id.clone())),
        Lookup::Unknown => Err(GatewayError::UnknownKey),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn both_header_forms_are_read() {
        let key = |pairs: &[(&'static str, &'static str)]| {
            presented_key(&headers(pairs)).unwrap().map(str::to_string)
        };
        let some = |k: &str| Some(k.to_string());
        assert_eq!(key(&[("authorization", "Bearer abc")]), some("abc"));
        assert_eq!(key(&[("authorization", "bearer  abc ")]), some("abc"));
        assert_eq!(key(&[("x-api-key", "xyz")]), some("xyz"));
        assert_eq!(
            key(&[("x-api-key", "xyz"), ("authorization", "Bearer xyz")]),
            some("xyz")
        );
        assert_eq!(key(&[("x-api-key", "xyz"), ("x-api-key", "xyz")]), some("xyz"));
        assert_eq!(
            key(&[("x-api-key", "xyz"), ("authorization", "Basic abc")]),
            some("xyz")
        );
        assert_eq!(key(&[("authorization", "Basic abc")]), None);
        assert_eq!(key(&[("authorization", "Bearer")]), None);
        assert_eq!(key(&[("x-api-key", "  ")]), None);
        assert_eq!(key(&[]), None);
    }

    #[test]
    fn two_different_keys_are_refused() {
        for pairs in [
            &[("x-api-key", "a"), ("x-api-key", "b")][..],
            &[("x-api-key", "a"), ("authorization", "Bearer b")],
            &[("authorization", "Bearer a"), ("authorization", "Bearer b")],
        ] {
            let err = presented_key(&headers(pairs)).unwrap_err();
            assert_eq!(err.status(), 400, "{pairs:?}");
            assert!(err.to_string().contains("two different API keys"), "{err}");
        }
    }

    #[test]
    fn a_remembered_key_is_still_looked_up_in_the_current_store() {
        let dir = std::env::temp_dir().join(format!("auth-memo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keys.yaml");
        let (key, _id) = crate::config::keys::add_key(&file, "t", "default").unwrap();
        let store = KeyStore::load(&file).unwrap();
        let mut memo = KeyMemo::default();
        let sent = headers(&[]);
        let mut with_key = HeaderMap::new();
        with_key.append("x-api-key", key.parse().unwrap());
        for _ in 0..2 {
            let info = authenticate(&store, &with_key, Some(&mut memo)).unwrap();
            assert_eq!(info.tenant, "t");
        }
        // Another key on the same connection is hashed anew, not taken for the last one.
        let mut other = HeaderMap::new();
        other.append("x-api-key", format!("{key}x").parse().unwrap());
        assert!(matches!(
            authenticate(&store, &other, Some(&mut memo)),
            Err(GatewayError::UnknownKey)
        ));
        assert!(authenticate(&store, &with_key, Some(&mut memo)).is_ok());
        // A store without the key (a reload removed it) refuses it, memo or not.
        assert!(matches!(
            authenticate(&KeyStore::default(), &with_key, Some(&mut memo)),
            Err(GatewayError::UnknownKey)
        ));
        assert!(authenticate(&store, &sent, Some(&mut memo)).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn statuses() {
        let store = KeyStore::default();
        assert_eq!(
            authenticate(&store, &headers(&[]), None).unwrap_err().status(),
            401
        );
        assert!(matches!(
            authenticate(&store, &headers(&[("x-api-key", "nope")]), None),
            Err(GatewayError::UnknownKey)
        ));
    }

    #[test]
    fn http2_streams_share_their_thread_s_memo() {
        let mut memo = thread_memo();
        let digest = memo.digest("k1");
        return_thread_memo(memo);
        let memo = thread_memo();
        assert_eq!((memo.key.as_slice(), memo.digest), (&b"k1"[..], digest));
        // A stream that starts while another has the memo gets a fresh one.
        assert!(thread_memo().key.is_empty());
        return_thread_memo(memo);
    }
}
