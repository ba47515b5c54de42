//! `llm-serve start` (the daemon, in the background unless
//! `--foreground`) and `llm-serve run CONFIG` (the daemon in the
//! foreground with a config deployed; Ctrl-C tears it all down).

use crate::cli::{DaemonArgs, RunArgs, StartArgs};
use crate::config::schema::{GrpcOptions, HttpOptions, ProxyLocation};
use crate::daemon::{self, Settings};
use crate::resources::Overrides;
use anyhow::{Context, Result};
use llm_serve_router::RouterConfig;
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How long `start` waits for the daemon's admin API.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn overrides(d: &DaemonArgs) -> Result<Overrides> {
    let resources: BTreeMap<String, f64> = match &d.resources {
        Some(text) => serde_json::from_str(text).with_context(|| {
            format!("--resources must be a JSON object of names to amounts, got {text}")
        })?,
        None => BTreeMap::new(),
    };
    for (k, v) in &resources {
        if !v.is_finite() || *v < 0.0 {
            anyhow::bail!("--resources: {k} must be a number >= 0, got {v}");
        }
    }
    for (flag, v) in [("--num-cpus", d.num_cpus), ("--memory", d.memory)] {
        if let Some(v) = v {
            if !v.is_finite() || v < 0.0 {
                anyhow::bail!("{flag} must be a number >= 0, got {v}");
            }
        }
    }
    Ok(Overrides {
        num_cpus: d.num_cpus,
        num_gpus: d.num_gpus,
        memory_bytes: d.memory,
        resources,
    })
}

/// The admin API's token: `--admin-token`, else the API key.
fn admin_token(d: &DaemonArgs) -> Option<String> {
    d.admin_token
        .clone()
        .or_else(|| d.api_key.clone())
        .filter(|t| !t.is_empty())
}

fn body_read_timeout(d: &DaemonArgs) -> Result<Duration> {
    let s = d.body_read_timeout_s;
    if !s.is_finite() || s <= 0.0 {
        anyhow::bail!("--body-read-timeout-s must be a positive number of seconds, got {s}");
    }
    Ok(crate::config::duration(s))
}

/// The daemon's settings from the shared flags and the HTTP/gRPC options.
pub fn settings(
    d: &DaemonArgs,
    http: HttpOptions,
    grpc: GrpcOptions,
    proxy_location: ProxyLocation,
) -> Result<Settings> {
    Ok(Settings {
        http,
        grpc,
        proxy_location,
        admin_host: d.dashboard_host.clone(),
        admin_port: d.dashboard_port,
        admin_token: admin_token(d),
        overrides: overrides(d)?,
        state_dir: d
            .state_dir
            .clone()
            .unwrap_or_else(daemon::default_state_dir),
        persist: false,
        log_to_stderr: true,
        echo_replica_logs: true,
        log_level: Default::default(),
        router: RouterConfig {
            api_key: d.api_key.clone().filter(|k| !k.is_empty()),
            max_body_bytes: d.max_request_body_bytes,
            body_read_timeout: body_read_timeout(d)?,
            allow_runtime_lora_updating: runtime_lora_updating(),
        },
        shutdown_grace: Duration::from_secs(30),
        exit_on_deploy_failure: true,
    })
}

/// Whether vLLM's run-time adapter endpoints are served:
/// `LLM_SERVE_ALLOW_RUNTIME_LORA_UPDATING` (or vLLM's
/// `VLLM_ALLOW_RUNTIME_LORA_UPDATING`) set to true or 1.
fn runtime_lora_updating() -> bool {
    let on = |k: &str| {
        std::env::var(k)
            .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true"))
    };
    let allowed =
        on("LLM_SERVE_ALLOW_RUNTIME_LORA_UPDATING") || on("VLLM_ALLOW_RUNTIME_LORA_UPDATING");
    if allowed {
        tracing::warn!("LoRA dynamic loading & unloading is enabled in the API server. This should ONLY be used for local development!");
    }
    allowed
}

fn proxy_location(text: &str) -> Result<ProxyLocation> {
    serde_json::from_value(serde_json::Value::String(text.to_string())).map_err(|_| {
        anyhow::anyhow!("--proxy-location must be Disabled, HeadOnly or EveryNode, got {text}")
    })
}

pub fn start(args: StartArgs) -> Result<()> {
    let http = HttpOptions {
        host: args.http_host.clone(),
        port: args.http_port,
        request_timeout_s: args.request_timeout_s,
        keep_alive_timeout_s: args.keep_alive_timeout_s,
        ..HttpOptions::default()
    };
    if let Some(t) = http.request_timeout_s {
        if !t.is_finite() || t <= 0.0 {
            anyhow::bail!("--request-timeout-s must be a positive number of seconds, got {t}");
        }
    }
    if !http.keep_alive_timeout_s.is_finite() || http.keep_alive_timeout_s < 0.0 {
        anyhow::bail!(
            "--keep-alive-timeout-s must be a number of seconds >= 0, got {}",
            http.keep_alive_timeout_s
        );
    }
    if !args.grpc_servicer_functions.is_empty() {
        anyhow::bail!(
            "--grpc-servicer-functions: a gRPC proxy is not supported yet (the OpenAI API is HTTP)"
        );
    }
    let grpc = GrpcOptions {
        port: args.grpc_port,
        ..GrpcOptions::default()
    };
    let mut s = settings(
        &args.daemon,
        http,
        grpc,
        proxy_location(&args.proxy_location)?,
    )?;
    s.persist = true;
    s.echo_replica_logs = false;
    s.exit_on_deploy_failure = false;
    if args.foreground || args.detached {
        s.log_to_stderr = !args.detached;
        return runtime()?.block_on(daemon::run(s, None, None));
    }
    spawn_detached(&s)
}

/// Starts `llm-serve start --detached` in its own session and waits for
/// its admin API to answer.
fn spawn_detached(s: &Settings) -> Result<()> {
    std::fs::create_dir_all(&s.state_dir)
        .with_context(|| format!("cannot create {}", s.state_dir.display()))?;
    // Fail here, not in the background, when a daemon holds the state dir.
    drop(daemon::StateLock::take(&s.state_dir)?);
    let logs = daemon::logs_dir(&s.state_dir);
    std::fs::create_dir_all(&logs)?;
    let out_path = logs.join("daemon.out");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out_path)
        .with_context(|| format!("cannot write {}", out_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the llm-serve executable")?;
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    args.push("--detached".into());
    if !args
        .iter()
        .any(|a| a == "--state-dir" || a.starts_with("--state-dir="))
    {
        args.push("--state-dir".into());
        args.push(s.state_dir.display().to_string());
    }
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid in the child before exec only detaches it from
        // our session; it touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().context("cannot start the llm-serve daemon")?;
    let address = format!("http://{}:{}", s.admin_host, s.admin_port);
    let url = format!("{address}/api/serve/applications/");
    let deadline = Instant::now() + START_TIMEOUT;
    let client = reqwest::Client::new();
    let rt = runtime()?;
    let mut probe = client.get(&url).timeout(Duration::from_secs(2));
    if let Some(t) = &s.admin_token {
        probe = probe.bearer_auth(t);
    }
    loop {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&out_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            anyhow::bail!(
                "the llm-serve daemon exited ({status}):\n{}",
                tail.join("\n")
            );
        }
        let up = rt.block_on(async {
            match probe.try_clone() {
                Some(p) => p.send().await.is_ok_and(|r| r.status().is_success()),
                None => false,
            }
        });
        if up {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the llm-serve daemon (pid {}) did not answer on {address} within {}s; see {}",
                child.id(),
                START_TIMEOUT.as_secs(),
                out_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let http = if s.proxy_location == ProxyLocation::Disabled {
        "no HTTP proxy".to_string()
    } else {
        format!("HTTP proxy on http://{}:{}", s.http.host, s.http.port)
    };
    println!(
        "Started llm-serve (pid {}): {http}, admin API on {address}, state and logs in {}.",
        child.id(),
        s.state_dir.display()
    );
    println!(
        "Deploy applications with `llm-serve deploy CONFIG`; stop it with `llm-serve shutdown`."
    );
    Ok(())
}

pub fn run(args: RunArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read {}", args.config.display()))?;
    let base_dir = args.config.parent().filter(|p| !p.as_os_str().is_empty());
    let mut checked = crate::config::check(crate::config::parse_text(&text)?, base_dir)
        .with_context(|| format!("{} is not a valid deploy config", args.config.display()))?;
    for warning in crate::config::warnings(&checked) {
        eprintln!("warning: {warning}");
    }
    if let Some(h) = &args.http_host {
        checked.config.http_options.host = h.clone();
    }
    if let Some(p) = args.http_port {
        checked.config.http_options.port = p;
    }
    let http = checked.config.http_options.clone();
    if let Some(obj) = checked.value.as_object_mut() {
        obj.insert("http_options".into(), serde_json::to_value(&http)?);
    }
    let mut s = settings(
        &args.daemon,
        http,
        checked.config.grpc_options.clone(),
        checked.config.proxy_location,
    )?;
    s.log_level = checked.config.logging_config.log_level;
    eprintln!("Running config file: '{}'.", args.config.display());
    runtime()?.block_on(daemon::run(
        s,
        Some(checked),
        Some("Got KeyboardInterrupt, shutting down..."),
    ))
}
