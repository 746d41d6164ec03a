//! Authentication: who is calling. Keys are compared by SHA-256, never in clear.
//! Today the only credential is the master key; virtual keys join from the
//! region's replicated metadata (an in-memory index, no I/O per request).

use http::HeaderMap;

use crate::error::{Error, Result};
use crate::secret::Secret;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Holder of the master key: may use every model and every endpoint.
    Master,
}

impl Principal {
    pub fn may_use_model(&self, _group: &str) -> bool {
        match self {
            Principal::Master => true,
        }
    }
}

pub struct Authenticator {
    master_hash: [u8; 32],
}

impl Authenticator {
    pub fn new(master_key: &Secret) -> Self {
        Self {
            master_hash: master_key.sha256(),
        }
    }

    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal> {
        let key = presented_key(headers).ok_or(Error::MissingKey)?;
        if Secret::new(key).sha256() == self.master_hash {
            Ok(Principal::Master)
        } else {
            Err(Error::InvalidKey)
        }
    }
}

/// The key as OpenAI clients (`Authorization: Bearer`), Anthropic clients
/// (`x-api-key`) and Azure clients (`api-key`) send it.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(auth) = value("authorization") {
        let key = match auth.split_once(char::is_whitespace) {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ if auth.eq_ignore_ascii_case("bearer") => "",
            _ => auth,
        };
        if !key.is_empty() {
            return Some(key);
        }
    }
    value("x-api-key")
        .or_else(|| value("api-key"))
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, http::HeaderValue::from_static(value));
        h
    }

    #[test]
    fn accepts_every_header_form_and_rejects_others() {
        let auth = Authenticator::new(&Secret::new("sk-master"));
        assert_eq!(
            auth.authenticate(&headers("authorization", "Bearer sk-master"))
                .unwrap(),
            Principal::Master
        );
        assert_eq!(
            auth.authenticate(&headers("x-api-key", "sk-master"))
                .unwrap(),
            Principal::Master
        );
        assert_eq!(
            auth.authenticate(&headers("api-key", "sk-master")).unwrap(),
            Principal::Master
        );
        assert!(matches!(
            auth.authenticate(&headers("authorization", "Bearer nope")),
            Err(Error::InvalidKey)
        ));
        assert!(matches!(
            auth.authenticate(&headers("authorization", "Bearer ")),
            Err(Error::MissingKey)
        ));
        assert!(matches!(
            auth.authenticate(&HeaderMap::new()),
            Err(Error::MissingKey)
        ));
    }
}
