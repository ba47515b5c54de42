//! One replica process, from the controller's side: a task that starts
//! `llm-serve replica`, copies its stderr into the replica's log file,
//! follows its lifecycle events, checks its health, reconfigures it and
//! stops it gracefully, reporting each step to the controller.

use crate::replica_process::{ReplicaChild, ReplicaEvent};
use llm_serve_proto as pb;
use llm_serve_router::replicas::Connection;
use llm_serve_router::Replica;
use serde_json::Value;
use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

/// Health checks failed in a row before a replica is replaced.
pub const HEALTH_FAILURES: u32 = 3;
/// How long a replica gets to exit after SIGTERM before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Lines of a replica's stderr kept to explain its exit.
const TAIL_LINES: usize = 12;

/// How often and how patiently a replica's health is checked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HealthTimings {
    pub period: Duration,
    pub timeout: Duration,
}

/// Everything a replica process is started with.
#[derive(Clone, Debug)]
pub struct Launch {
    pub replica_id: String,
    pub model_source: String,
    pub engine_kwargs: Value,
    /// How it serves LoRA adapters (its `lora_config`), if it does.
    pub lora: Option<Value>,
    pub threads: usize,
    /// Environment: its accelerator share, memory share, log settings.
    pub env: Vec<(String, String)>,
    pub log_file: PathBuf,
    /// Also copy its log lines to our stderr with this prefix (`run`).
    pub echo_prefix: Option<String>,
    pub health: HealthTimings,
    pub graceful_shutdown_timeout: Duration,
    pub user_config: Option<Value>,
    /// The deployment's secret: the replica answers only calls that carry
    /// it (handed over in its environment, never on its command line).
    pub secret: String,
    /// The largest reply the router takes from it.
    pub max_message_bytes: usize,
}

/// What the controller tells a replica's task.
#[derive(Debug)]
pub enum Command {
    /// Drain (new requests refused, in-flight ones finish, checked every
    /// `wait_loop`, at most `timeout`), then stop the process.
    Stop {
        wait_loop: Duration,
        timeout: Duration,
    },
    Health(HealthTimings),
    Reconfigure(Option<Value>),
}

/// What a replica's task tells the controller.
pub enum Report {
    Spawned {
        pid: u32,
    },
    Listening {
        replica: Arc<Replica>,
    },
    /// Loaded, reconfigured, and ready for requests.
    Running {
        info: pb::InfoResponse,
    },
    /// A `Reconfigure` finished.
    Reconfigured {
        error: Option<String>,
    },
    /// It could not start; the message is the replica's own.
    StartFailed {
        message: String,
    },
    /// It was running and died or failed its health checks.
    Died {
        message: String,
    },
    /// The process is gone; the task has ended.
    Stopped,
}

/// Starts a replica's task; its reports go to `reports` tagged with the
/// replica id. Dropping the command sender stops the replica.
pub fn start(
    launch: Launch,
    reports: mpsc::UnboundedSender<(String, Report)>,
) -> mpsc::UnboundedSender<Command> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(launch, rx, reports));
    tx
}

struct Reporter {
    id: String,
    tx: mpsc::UnboundedSender<(String, Report)>,
}

impl Reporter {
    fn send(&self, r: Report) {
        let _ = self.tx.send((self.id.clone(), r));
    }
}

fn args(l: &Launch) -> Vec<String> {
    let mut args = vec![
        "--model".into(),
        l.model_source.clone(),
        "--replica-id".into(),
        l.replica_id.clone(),
        "--engine-kwargs".into(),
        l.engine_kwargs.to_string(),
        "--threads".into(),
        l.threads.to_string(),
        "--graceful-shutdown-timeout-s".into(),
        l.graceful_shutdown_timeout.as_secs_f64().to_string(),
    ];
    if let Some(lora) = &l.lora {
        args.extend(["--lora-config".into(), lora.to_string()]);
    }
    args
}

async fn run(
    launch: Launch,
    mut commands: mpsc::UnboundedReceiver<Command>,
    reports: mpsc::UnboundedSender<(String, Report)>,
) {
    let report = Reporter {
        id: launch.replica_id.clone(),
        tx: reports,
    };
    let mut env = launch.env.clone();
    env.push((pb::SECRET_ENV.to_string(), launch.secret.clone()));
    let (mut child, mut events) = match ReplicaChild::spawn(&args(&launch), &env, Stdio::piped()) {
        Ok(c) => c,
        Err(e) => {
            report.send(Report::StartFailed {
                message: format!("{e:#}"),
            });
            report.send(Report::Stopped);
            return;
        }
    };
    let pid = child.pid().unwrap_or(0);
    report.send(Report::Spawned { pid });
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    if let Some(stderr) = child.child.stderr.take() {
        tokio::spawn(copy_log(
            stderr,
            launch.log_file.clone(),
            launch
                .echo_prefix
                .clone()
                .map(|p| format!("({p} pid={pid})")),
            tail.clone(),
        ));
    }
    let mut user_config = launch.user_config.clone();
    let mut timings = launch.health;
    let mut replica: Option<Arc<Replica>> = None;
    let mut running = false;
    let mut events_open = true;
    let mut failures = 0u32;
    let mut next_check = Instant::now() + timings.period;
    loop {
        let until_check = tokio::time::sleep_until(next_check.into());
        tokio::select! {
            e = events.next(), if events_open => match e {
                Some(ReplicaEvent::Listening { port }) => {
                    let conn = Connection {
                        address: format!("127.0.0.1:{port}"),
                        secret: Some(launch.secret.clone()),
                        max_message_bytes: launch.max_message_bytes,
                    };
                    match Replica::new(&launch.replica_id, &conn) {
                        Ok(r) => {
                            replica = Some(r.clone());
                            report.send(Report::Listening { replica: r });
                        }
                        Err(e) => tracing::error!(replica = %launch.replica_id, "{e}"),
                    }
                }
                Some(ReplicaEvent::Ready) => {
                    let Some(r) = &replica else { continue };
                    match initialize(r, user_config.as_ref()).await {
                        Ok(info) => {
                            running = true;
                            next_check = Instant::now() + timings.period;
                            report.send(Report::Running { info });
                        }
                        Err(message) => {
                            report.send(Report::StartFailed { message });
                            child.stop(KILL_GRACE).await;
                            report.send(Report::Stopped);
                            return;
                        }
                    }
                }
                Some(ReplicaEvent::Failed { message }) => {
                    report.send(Report::StartFailed { message });
                    child.stop(KILL_GRACE).await;
                    report.send(Report::Stopped);
                    return;
                }
                None => events_open = false,
            },
            status = child.child.wait() => {
                let status = match status {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("unknown status: {e}"),
                };
                // Let the log copier catch the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let message = match last_error(&tail) {
                    Some(e) => format!("the replica process exited ({status}): {e}"),
                    None => format!("the replica process exited ({status})"),
                };
                report.send(if running {
                    Report::Died { message }
                } else {
                    Report::StartFailed { message }
                });
                report.send(Report::Stopped);
                return;
            }
            _ = until_check, if running => {
                next_check = Instant::now() + timings.period;
                let Some(r) = &replica else { continue };
                match check_health(r, timings.timeout).await {
                    Ok(()) => {
                        failures = 0;
                        r.set_suspect(false);
                    }
                    Err(why) => {
                        failures += 1;
                        // No new requests until it answers again.
                        r.set_suspect(true);
                        tracing::warn!(replica = %launch.replica_id, "health check failed ({failures} in a row): {why}");
                        if failures >= HEALTH_FAILURES {
                            report.send(Report::Died {
                                message: format!("the replica failed {failures} health checks in a row (last: {why})"),
                            });
                            child.kill().await;
                            report.send(Report::Stopped);
                            return;
                        }
                    }
                }
            }
            cmd = commands.recv() => match cmd {
                Some(Command::Stop { wait_loop, timeout }) => {
                    if let Some(r) = &replica {
                        drain(r, &launch.replica_id, wait_loop, timeout).await;
                    }
                    child.stop(KILL_GRACE).await;
                    report.send(Report::Stopped);
                    return;
                }
                None => {
                    child.stop(KILL_GRACE).await;
                    report.send(Report::Stopped);
                    return;
                }
                Some(Command::Health(t)) => {
                    timings = t;
                    next_check = Instant::now() + timings.period;
                }
                Some(Command::Reconfigure(config)) => {
                    user_config = config;
                    if let (true, Some(r)) = (running, &replica) {
                        let error = reconfigure(r, user_config.as_ref()).await.err();
                        report.send(Report::Reconfigured { error });
                    }
                }
            },
        }
    }
}

/// After the model loaded: the replica's facts, then its `user_config`.
async fn initialize(r: &Replica, user_config: Option<&Value>) -> Result<pb::InfoResponse, String> {
    let mut last = String::new();
    for _ in 0..5 {
        match tokio::time::timeout(Duration::from_secs(10), r.client().info(pb::InfoRequest {}))
            .await
        {
            Ok(Ok(info)) => {
                reconfigure(r, user_config).await?;
                return Ok(info.into_inner());
            }
            Ok(Err(s)) => last = s.message().to_string(),
            Err(_) => last = "no answer in 10 s".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "the replica loaded its model but does not answer: {last}"
    ))
}

async fn reconfigure(r: &Replica, user_config: Option<&Value>) -> Result<(), String> {
    let Some(config) = user_config else {
        return Ok(());
    };
    let request = pb::ReconfigureRequest {
        user_config_json: config.to_string(),
    };
    match tokio::time::timeout(Duration::from_secs(30), r.client().reconfigure(request)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(s)) => Err(format!("reconfigure failed: {}", s.message())),
        Err(_) => Err("reconfigure did not answer in 30 s".into()),
    }
}

async fn check_health(r: &Replica, timeout: Duration) -> Result<(), String> {
    use pb::health_response::State;
    match tokio::time::timeout(timeout, r.client().health(pb::HealthRequest {})).await {
        Ok(Ok(h)) => {
            let h = h.into_inner();
            match State::try_from(h.state) {
                Ok(State::Failed) => Err(format!("the replica reports a failure: {}", h.message)),
                _ => Ok(()),
            }
        }
        Ok(Err(s)) => Err(s.message().to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// Refuses new requests and waits for in-flight ones, checking every
/// `wait_loop`, for at most `timeout`.
async fn drain(r: &Replica, id: &str, wait_loop: Duration, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let wait_loop = wait_loop.max(Duration::from_millis(50));
    loop {
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            r.client().drain(pb::DrainRequest {}),
        )
        .await;
        match answer {
            Ok(Ok(d)) if d.get_ref().ongoing_requests == 0 => return,
            Ok(Ok(d)) => {
                let now = Instant::now();
                if now >= deadline {
                    tracing::warn!(
                        replica = %id,
                        "{} requests still running after graceful_shutdown_timeout_s; stopping anyway",
                        d.get_ref().ongoing_requests
                    );
                    return;
                }
                tokio::time::sleep(wait_loop.min(deadline - now)).await;
            }
            _ => return,
        }
    }
}

/// The replica's own last error line, when it wrote one (`error: ...`
/// from the command, or an ERROR log line).
fn last_error(tail: &Mutex<VecDeque<String>>) -> Option<String> {
    let t = tail.lock().unwrap_or_else(|p| p.into_inner());
    t.iter()
        .rev()
        .find(|l| {
            l.starts_with("error: ")
                || l.starts_with("ERROR ")
                || l.contains("\"levelname\":\"ERROR\"")
        })
        .cloned()
}

/// Copies a replica's stderr into its log file (and our stderr, with a
/// prefix, when asked), keeping the last lines.
async fn copy_log(
    stderr: tokio::process::ChildStderr,
    path: PathBuf,
    echo: Option<String>,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let mut file = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::error!("cannot write the replica log {}: {e}", path.display());
            None
        }
    };
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(f) = file.as_mut() {
            let _ = writeln!(f, "{line}");
        }
        if let Some(prefix) = &echo {
            eprintln!("{prefix} {line}");
        }
        let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line);
    }
}
