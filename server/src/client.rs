//! The commands that talk to a running llm-serve over its admin REST API:
//! `deploy`, `status`, `config` and `shutdown`.

use crate::cli::{AddressArgs, DeployArgs, ShutdownArgs, StatusArgs};
use crate::control::checkpoint::start_ticks;
use crate::control::status::InstanceDetails;
use anyhow::{Context, Result};
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

/// How long `shutdown` waits for the daemon to exit.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(120);

struct Admin {
    base: String,
    client: reqwest::Client,
    token: Option<String>,
    rt: tokio::runtime::Runtime,
}

impl Admin {
    fn new(a: &AddressArgs) -> Result<Self> {
        let base = a.address.trim_end_matches('/').to_string();
        let base = if base.contains("://") {
            base
        } else {
            format!("http://{base}")
        };
        let token = a
            .token
            .clone()
            .or_else(|| std::env::var("LLM_SERVE_API_KEY").ok())
            .filter(|t| !t.is_empty());
        Ok(Admin {
            base,
            client: reqwest::Client::new(),
            token,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?,
        })
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        anyhow::anyhow!(
            "cannot reach llm-serve at {} ({e}). Is it running? Start it with `llm-serve start`, or pass its address with -a / LLM_SERVE_ADDRESS.",
            self.base
        )
    }

    fn send(&self, mut req: reqwest::RequestBuilder) -> Result<(reqwest::StatusCode, String)> {
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        self.rt.block_on(async {
            let r = req
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .map_err(|e| self.unreachable(e))?;
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            Ok((status, body))
        })
    }

    fn details(&self) -> Result<InstanceDetails> {
        let (status, body) = self.send(
            self.client
                .get(format!("{}/api/serve/applications/", self.base)),
        )?;
        if !status.is_success() {
            anyhow::bail!("llm-serve answered {status}: {}", error_text(&body));
        }
        serde_json::from_str(&body).context("llm-serve's answer is not the expected status JSON")
    }
}

fn error_text(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| body.to_string())
}

pub fn deploy(args: DeployArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read {}", args.config.display()))?;
    let base_dir = args.config.parent().filter(|p| !p.as_os_str().is_empty());
    // Checked here first, so a bad config changes nothing; llm_configs
    // files are read in relative to the config.
    let checked = crate::config::check(crate::config::parse_text(&text)?, base_dir)
        .with_context(|| format!("{} is not a valid deploy config", args.config.display()))?;
    for warning in crate::config::warnings(&checked) {
        eprintln!("warning: {warning}");
    }
    let body = serde_json::to_vec(&checked.value)?;
    if body.len() > crate::admin::MAX_BODY_BYTES {
        anyhow::bail!(
            "{} is {} bytes as JSON, over the admin API's limit of {} bytes (it would be refused with 413 Payload Too Large)",
            args.config.display(),
            body.len(),
            crate::admin::MAX_BODY_BYTES
        );
    }
    let admin = Admin::new(&args.address)?;
    let (status, body) = admin.send(
        admin
            .client
            .put(format!("{}/api/serve/applications/", admin.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body),
    )?;
    if !status.is_success() {
        anyhow::bail!("the deploy was refused ({status}): {}", error_text(&body));
    }
    println!("Sent deploy request successfully!");
    println!(" * Use `llm-serve status` to check applications' statuses.");
    println!(" * Use `llm-serve config` to see the current application config(s).");
    Ok(())
}

pub fn status(args: StatusArgs) -> Result<()> {
    let admin = Admin::new(&args.address)?;
    let mut overview = admin.details()?.overview();
    if let Some(name) = &args.name {
        overview.applications.retain(|n, _| n == name);
        if overview.applications.is_empty() {
            anyhow::bail!("no application named {name:?} is deployed");
        }
    }
    print!(
        "{}",
        serde_yaml_ng::to_string(&overview).context("cannot write the status as YAML")?
    );
    Ok(())
}

pub fn config(args: StatusArgs) -> Result<()> {
    let admin = Admin::new(&args.address)?;
    let details = admin.details()?;
    let configs: Vec<&serde_json::Value> = details
        .applications
        .values()
        .filter(|a| args.name.as_ref().is_none_or(|n| &a.name == n))
        .filter_map(|a| a.deployed_app_config.as_ref())
        .collect();
    if configs.is_empty() {
        match &args.name {
            Some(n) => anyhow::bail!("no application named {n:?} is deployed"),
            None => {
                println!("No config has been deployed.");
                return Ok(());
            }
        }
    }
    let docs: Result<Vec<String>> = configs
        .iter()
        .map(|c| serde_yaml_ng::to_string(c).context("cannot write the config as YAML"))
        .collect();
    print!("{}", docs?.join("---\n"));
    Ok(())
}

pub fn shutdown(args: ShutdownArgs) -> Result<()> {
    let admin = Admin::new(&args.address)?;
    let details = admin.details()?;
    if !args.yes && !confirm()? {
        println!("Aborted.");
        return Ok(());
    }
    let (status, body) = admin.send(
        admin
            .client
            .post(format!("{}/api/llm-serve/shutdown", admin.base))
            .json(&serde_json::json!({})),
    )?;
    if !status.is_success() {
        anyhow::bail!("the shutdown was refused ({status}): {}", error_text(&body));
    }
    let Some(pid) = details.controller_info.pid else {
        println!("Sent the shutdown request.");
        return Ok(());
    };
    let deadline = Instant::now() + SHUTDOWN_WAIT;
    while start_ticks(pid).is_some() {
        if Instant::now() > deadline {
            anyhow::bail!(
                "llm-serve (pid {pid}) is still running {}s after the shutdown request",
                SHUTDOWN_WAIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("llm-serve (pid {pid}) shut down: every application and replica is stopped.");
    Ok(())
}

fn confirm() -> Result<bool> {
    print!("This will shut down llm-serve and delete every application. Continue? [y/N] ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "Yes"))
}
