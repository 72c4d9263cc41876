//! API key authentication: `Authorization: Bearer <key>` or `x-api-key: <key>`.
//! Missing → 401 with `WWW-Authenticate`; unknown → 401; disabled → 403. The key is never
//! logged or used as a metric label: downstream code sees only [`KeyInfo`] (id, tenant, tier).

use std::sync::Arc;

use http::HeaderMap;

use crate::errors::GatewayError;
use crate::keys::{KeyInfo, KeyStore, Lookup};

/// The key a request presents, if any. `x-api-key` wins when both are sent.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-api-key") {
        return v.to_str().ok().map(str::trim).filter(|k| !k.is_empty());
    }
    let auth = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = auth.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(token.trim()).filter(|t| !t.is_empty())
    } else {
        None
    }
}

/// Who is calling, or why they may not.
pub fn authenticate(keys: &KeyStore, headers: &HeaderMap) -> Result<Arc<KeyInfo>, GatewayError> {
    let Some(key) = presented_key(headers) else {
        return Err(GatewayError::MissingKey);
    };
    match keys.lookup(key) {
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
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer abc")])),
            Some("abc")
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "bearer  abc ")])),
            Some("abc")
        );
        assert_eq!(presented_key(&headers(&[("x-api-key", "xyz")])), Some("xyz"));
        assert_eq!(
            presented_key(&headers(&[("x-api-key", "xyz"), ("authorization", "Bearer abc")])),
            Some("xyz")
        );
        assert_eq!(presented_key(&headers(&[("authorization", "Basic abc")])), None);
        assert_eq!(presented_key(&headers(&[("authorization", "Bearer")])), None);
        assert_eq!(presented_key(&headers(&[("x-api-key", "  ")])), None);
        assert_eq!(presented_key(&headers(&[])), None);
    }

    #[test]
    fn statuses() {
        let store = KeyStore::default();
        assert_eq!(authenticate(&store, &headers(&[])).unwrap_err().status(), 401);
        assert!(matches!(
            authenticate(&store, &headers(&[("x-api-key", "nope")])),
            Err(GatewayError::UnknownKey)
        ));
    }
}
