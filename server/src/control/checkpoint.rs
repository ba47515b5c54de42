//! The controller's goal state on disk, so a restarted daemon brings the
//! same applications back without a new deploy, and the replica processes
//! it started, so a restarted daemon can make sure none outlived the old
//! one (replicas also stop when their parent dies; this is the backstop).
//! Files are written whole and renamed into place.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What was last deployed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Goal {
    /// The config as submitted (files inlined); `None` after a delete.
    pub config: Option<Value>,
    /// Each application's `last_deployed_time_s`.
    pub deployed_s: BTreeMap<String, f64>,
}

/// A replica process a daemon started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaProcess {
    pub replica_id: String,
    pub pid: u32,
    /// When the process started (`/proc/<pid>/stat`), to tell a reused
    /// pid from ours.
    pub start_ticks: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Checkpoint {
    dir: PathBuf,
}

impl Checkpoint {
    pub fn new(dir: &Path) -> Self {
        Checkpoint {
            dir: dir.to_path_buf(),
        }
    }

    fn goal_path(&self) -> PathBuf {
        self.dir.join("checkpoint.json")
    }

    fn replicas_path(&self) -> PathBuf {
        self.dir.join("replicas.json")
    }

    pub fn load_goal(&self) -> Option<Goal> {
        let text = std::fs::read_to_string(self.goal_path()).ok()?;
        match serde_json::from_str(&text) {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::error!(
                    "ignoring the unreadable checkpoint {}: {e}",
                    self.goal_path().display()
                );
                None
            }
        }
    }

    pub fn save_goal(&self, goal: &Goal) {
        write_json(&self.goal_path(), goal);
    }

    pub fn save_replicas(&self, replicas: &[(String, u32)]) {
        let list: Vec<ReplicaProcess> = replicas
            .iter()
            .map(|(id, pid)| ReplicaProcess {
                replica_id: id.clone(),
                pid: *pid,
                start_ticks: start_ticks(*pid),
            })
            .collect();
        write_json(&self.replicas_path(), &list);
    }

    /// Stops the replica processes an earlier daemon left running.
    pub fn stop_orphans(&self) -> usize {
        let Ok(text) = std::fs::read_to_string(self.replicas_path()) else {
            return 0;
        };
        let list: Vec<ReplicaProcess> = serde_json::from_str(&text).unwrap_or_default();
        let mut stopped = 0;
        for p in list {
            let alive = start_ticks(p.pid);
            if alive.is_none() || alive != p.start_ticks || !is_replica(p.pid, &p.replica_id) {
                continue;
            }
            tracing::warn!(
                "stopping replica {} (pid {}) left by an earlier daemon",
                p.replica_id,
                p.pid
            );
            #[cfg(unix)]
            // SAFETY: kill(2) on a pid we checked is our replica.
            unsafe {
                libc::kill(p.pid as i32, libc::SIGKILL);
            }
            stopped += 1;
        }
        self.save_replicas(&[]);
        stopped
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) {
    let tmp = path.with_extension("tmp");
    let result = serde_json::to_vec_pretty(value)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        tracing::error!("cannot write {}: {e}", path.display());
    }
}

/// A live process's start time in clock ticks since boot; `None` when
/// there is no such process (or it is a zombie).
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether `pid` runs `llm-serve replica` for `replica_id`.
fn is_replica(pid: u32, replica_id: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.contains(&b"replica".as_slice()) && args.contains(&replica_id.as_bytes())
}
