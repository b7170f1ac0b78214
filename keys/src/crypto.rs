//! Public keys, key ids, signatures and the one kind of private key Otter signs with (ed25519).
//!
//! Otter signs only with ed25519. For interoperability it verifies `ecdsa-sha2-nistp256`
//! (PEM public key, DER or raw signature) and `rsassa-pss-sha256` (PEM public key) as well,
//! as python-tuf and go-tuf repositories use them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::canonical::{to_canonical_bytes, CanonicalError};

/// Key type and scheme of Otter's own keys.
pub const ED25519: &str = "ed25519";
/// Key type (and, in some repositories, scheme) of NIST P-256 ECDSA keys.
pub const ECDSA_P256_SCHEME: &str = "ecdsa-sha2-nistp256";
/// Scheme of RSA-PSS keys with SHA-256.
pub const RSA_PSS_SCHEME: &str = "rsassa-pss-sha256";

/// A key id: Otter computes them as the hex SHA-256 of the canonical public key; ids that
/// other repositories declare are taken as given.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(pub String);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl KeyId {
    /// The first 8 characters, for humans.
    pub fn short(&self) -> &str {
        self.0.get(..8).unwrap_or(&self.0)
    }
}

/// The `keyval` member of a TUF key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVal {
    /// The public key: hex for ed25519, PEM for ECDSA and RSA.
    pub public: String,
    /// Members this version does not know, kept so signatures still verify.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// A TUF public key object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    /// `ed25519`, `ecdsa`, `ecdsa-sha2-nistp256`, `rsa`, ...
    pub keytype: String,
    /// `ed25519`, `ecdsa-sha2-nistp256`, `rsassa-pss-sha256`, ...
    pub scheme: String,
    /// The key material.
    pub keyval: KeyVal,
    /// Members this version does not know, kept so signatures still verify.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Why a signature did not verify. Carries no secret and no detail an attacker could use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The key's type or scheme is not one Otter can verify.
    #[error("unsupported key type {keytype:?} with scheme {scheme:?}")]
    UnsupportedScheme {
        /// The key type.
        keytype: String,
        /// The scheme.
        scheme: String,
    },
    /// The public key material cannot be decoded.
    #[error("public key is malformed: {0}")]
    MalformedKey(String),
    /// The signature is not hex, or has the wrong length or encoding.
    #[error("signature is malformed")]
    MalformedSignature,
    /// The signature does not match the message and key.
    #[error("signature does not verify")]
    Invalid,
}

impl PublicKey {
    /// An ed25519 key in TUF form.
    pub fn ed25519(public: &[u8; 32]) -> Self {
        PublicKey {
            keytype: ED25519.into(),
            scheme: ED25519.into(),
            keyval: KeyVal {
                public: hex::encode(public),
                extra: BTreeMap::new(),
            },
            extra: BTreeMap::new(),
        }
    }

    /// The key id the specification defines: hex SHA-256 of the canonical key object.
    pub fn key_id(&self) -> Result<KeyId, CanonicalError> {
        let bytes = to_canonical_bytes(self)?;
        Ok(KeyId(hex::encode(Sha256::digest(&bytes))))
    }

    /// Whether two keys hold the same public key material, whatever ids they are given and
    /// however the material is written (hex case, PEM or raw point).
    pub fn same_material(&self, other: &PublicKey) -> bool {
        match (self.material(), other.material()) {
            (Some(a), Some(b)) => a == b,
            _ => {
                self.keytype == other.keytype
                    && self.scheme == other.scheme
                    && self.keyval.public.trim() == other.keyval.public.trim()
            }
        }
    }

    /// The key material in one normal form, tagged by algorithm; `None` if it cannot be
    /// decoded (such a key never verifies anything either).
    fn material(&self) -> Option<(u8, Vec<u8>)> {
        match (self.keytype.as_str(), self.scheme.as_str()) {
            (ED25519, ED25519) => Some((1, self.ed25519_key().ok()?.to_bytes().to_vec())),
            ("ecdsa" | ECDSA_P256_SCHEME, ECDSA_P256_SCHEME) => Some((
                2,
                self.p256_key()
                    .ok()?
                    .to_encoded_point(false)
                    .as_bytes()
                    .to_vec(),
            )),
            ("rsa", RSA_PSS_SCHEME) => {
                use rsa::traits::PublicKeyParts;
                let k = self.rsa_key().ok()?;
                let mut m = k.n().to_bytes_be();
                m.push(0xff);
                m.extend(k.e().to_bytes_be());
                Some((3, m))
            }
            _ => None,
        }
    }

    /// Verifies `sig` (as found hex-encoded in metadata) over `msg`.
    pub fn verify(&self, msg: &[u8], sig_hex: &str) -> Result<(), SignatureError> {
        let sig = hex::decode(sig_hex).map_err(|_| SignatureError::MalformedSignature)?;
        match (self.keytype.as_str(), self.scheme.as_str()) {
            (ED25519, ED25519) => self.verify_ed25519(msg, &sig),
            ("ecdsa" | ECDSA_P256_SCHEME, ECDSA_P256_SCHEME) => self.verify_p256(msg, &sig),
            ("rsa", RSA_PSS_SCHEME) => self.verify_rsa_pss(msg, &sig),
            _ => Err(SignatureError::UnsupportedScheme {
                keytype: self.keytype.clone(),
                scheme: self.scheme.clone(),
            }),
        }
    }

    fn ed25519_key(&self) -> Result<ed25519_dalek::VerifyingKey, SignatureError> {
        let raw = hex::decode(self.keyval.public.trim())
            .map_err(|_| SignatureError::MalformedKey("ed25519 public key is not hex".into()))?;
        let raw: [u8; 32] = raw.try_into().map_err(|_| {
            SignatureError::MalformedKey("ed25519 public key is not 32 bytes".into())
        })?;
        ed25519_dalek::VerifyingKey::from_bytes(&raw)
            .map_err(|_| SignatureError::MalformedKey("not a valid ed25519 point".into()))
    }

    fn verify_ed25519(&self, msg: &[u8], sig: &[u8]) -> Result<(), SignatureError> {
        let vk = self.ed25519_key()?;
        let sig = ed25519_dalek::Signature::from_slice(sig)
            .map_err(|_| SignatureError::MalformedSignature)?;
        vk.verify_strict(msg, &sig)
            .map_err(|_| SignatureError::Invalid)
    }

    fn p256_key(&self) -> Result<p256::ecdsa::VerifyingKey, SignatureError> {
        use p256::pkcs8::DecodePublicKey;
        let public = self.keyval.public.trim();
        if public.starts_with("-----BEGIN") {
            p256::ecdsa::VerifyingKey::from_public_key_pem(public)
                .map_err(|e| SignatureError::MalformedKey(format!("P-256 PEM: {e}")))
        } else {
            let raw = hex::decode(public).map_err(|_| {
                SignatureError::MalformedKey("P-256 key is neither PEM nor hex".into())
            })?;
            p256::ecdsa::VerifyingKey::from_sec1_bytes(&raw)
                .map_err(|_| SignatureError::MalformedKey("P-256 SEC1 point".into()))
        }
    }

    fn verify_p256(&self, msg: &[u8], sig: &[u8]) -> Result<(), SignatureError> {
        use p256::ecdsa::signature::Verifier;
        let vk = self.p256_key()?;
        let sig = p256::ecdsa::Signature::from_der(sig)
            .or_else(|_| p256::ecdsa::Signature::from_slice(sig))
            .map_err(|_| SignatureError::MalformedSignature)?;
        vk.verify(msg, &sig).map_err(|_| SignatureError::Invalid)
    }

    fn rsa_key(&self) -> Result<rsa::RsaPublicKey, SignatureError> {
        use rsa::pkcs8::DecodePublicKey;
        let public = self.keyval.public.trim();
        rsa::RsaPublicKey::from_public_key_pem(public)
            .or_else(|_| {
                use rsa::pkcs1::DecodeRsaPublicKey;
                rsa::RsaPublicKey::from_pkcs1_pem(public)
            })
            .map_err(|e| SignatureError::MalformedKey(format!("RSA PEM: {e}")))
    }

    fn verify_rsa_pss(&self, msg: &[u8], sig: &[u8]) -> Result<(), SignatureError> {
        use rsa::traits::PublicKeyParts;
        let key = self.rsa_key()?;
        if key.size() < 2048 / 8 {
            return Err(SignatureError::MalformedKey(
                "RSA keys shorter than 2048 bits are refused".into(),
            ));
        }
        let digest = Sha256::digest(msg);
        // Signers differ in the salt length they pick: the digest length (securesystemslib,
        // go-tuf) or the largest that fits (older signers). Accept either.
        let em_len = (key.n().bits() - 1).div_ceil(8);
        let max_salt = em_len.saturating_sub(32 + 2);
        for salt in [32, max_salt] {
            let scheme = rsa::Pss::new_with_salt::<Sha256>(salt);
            if key.verify(scheme, &digest, sig).is_ok() {
                return Ok(());
            }
        }
        Err(SignatureError::Invalid)
    }
}

/// One signature in a metadata envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Id of the key that made it.
    pub keyid: KeyId,
    /// Hex-encoded signature bytes.
    pub sig: String,
    /// Members this version does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// An ed25519 private key. Zeroized on drop; `Debug` never prints it.
pub struct SigningKey {
    inner: ed25519_dalek::SigningKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "SigningKey(<redacted>, public {})",
            hex::encode(self.inner.verifying_key().as_bytes())
        )
    }
}

impl SigningKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Self {
        let mut rng = rand_core::OsRng;
        SigningKey {
            inner: ed25519_dalek::SigningKey::generate(&mut rng),
        }
    }

    /// From the 32-byte secret seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        SigningKey {
            inner: ed25519_dalek::SigningKey::from_bytes(seed),
        }
    }

    /// The 32-byte secret seed. Dangerous: the caller must keep it zeroized and private.
    pub fn seed_dangerous(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.inner.to_bytes())
    }

    /// The raw 32-byte public key.
    pub fn public_bytes(&self) -> [u8; 32] {
        self.inner.verifying_key().to_bytes()
    }

    /// The public key in TUF form.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::ed25519(&self.public_bytes())
    }

    /// The TUF key id of the public key.
    pub fn key_id(&self) -> KeyId {
        // An ed25519 key object always has a canonical form.
        match self.public_key().key_id() {
            Ok(id) => id,
            Err(_) => KeyId(String::new()),
        }
    }

    /// Signs `msg`, returning the raw 64-byte signature.
    pub fn sign_raw(&self, msg: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.inner.sign(msg).to_bytes()
    }

    /// Signs `msg`, returning a TUF signature object.
    pub fn sign(&self, msg: &[u8]) -> Signature {
        Signature {
            keyid: self.key_id(),
            sig: hex::encode(self.sign_raw(msg)),
            extra: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_sign_and_verify() {
        let k = SigningKey::generate();
        let s = k.sign(b"hello");
        let pk = k.public_key();
        assert_eq!(s.keyid, pk.key_id().unwrap());
        assert!(pk.verify(b"hello", &s.sig).is_ok());
        assert_eq!(pk.verify(b"hellO", &s.sig), Err(SignatureError::Invalid));
        assert_eq!(
            pk.verify(b"hello", "zz"),
            Err(SignatureError::MalformedSignature)
        );
        assert_eq!(
            pk.verify(b"hello", "abcd"),
            Err(SignatureError::MalformedSignature)
        );
    }

    #[test]
    fn key_id_is_sha256_of_canonical_key() {
        let pk = PublicKey::ed25519(&[7u8; 32]);
        let canon = format!(
            r#"{{"keytype":"ed25519","keyval":{{"public":"{}"}},"scheme":"ed25519"}}"#,
            hex::encode([7u8; 32])
        );
        assert_eq!(
            pk.key_id().unwrap().0,
            hex::encode(Sha256::digest(canon.as_bytes()))
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let k = SigningKey::from_seed(&[9u8; 32]);
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&hex::encode([9u8; 32])));
        assert!(dbg.contains("redacted"));
    }

    #[test]
    fn unknown_schemes_are_refused() {
        let mut pk = PublicKey::ed25519(&[1u8; 32]);
        pk.scheme = "ed448".into();
        assert!(matches!(
            pk.verify(b"x", "00"),
            Err(SignatureError::UnsupportedScheme { .. })
        ));
    }
}
