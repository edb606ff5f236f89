//! The agent's state file (JSON, replaced atomically): node id, challenge status, open asks and
//! a bounded list of finished assignment ids (oldest dropped first) so that a redelivered
//! assignment is not run twice, even across restarts.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{ExecutorError, Result};

/// An ask the agent placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AskState {
    pub id: String,
    pub price: u64,
    pub qty: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeState {
    pub node_id: Option<Uuid>,
    pub challenge_passed: bool,
    /// Market → the node's resting ask.
    pub asks: BTreeMap<String, AskState>,
    /// Finished (result published or cancelled) assignments, oldest first.
    pub done: VecDeque<Uuid>,
}

impl NodeState {
    /// Reads the file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| ExecutorError::Config(format!("state file {}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(ExecutorError::io(path, e)),
        }
    }

    /// Writes to `<path>.tmp`, then renames over `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| ExecutorError::io(dir, e))?;
        }
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| ExecutorError::Config(format!("state: {e}")))?;
        std::fs::write(&tmp, text).map_err(|e| ExecutorError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| ExecutorError::io(path, e))
    }

    pub fn is_done(&self, id: &Uuid) -> bool {
        self.done.contains(id)
    }

    /// Records a finished assignment, keeping at most `capacity` ids.
    pub fn mark_done(&mut self, id: Uuid, capacity: usize) {
        if self.done.contains(&id) {
            return;
        }
        self.done.push_back(id);
        while self.done.len() > capacity.max(1) {
            self.done.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_set_is_bounded_and_round_trips() {
        let mut s = NodeState::default();
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            s.mark_done(*id, 3);
        }
        s.mark_done(ids[4], 3);
        assert_eq!(s.done.len(), 3);
        assert!(!s.is_done(&ids[0]) && !s.is_done(&ids[1]));
        assert!(ids[2..].iter().all(|i| s.is_done(i)));
        let dir = std::env::temp_dir().join(format!("gridbook-state-{}", Uuid::new_v4()));
        let path = dir.join("state.json");
        assert_eq!(NodeState::load(&path).unwrap(), NodeState::default());
        s.node_id = Some(Uuid::new_v4());
        s.save(&path).unwrap();
        assert_eq!(NodeState::load(&path).unwrap(), s);
        let _ = std::fs::remove_dir_all(dir);
    }
}
