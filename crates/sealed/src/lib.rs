//! Private models at rest.
//!
//! A studio's model is sealed with XChaCha20-Poly1305 under a fresh random 256-bit **data key**
//! and a random 192-bit nonce; the associated data binds the ciphertext to the model's id and
//! plaintext sha256 ([`model_aad`]), so a ciphertext cannot be passed off as another model.
//! The data key is stored only **wrapped** by the market's key-encryption key ([`Kek`], a 0600
//! file the API and the settlement worker read) with the same AEAD and associated data. The
//! object store therefore holds only ciphertext, and the database only wrapped keys: neither
//! alone, nor both together without the KEK file, reveal a model.
//!
//! What this does not protect: a node that runs the model holds its plaintext weights in memory
//! (ONNX Runtime needs them), and so does the market's verifier. The key goes only to a node
//! with an open assignment of a job that names the model; a node that has run it once can keep
//! what it saw.

use std::io::Write;
use std::path::Path;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 24;
/// The AEAD's tag, appended to every ciphertext.
pub const TAG_LEN: usize = 16;
/// The name of the construction, as the API reports it to nodes.
pub const ALGORITHM: &str = "xchacha20poly1305";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("no randomness: {0}")]
    Random(String),
    #[error("the ciphertext does not authenticate (wrong key, nonce, model or a changed byte)")]
    Authentication,
    #[error("{what} has {got} bytes, expected {want}")]
    Length {
        what: &'static str,
        got: usize,
        want: usize,
    },
    #[error("key-encryption key file {path}: {message}")]
    KekFile { path: String, message: String },
}

pub type Result<T> = std::result::Result<T, SealError>;

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| SealError::Random(e.to_string()))?;
    Ok(b)
}

/// A model's data key. Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey([u8; KEY_LEN]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(…)")
    }
}

impl DataKey {
    pub fn generate() -> Result<Self> {
        random().map(Self)
    }
    pub fn from_slice(b: &[u8]) -> Result<Self> {
        let k: [u8; KEY_LEN] = b.try_into().map_err(|_| SealError::Length {
            what: "a data key",
            got: b.len(),
            want: KEY_LEN,
        })?;
        Ok(Self(k))
    }
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

/// The associated data of a model's ciphertext and of its wrapped key.
pub fn model_aad(model_id: &[u8; 16], sha256_hex: &str) -> Vec<u8> {
    let mut aad = b"gridbook-private-model-v1\0".to_vec();
    aad.extend_from_slice(model_id);
    aad.extend_from_slice(sha256_hex.as_bytes());
    aad
}

fn nonce_of(b: &[u8]) -> Result<&XNonce> {
    if b.len() != NONCE_LEN {
        return Err(SealError::Length {
            what: "a nonce",
            got: b.len(),
            want: NONCE_LEN,
        });
    }
    Ok(XNonce::from_slice(b))
}

/// Encrypts `plaintext` in place under `key` (the tag is appended); returns the random nonce.
pub fn seal(key: &DataKey, plaintext: &mut Vec<u8>, aad: &[u8]) -> Result<[u8; NONCE_LEN]> {
    let nonce: [u8; NONCE_LEN] = random()?;
    XChaCha20Poly1305::new(key.0.as_slice().into())
        .encrypt_in_place(XNonce::from_slice(&nonce), aad, plaintext)
        .map_err(|_| SealError::Authentication)?;
    Ok(nonce)
}

/// Decrypts `ciphertext` (tag at the end) in place; `Authentication` when anything differs.
pub fn open(key: &DataKey, nonce: &[u8], ciphertext: &mut Vec<u8>, aad: &[u8]) -> Result<()> {
    XChaCha20Poly1305::new(key.0.as_slice().into())
        .decrypt_in_place(nonce_of(nonce)?, aad, ciphertext)
        .map_err(|_| SealError::Authentication)
}

/// The market's key-encryption key. Its `Debug` never shows the bytes.
pub struct Kek([u8; KEY_LEN]);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(…)")
    }
}

impl Kek {
    pub fn from_bytes(b: [u8; KEY_LEN]) -> Self {
        Self(b)
    }

    /// Reads the KEK file: 64 hex digits (a trailing newline allowed).
    pub fn load(path: &Path) -> Result<Self> {
        let err = |message: String| SealError::KekFile {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let bytes = hex::decode(text.trim()).map_err(|e| err(format!("not hex: {e}")))?;
        let k: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| err(format!("{} bytes, expected {KEY_LEN}", b.len())))?;
        Ok(Self(k))
    }

    /// Reads the KEK file, or creates it (mode 0600, a fresh random key) when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        if path.exists() {
            return Self::load(path);
        }
        let err = |message: String| SealError::KekFile {
            path: path.display().to_string(),
            message,
        };
        let key: [u8; KEY_LEN] = random()?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(path).map_err(|e| err(e.to_string()))?;
        writeln!(f, "{}", hex::encode(key)).map_err(|e| err(e.to_string()))?;
        Ok(Self(key))
    }

    /// `nonce ‖ ciphertext ‖ tag` of `key`.
    pub fn wrap(&self, key: &DataKey, aad: &[u8]) -> Result<Vec<u8>> {
        let mut ct = key.0.to_vec();
        let nonce = seal(&DataKey(self.0), &mut ct, aad)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    pub fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey> {
        let want = NONCE_LEN + KEY_LEN + TAG_LEN;
        if wrapped.len() != want {
            return Err(SealError::Length {
                what: "a wrapped key",
                got: wrapped.len(),
                want,
            });
        }
        let (nonce, ct) = wrapped.split_at(NONCE_LEN);
        let mut ct = ct.to_vec();
        open(&DataKey(self.0), nonce, &mut ct, aad)?;
        DataKey::from_slice(&ct)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_round_trips_and_any_change_is_refused() {
        let key = DataKey::generate().unwrap();
        let aad = model_aad(&[7; 16], "ab");
        let plain = b"ONNX model bytes".repeat(100);
        let mut buf = plain.clone();
        let nonce = seal(&key, &mut buf, &aad).unwrap();
        assert_eq!(buf.len(), plain.len() + TAG_LEN);
        assert!(!buf.windows(16).any(|w| w == b"ONNX model bytes"), "ciphertext shows the plaintext");
        let mut ok = buf.clone();
        open(&key, &nonce, &mut ok, &aad).unwrap();
        assert_eq!(ok, plain);

        let mut flipped = buf.clone();
        flipped[10] ^= 1;
        assert_eq!(open(&key, &nonce, &mut flipped, &aad), Err(SealError::Authentication));
        let mut other_model = buf.clone();
        let aad2 = model_aad(&[8; 16], "ab");
        assert_eq!(open(&key, &nonce, &mut other_model, &aad2), Err(SealError::Authentication));
        let mut other_key = buf.clone();
        let k2 = DataKey::generate().unwrap();
        assert_eq!(open(&k2, &nonce, &mut other_key, &aad), Err(SealError::Authentication));
        let mut short_nonce = buf;
        assert!(matches!(
            open(&key, &nonce[..12], &mut short_nonce, &aad),
            Err(SealError::Length { .. })
        ));
    }

    #[test]
    fn a_wrapped_key_opens_only_under_its_kek_and_model() {
        let kek = Kek::from_bytes([1; 32]);
        let key = DataKey::generate().unwrap();
        let aad = model_aad(&[1; 16], "cd");
        let w = kek.wrap(&key, &aad).unwrap();
        assert_eq!(w.len(), NONCE_LEN + KEY_LEN + TAG_LEN);
        assert_eq!(kek.unwrap(&w, &aad).unwrap(), key);
        assert_eq!(
            Kek::from_bytes([2; 32]).unwrap(&w, &aad),
            Err(SealError::Authentication)
        );
        assert_eq!(kek.unwrap(&w, &model_aad(&[1; 16], "ce")), Err(SealError::Authentication));
        assert!(matches!(kek.unwrap(&w[1..], &aad), Err(SealError::Length { .. })));
        assert_eq!(format!("{key:?} {kek:?}"), "DataKey(…) Kek(…)");
    }

    #[test]
    fn the_kek_file_is_created_once_with_mode_0600_and_read_back() {
        let dir = std::env::temp_dir().join(format!("gb-sealed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("models.kek");
        let a = Kek::load_or_create(&path).unwrap();
        let b = Kek::load_or_create(&path).unwrap();
        assert_eq!(a.0, b.0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "zz").unwrap();
        let e = Kek::load(&path).unwrap_err();
        assert!(e.to_string().contains("not hex"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
