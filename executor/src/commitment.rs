//! Commitments to a batch's outputs: a hash per item and a binary Merkle tree over them.
//!
//! Encoding (stable; verifiers re-implement it):
//! * `item_hash = sha256(canonical output bytes)` — embeddings: the L2-normalised vector as
//!   little-endian `f32` bytes; images: the PNG file bytes.
//! * `leaf = sha256(0x00 || u32_le(len(custom_id)) || custom_id || item_hash)` — binds the
//!   output to its `custom_id`.
//! * `node = sha256(0x01 || left || right)`; on a level with an odd count the last node is
//!   carried up unchanged. The 0x00 / 0x01 prefixes separate leaves from nodes (as in RFC 6962).
//! * The root of zero items is `sha256("")`; the root of one item is its leaf.
//!
//! Leaves are in input order (the order of the lines in the input file that succeeded).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

pub fn sha256(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

/// Canonical bytes of an embedding: little-endian f32.
pub fn embedding_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn leaf_hash(custom_id: &str, item_hash: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update((custom_id.len() as u32).to_le_bytes());
    h.update(custom_id.as_bytes());
    h.update(item_hash);
    h.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Merkle root over leaves (already leaf-hashed).
pub fn merkle_root(leaves: &[Hash]) -> Hash {
    if leaves.is_empty() {
        return sha256(b"");
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = next_level(&level);
    }
    level[0]
}

fn next_level(level: &[Hash]) -> Vec<Hash> {
    level
        .chunks(2)
        .map(|c| {
            if c.len() == 2 {
                node_hash(&c[0], &c[1])
            } else {
                c[0]
            }
        })
        .collect()
}

/// The Merkle root of [`merkle_root`], built one leaf at a time in `O(log n)` memory.
///
/// The carry-up tree of [`merkle_root`] is the RFC 6962 tree: the left child of the root covers
/// the largest power of two below the leaf count. The builder keeps one perfect subtree per set
/// bit of the count so far (a binary counter: pushing a leaf merges equal-sized subtrees), and
/// [`root`](Self::root) folds them right to left, which is where the odd nodes are carried up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MerkleBuilder {
    /// Perfect subtrees, largest first: `(root, log2 of its leaf count)`.
    stack: Vec<(Hash, u32)>,
    leaves: u64,
}

impl MerkleBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one leaf (already leaf-hashed, see [`leaf_hash`]).
    pub fn push(&mut self, leaf: Hash) {
        let mut node = (leaf, 0u32);
        while let Some(&(top, height)) = self.stack.last() {
            if height != node.1 {
                break;
            }
            self.stack.pop();
            node = (node_hash(&top, &node.0), height + 1);
        }
        self.stack.push(node);
        self.leaves += 1;
    }

    /// Leaves pushed so far.
    pub fn len(&self) -> u64 {
        self.leaves
    }

    pub fn is_empty(&self) -> bool {
        self.leaves == 0
    }

    /// The root over the leaves pushed so far (equal to [`merkle_root`] of them).
    pub fn root(&self) -> Hash {
        let mut it = self.stack.iter().rev();
        let Some(&(mut acc, _)) = it.next() else {
            return sha256(b"");
        };
        for (left, _) in it {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

/// One step of an inclusion proof: the sibling hash and whether it is on the left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofStep {
    #[serde(with = "hex_hash")]
    pub sibling: Hash,
    pub sibling_on_left: bool,
}

/// Inclusion proof for leaf `index` (levels where the node is carried up add no step).
pub fn merkle_proof(leaves: &[Hash], mut index: usize) -> Option<Vec<ProofStep>> {
    if index >= leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        let sib = index ^ 1;
        if sib < level.len() {
            proof.push(ProofStep {
                sibling: level[sib],
                sibling_on_left: sib < index,
            });
        }
        level = next_level(&level);
        index /= 2;
    }
    Some(proof)
}

pub fn verify_proof(leaf: &Hash, proof: &[ProofStep], root: &Hash) -> bool {
    let acc = proof.iter().fold(*leaf, |acc, s| {
        if s.sibling_on_left {
            node_hash(&s.sibling, &acc)
        } else {
            node_hash(&acc, &s.sibling)
        }
    });
    &acc == root
}

/// Per-item entry of a commitment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemCommitment {
    pub custom_id: String,
    /// sha256 of the item's canonical bytes, hex.
    pub sha256: String,
}

/// What the executor reports for a batch: per-item hashes and their Merkle root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commitment {
    pub scheme: String,
    pub merkle_root: String,
    pub items: Vec<ItemCommitment>,
}

pub const SCHEME: &str = "gridbook-merkle-v1: leaf=sha256(00|u32le(len id)|id|sha256(item)), node=sha256(01|l|r), odd carried up";

impl Commitment {
    /// Builds the commitment from `(custom_id, item_hash)` in input order.
    pub fn build(items: &[(String, Hash)]) -> Self {
        let leaves: Vec<Hash> = items.iter().map(|(id, h)| leaf_hash(id, h)).collect();
        Self {
            scheme: SCHEME.to_owned(),
            merkle_root: hex::encode(merkle_root(&leaves)),
            items: items
                .iter()
                .map(|(id, h)| ItemCommitment {
                    custom_id: id.clone(),
                    sha256: hex::encode(h),
                })
                .collect(),
        }
    }

    /// Recomputes the root from the listed item hashes (checks a received commitment).
    pub fn recompute_root(&self) -> Option<String> {
        let mut leaves = Vec::with_capacity(self.items.len());
        for it in &self.items {
            let h: Hash = hex::decode(&it.sha256).ok()?.try_into().ok()?;
            leaves.push(leaf_hash(&it.custom_id, &h));
        }
        Some(hex::encode(merkle_root(&leaves)))
    }
}

/// How the outputs were produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Market / workload id, e.g. `EMBED-MINILM-L6`.
    pub workload: String,
    /// sha256 of each model file used, by role (`model`, or `text_encoder`/`unet`/`vae_decoder`).
    pub models: std::collections::BTreeMap<String, String>,
    pub ort_version: String,
    /// `CPUExecutionProvider` or `CUDAExecutionProvider`.
    pub execution_provider: String,
    pub device: String,
    /// Compute dtype of the model (`float32`; the int8 MiniLM stores int8 weights and computes in float32).
    pub dtype: String,
    pub gpu_name: Option<String>,
    pub executor_version: String,
    /// Workload parameters that change outputs (batch budget, steps, guidance ...).
    pub parameters: serde_json::Value,
}

mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(&s)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}
