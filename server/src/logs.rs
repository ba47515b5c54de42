//! Logging as Ray Serve writes it: TEXT lines
//! `LEVEL TIME COMPONENT ID [REQUEST_ID ROUTE APPLICATION] FILE:LINE - MESSAGE`
//! or JSON objects with the same facts under Ray's keys (`levelname`,
//! `asctime`, `deployment`, `replica`, `request_id`, `route`,
//! `application`, `message`), switchable at run time by a deploy config's
//! `logging_config`. The daemon writes its controller and proxy lines to
//! their own files in the logs directory (and to stderr when it runs in
//! the foreground); a replica writes to stderr, which its controller
//! copies into the replica's log file.

use crate::config::schema::{Encoding, LogLevel};
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{filter, reload, EnvFilter, Layer, Registry};

/// A replica's encoding, level, access-log switch and identity, passed
/// by its controller.
pub const ENCODING_ENV: &str = "LLM_SERVE_LOG_ENCODING";
pub const LEVEL_ENV: &str = "LLM_SERVE_LOG_LEVEL";
pub const ACCESS_LOG_ENV: &str = "LLM_SERVE_ENABLE_ACCESS_LOG";
pub const APPLICATION_ENV: &str = "LLM_SERVE_APPLICATION";
pub const DEPLOYMENT_ENV: &str = "LLM_SERVE_DEPLOYMENT";

/// Dependencies that say too much at INFO.
const QUIET: &str = "h2=warn,hyper=warn,hyper_util=warn,tower=warn,tonic=warn,reqwest=warn";

static ACCESS_LOG: AtomicBool = AtomicBool::new(true);

/// Whether per-request access lines are written (`enable_access_log`).
pub fn access_log_enabled() -> bool {
    ACCESS_LOG.load(Ordering::Relaxed)
}

/// Who writes a line, for its component columns.
#[derive(Clone, Debug)]
pub enum Component {
    Controller {
        pid: u32,
    },
    Proxy {
        node_ip: String,
    },
    Replica {
        application: String,
        deployment: String,
        replica: String,
    },
}

impl Component {
    fn columns(&self) -> (&str, String) {
        match self {
            Component::Controller { pid } => ("controller", pid.to_string()),
            Component::Proxy { node_ip } => ("proxy", node_ip.clone()),
            Component::Replica {
                deployment,
                replica,
                ..
            } => (deployment, replica.clone()),
        }
    }

    fn application(&self) -> Option<&str> {
        match self {
            Component::Replica { application, .. } => Some(application),
            _ => None,
        }
    }
}

/// Whether an event belongs to the proxy (the HTTP side) rather than the
/// controller.
fn is_proxy(target: &str) -> bool {
    target.starts_with("llm_serve::proxy") || target.starts_with("llm_serve_router")
}

/// The event's fields, the message apart.
#[derive(Default)]
struct Fields {
    message: String,
    named: BTreeMap<&'static str, String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.named.insert(field.name(), value.to_string());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.named.insert(field.name(), format!("{value:?}"));
        }
    }
}

/// The line format, shared by every writer of a process.
#[derive(Clone)]
struct ServeFormat {
    json: Arc<AtomicU8>,
    /// For the daemon: controller or proxy by the event's target.
    controller: Component,
    proxy: Option<Component>,
}

impl ServeFormat {
    fn component(&self, target: &str) -> &Component {
        match &self.proxy {
            Some(p) if is_proxy(target) => p,
            _ => &self.controller,
        }
    }
}

impl<S, N> FormatEvent<S, N> for ServeFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut f = Fields::default();
        event.record(&mut f);
        let component = self.component(meta.target());
        let (name, id) = component.columns();
        let level = match *meta.level() {
            tracing::Level::ERROR => "ERROR",
            tracing::Level::WARN => "WARNING",
            tracing::Level::INFO => "INFO",
            tracing::Level::DEBUG => "DEBUG",
            tracing::Level::TRACE => "TRACE",
        };
        let time = chrono::Local::now().format("%Y-%m-%d %H:%M:%S,%3f");
        let file = meta
            .file()
            .map(|p| p.rsplit('/').next().unwrap_or(p))
            .unwrap_or("?");
        let line = meta.line().unwrap_or(0);
        let request_id = f.named.remove("request_id");
        let route = f.named.remove("route");
        let application = f
            .named
            .remove("application")
            .or_else(|| component.application().map(str::to_owned));
        let deployment = f.named.remove("deployment");
        let replica = f.named.remove("replica");
        if self.json.load(Ordering::Relaxed) == 1 {
            let mut obj = serde_json::Map::new();
            obj.insert("levelname".into(), level.into());
            obj.insert("asctime".into(), time.to_string().into());
            match component {
                Component::Replica { .. } => {
                    obj.insert(
                        "deployment".into(),
                        deployment.unwrap_or_else(|| name.to_string()).into(),
                    );
                    obj.insert("replica".into(), replica.unwrap_or(id).into());
                }
                _ => {
                    obj.insert("component_name".into(), name.into());
                    obj.insert("component_id".into(), id.into());
                    if let Some(d) = deployment {
                        obj.insert("deployment".into(), d.into());
                    }
                    if let Some(r) = replica {
                        obj.insert("replica".into(), r.into());
                    }
                }
            }
            for (k, v) in [
                ("request_id", request_id),
                ("route", route),
                ("application", application),
            ] {
                if let Some(v) = v {
                    obj.insert(k.into(), v.into());
                }
            }
            obj.insert("filename".into(), file.into());
            obj.insert("lineno".into(), line.into());
            obj.insert("message".into(), f.message.into());
            for (k, v) in f.named {
                obj.insert(k.into(), v.into());
            }
            return writeln!(w, "{}", serde_json::Value::Object(obj));
        }
        write!(
            w,
            "{level} {time} {} {}",
            deployment.as_deref().unwrap_or(name),
            replica.unwrap_or(id)
        )?;
        if let Some(r) = &request_id {
            write!(w, " {r}")?;
        }
        if let Some(r) = &route {
            write!(w, " {r}")?;
        }
        if let Some(a) = &application {
            write!(w, " {a}")?;
        }
        write!(w, " {file}:{line} - {}", f.message)?;
        let mut extra = String::new();
        for (k, v) in &f.named {
            let _ = write!(extra, " {k}={v}");
        }
        writeln!(w, "{extra}")
    }
}

/// Changes the daemon's logging when a deploy config's `logging_config`
/// says so.
pub struct LogControl {
    json: Arc<AtomicU8>,
    filter: Option<reload::Handle<EnvFilter, Registry>>,
}

impl LogControl {
    pub fn apply(&self, encoding: Encoding, level: LogLevel, enable_access_log: bool) {
        self.json
            .store(u8::from(encoding == Encoding::Json), Ordering::Relaxed);
        ACCESS_LOG.store(enable_access_log, Ordering::Relaxed);
        if let Some(h) = &self.filter {
            let _ = h.reload(EnvFilter::new(format!(
                "{},{QUIET}",
                level_directive(level)
            )));
        }
    }
}

static CONTROL: OnceLock<LogControl> = OnceLock::new();

/// The daemon's log control, once `init_daemon` ran.
pub fn control() -> Option<&'static LogControl> {
    CONTROL.get()
}

/// tracing's name for a Python logging level.
pub fn level_directive(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warning => "warn",
        LogLevel::Error | LogLevel::Critical => "error",
    }
}

fn env_filter(default: &str) -> (EnvFilter, bool) {
    match EnvFilter::try_from_default_env() {
        Ok(f) => (f, true),
        Err(_) => (EnvFilter::new(format!("{default},{QUIET}")), false),
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Where the daemon's two log files are.
pub struct DaemonLogFiles {
    pub controller: std::path::PathBuf,
    pub proxy: std::path::PathBuf,
}

/// Logging for the daemon (`start`, `run`, `serve`): the controller's and
/// the proxy's lines to their files in `logs_dir`, and to stderr when
/// `to_stderr`. `RUST_LOG`, when set, wins over `level` and over later
/// configs.
pub fn init_daemon(
    logs_dir: &Path,
    node_ip: &str,
    level: LogLevel,
    to_stderr: bool,
) -> std::io::Result<DaemonLogFiles> {
    std::fs::create_dir_all(logs_dir)?;
    let pid = std::process::id();
    let files = DaemonLogFiles {
        controller: logs_dir.join(format!("controller_{pid}.log")),
        proxy: logs_dir.join(format!("proxy_{node_ip}.log")),
    };
    let controller_file = Mutex::new(open_append(&files.controller)?);
    let proxy_file = Mutex::new(open_append(&files.proxy)?);
    let json = Arc::new(AtomicU8::new(0));
    let format = ServeFormat {
        json: json.clone(),
        controller: Component::Controller { pid },
        proxy: Some(Component::Proxy {
            node_ip: node_ip.to_string(),
        }),
    };
    let (filter, from_env) = env_filter(level_directive(level));
    let (filter, handle) = reload::Layer::new(filter);
    let stderr = to_stderr.then(|| {
        tracing_subscriber::fmt::layer()
            .event_format(format.clone())
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(format.clone())
                .with_writer(controller_file)
                .with_filter(filter::filter_fn(|m| !is_proxy(m.target()))),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(format)
                .with_writer(proxy_file)
                .with_filter(filter::filter_fn(|m| is_proxy(m.target()))),
        )
        .init();
    let _ = CONTROL.set(LogControl {
        json,
        filter: (!from_env).then_some(handle),
    });
    Ok(files)
}

/// Logging for a replica process: stderr in the format, encoding and
/// level its controller passed in the environment.
pub fn init_replica(replica_id: &str) {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let json = env(ENCODING_ENV).is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let level = env(LEVEL_ENV).unwrap_or_else(|| "info".into());
    ACCESS_LOG.store(
        env(ACCESS_LOG_ENV).is_none_or(|v| v != "0" && !v.eq_ignore_ascii_case("false")),
        Ordering::Relaxed,
    );
    let format = ServeFormat {
        json: Arc::new(AtomicU8::new(u8::from(json))),
        controller: Component::Replica {
            application: env(APPLICATION_ENV).unwrap_or_default(),
            deployment: env(DEPLOYMENT_ENV).unwrap_or_else(|| "replica".into()),
            replica: replica_id.to_string(),
        },
        proxy: None,
    };
    let (filter, _) = env_filter(&level);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(format)
                .with_writer(std::io::stderr),
        )
        .init();
}

/// Plain logging for the other commands: warnings to stderr.
pub fn init_cli(level: Option<&str>) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(level.unwrap_or("warn")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
