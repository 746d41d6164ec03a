//! Provider credentials at rest: sealed with ChaCha20-Poly1305 under a key
//! derived from the region's salt key (`MERIDIAN_SALT_KEY`, or LiteLLM's
//! `LITELLM_SALT_KEY`; the master key when neither is set, as LiteLLM does).
//! Only sealed values enter the replicated metadata; they are opened in memory
//! when a deployment is built, and no endpoint returns them.

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sha2::{Digest, Sha256};

use crate::clock::SeededRng;
use crate::error::{Error, Result};
use crate::secret::Secret;

const VERSION: &str = "v1:";
const NONCE_BYTES: usize = 12;

pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl Sealer {
    pub fn new(salt_key: &Secret) -> Self {
        // A domain-separated digest, so the salt key itself is never the AEAD key.
        let mut h = Sha256::new();
        h.update(b"meridian credentials v1\0");
        h.update(salt_key.expose().as_bytes());
        let key: [u8; 32] = h.finalize().into();
        Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        }
    }

    pub fn seal(&self, plaintext: &Secret, rng: &SeededRng) -> Result<String> {
        let mut nonce = [0u8; NONCE_BYTES];
        let random = hex::decode(rng.hex(NONCE_BYTES)).unwrap_or_default();
        nonce.copy_from_slice(random.get(..NONCE_BYTES).unwrap_or(&[0u8; NONCE_BYTES]));
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext.expose().as_bytes())
            .map_err(|_| Error::Internal("sealing a credential failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!(
            "{VERSION}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        ))
    }

    pub fn open(&self, sealed: &str) -> Result<Secret> {
        let fail = || {
            Error::Internal(
                "a stored credential cannot be opened (was the salt key changed?)".into(),
            )
        };
        let body = sealed.strip_prefix(VERSION).ok_or_else(fail)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| fail())?;
        if bytes.len() < NONCE_BYTES {
            return Err(fail());
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map_err(|_| fail())?;
        String::from_utf8(plain)
            .map(Secret::new)
            .map_err(|_| fail())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_refuse_a_wrong_key() {
        let rng = SeededRng::from_seed(1);
        let sealer = Sealer::new(&Secret::new("salt"));
        let sealed = sealer.seal(&Secret::new("sk-provider"), &rng).unwrap();
        assert!(sealed.starts_with("v1:") && !sealed.contains("sk-provider"));
        assert_eq!(sealer.open(&sealed).unwrap().expose(), "sk-provider");
        assert_ne!(
            sealer.seal(&Secret::new("sk-provider"), &rng).unwrap(),
            sealed,
            "fresh nonce each time"
        );
        assert!(Sealer::new(&Secret::new("other")).open(&sealed).is_err());
        assert!(sealer.open("v1:AAAA").is_err());
        assert!(sealer.open("plain").is_err());
    }
}
