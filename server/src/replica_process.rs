//! Replica child processes from the parent's side: starting
//! `llm-serve replica`, reading its lifecycle events, and stopping it.
//!
//! The child writes one JSON object per line on stdout:
//! `{"event":"listening","port":N}` once bound, then `{"event":"ready"}`
//! when the model is loaded or `{"event":"failed","message":...}`.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// The parent's pid, so a replica can tell its parent is gone.
pub const PARENT_PID_ENV: &str = "LLM_SERVE_PARENT_PID";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum ReplicaEvent {
    Listening { port: u16 },
    Ready,
    Failed { message: String },
}

impl ReplicaEvent {
    /// Writes the event to stdout (the child's side).
    pub fn emit(&self) {
        if let Ok(line) = serde_json::to_string(self) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

/// A started replica process.
pub struct ReplicaChild {
    pub child: Child,
}

/// A replica's lifecycle events, read from its stdout.
pub struct ReplicaEvents {
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl ReplicaEvents {
    /// The next event; `None` when the child closed stdout.
    pub async fn next(&mut self) -> Option<ReplicaEvent> {
        loop {
            match self.lines.next_line().await {
                Ok(Some(line)) => match serde_json::from_str(&line) {
                    Ok(e) => return Some(e),
                    Err(_) => tracing::debug!("replica stdout: {line}"),
                },
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

impl ReplicaChild {
    /// Starts `llm-serve replica` with these arguments (after `replica`),
    /// its stderr going where `stderr` says.
    pub fn spawn(
        args: &[String],
        env: &[(String, String)],
        stderr: Stdio,
    ) -> Result<(Self, ReplicaEvents)> {
        let exe = std::env::current_exe().context("cannot find the llm-serve executable")?;
        let mut cmd = Command::new(exe);
        cmd.arg("replica")
            .args(args)
            .env(PARENT_PID_ENV, std::process::id().to_string())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("cannot start a replica process")?;
        let stdout = child
            .stdout
            .take()
            .context("the replica's stdout is not piped")?;
        Ok((
            ReplicaChild { child },
            ReplicaEvents {
                lines: BufReader::new(stdout).lines(),
            },
        ))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGKILL, and waits for the exit.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM (the replica drains), then SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        #[cfg(unix)]
        if let Some(pid) = self.child.id() {
            // SAFETY: sending a signal to our own child touches no memory.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!("the replica did not stop within {grace:?}; killing it");
            let _ = self.child.kill().await;
        }
    }
}
