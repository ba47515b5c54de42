//! Chat templates: the model's Jinja template rendered with minijinja the
//! way transformers' `apply_chat_template` renders it (trim_blocks,
//! lstrip_blocks, Python string methods, `raise_exception`, `tojson` with
//! Python's separators, `strftime_now`, loop controls, namespaces).

use crate::error::{EngineError, Result};
use chrono::NaiveDateTime;
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde_json::Value as Json;
use std::sync::{Arc, RwLock};

/// Inputs besides the messages.
#[derive(Clone, Debug, Default)]
pub struct TemplateArgs {
    pub add_generation_prompt: bool,
    /// Leave the last (assistant) message open for the model to continue.
    pub continue_final_message: bool,
    pub tools: Option<Json>,
    pub documents: Option<Json>,
    /// Extra variables (`chat_template_kwargs`).
    pub extra: serde_json::Map<String, Json>,
}

/// How a template expects `content`: a string, or OpenAI's list of parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentFormat {
    String,
    OpenAi,
}

pub struct ChatTemplate {
    env: Environment<'static>,
    /// When set, `strftime_now` reads this time instead of the clock.
    fixed_now: Arc<RwLock<Option<NaiveDateTime>>>,
    source: String,
    bos_token: String,
    eos_token: String,
    content_format: ContentFormat,
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    /// The template the tokenizer ships, with its BOS and EOS tokens;
    /// `None` when it has none.
    pub fn of_tokenizer(tokenizer: &crate::tokenizer::Tokenizer) -> Result<Option<Self>> {
        tokenizer
            .chat_template()
            .map(|src| ChatTemplate::new(src, tokenizer.bos_token(), tokenizer.eos_token()))
            .transpose()
    }

    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        // transformers' AssistantTracker tags carry no output.
        let cleaned = source
            .replace("{% generation %}", "")
            .replace("{%- generation %}", "")
            .replace("{% generation -%}", "")
            .replace("{%- generation -%}", "")
            .replace("{% endgeneration %}", "")
            .replace("{%- endgeneration %}", "")
            .replace("{% endgeneration -%}", "")
            .replace("{%- endgeneration -%}", "");
        let mut env = Environment::new();
        env.set_syntax(
            SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| EngineError::Template(describe(&e)))?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        let fixed_now: Arc<RwLock<Option<NaiveDateTime>>> = Arc::new(RwLock::new(None));
        let clock = fixed_now.clone();
        env.add_function("strftime_now", move |format: String| {
            let now = clock.read().ok().and_then(|g| *g);
            strftime_now(now, format)
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, cleaned)
            .map_err(|e| EngineError::Template(describe(&e)))?;
        Ok(ChatTemplate {
            env,
            fixed_now,
            content_format: detect_content_format(source),
            source: source.to_string(),
            bos_token: bos_token.unwrap_or_default().to_string(),
            eos_token: eos_token.unwrap_or_default().to_string(),
        })
    }

    /// Renders as if it were `now` (reproducible output); `None` restores
    /// the clock.
    pub fn set_now(&self, now: Option<NaiveDateTime>) {
        if let Ok(mut g) = self.fixed_now.write() {
            *g = now;
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn content_format(&self) -> ContentFormat {
        self.content_format
    }

    /// Renders `messages` (OpenAI-shaped JSON objects). For string-format
    /// templates, content given as a list of text parts is joined with
    /// newlines first, as vLLM does.
    pub fn render(&self, messages: &[Json], args: &TemplateArgs) -> Result<String> {
        let messages: Vec<Json> = match self.content_format {
            ContentFormat::OpenAi => messages.to_vec(),
            ContentFormat::String => messages.iter().map(flatten_content).collect(),
        };
        self.render_raw(&messages, args)
    }

    /// Renders `messages` exactly as given (transformers' behaviour).
    pub fn render_raw(&self, messages: &[Json], args: &TemplateArgs) -> Result<String> {
        if args.continue_final_message && args.add_generation_prompt {
            return Err(crate::error::invalid(
                "continue_final_message",
                "continue_final_message and add_generation_prompt cannot both be true",
            ));
        }
        let mut ctx = serde_json::Map::new();
        ctx.insert("messages".into(), Json::Array(messages.to_vec()));
        ctx.insert(
            "add_generation_prompt".into(),
            Json::Bool(args.add_generation_prompt),
        );
        ctx.insert("bos_token".into(), Json::String(self.bos_token.clone()));
        ctx.insert("eos_token".into(), Json::String(self.eos_token.clone()));
        if let Some(t) = &args.tools {
            ctx.insert("tools".into(), t.clone());
        }
        if let Some(d) = &args.documents {
            ctx.insert("documents".into(), d.clone());
        }
        for (k, v) in &args.extra {
            ctx.insert(k.clone(), v.clone());
        }
        let rendered = self.render_context(&ctx)?;
        if !args.continue_final_message {
            return Ok(rendered);
        }
        let last = messages
            .last()
            .and_then(|m| m.get("content"))
            .and_then(Json::as_str)
            .unwrap_or_default();
        match rendered.rfind(last) {
            Some(i) if !last.is_empty() => Ok(rendered[..i + last.len()].to_string()),
            _ => Err(crate::error::invalid(
                "continue_final_message",
                "the final message's content was not found in the rendered prompt",
            )),
        }
    }
}

impl ChatTemplate {
    /// Renders with exactly the variables in `ctx`.
    pub fn render_context(&self, ctx: &serde_json::Map<String, Json>) -> Result<String> {
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| EngineError::Template(describe(&e)))?;
        tmpl.render(Value::from(minijinja::value::Serde(ctx)))
            .map_err(|e| EngineError::Template(describe(&e)))
    }
}

/// Joins OpenAI text parts (`[{"type": "text", "text": ...}]`) into one
/// string; other parts are left out (no multimodal support).
fn flatten_content(msg: &Json) -> Json {
    let mut m = msg.clone();
    if let Some(Json::Array(parts)) = msg.get("content") {
        let text: Vec<&str> = parts
            .iter()
            .filter_map(|p| match p {
                Json::String(s) => Some(s.as_str()),
                Json::Object(o) => o.get("text").and_then(Json::as_str),
                _ => None,
            })
            .collect();
        if let Some(obj) = m.as_object_mut() {
            obj.insert("content".into(), Json::String(text.join("\n")));
        }
    }
    m
}

/// A template iterates over `content` (OpenAI parts) or prints it as a
/// string. Looks for loops over, or type tests of, message content.
fn detect_content_format(src: &str) -> ContentFormat {
    let compact: String = src.split_whitespace().collect::<Vec<_>>().join(" ");
    for head in ["content", "content']", "content\"]"] {
        for test in [
            " is string",
            " is not string",
            " is iterable",
            " is sequence",
        ] {
            if compact.contains(&format!("{head}{test}")) {
                return ContentFormat::OpenAi;
            }
        }
    }
    for (i, _) in compact.match_indices("{% for ") {
        let head: String = compact[i..].chars().take(80).collect();
        if let Some(end) = head.find("%}") {
            let clause = &head[..end];
            if clause.contains("['content']")
                || clause.contains(".content")
                || clause.contains("[\"content\"]")
            {
                return ContentFormat::OpenAi;
            }
        }
    }
    ContentFormat::String
}

fn describe(e: &minijinja::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(
    fixed: Option<NaiveDateTime>,
    format: String,
) -> std::result::Result<Value, minijinja::Error> {
    use std::fmt::Write;
    let now = fixed.unwrap_or_else(|| chrono::Local::now().naive_local());
    let mut out = String::new();
    write!(out, "{}", now.format(&format)).map_err(|_| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format {format:?}"),
        )
    })?;
    Ok(Value::from(out))
}

/// `json.dumps` with transformers' defaults (`ensure_ascii=False`), Python's
/// separators, and its `indent` / `separators` / `sort_keys` options.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.kind() {
            ValueKind::Number => Some(" ".repeat(i64::try_from(v).unwrap_or(0).max(0) as usize)),
            ValueKind::String => Some(v.as_str().unwrap_or_default().to_string()),
            _ => None,
        },
    };
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([a, b]) => (a.clone(), b.clone()),
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let opts = JsonOpts {
        indent,
        item_sep,
        key_sep,
        ensure_ascii: ensure_ascii.unwrap_or(false),
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    dump(&value, &opts, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

struct JsonOpts {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

fn newline(opts: &JsonOpts, depth: usize, out: &mut String) {
    if let Some(ind) = &opts.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(ind);
        }
    }
}

fn dump(
    v: &Value,
    opts: &JsonOpts,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = v.as_i64() {
                out.push_str(&i.to_string());
            } else {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                out.push_str(&python_float(f));
            }
        }
        ValueKind::String => escape(v.as_str().unwrap_or_default(), opts.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline(opts, depth + 1, out);
                dump(item, opts, depth + 1, out)?;
            }
            newline(opts, depth, out);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if opts.sort_keys {
                keys.sort_by_key(|a| a.to_string());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline(opts, depth + 1, out);
                let key = match k.as_str() {
                    Some(s) => s.to_string(),
                    None => k.to_string(),
                };
                escape(&key, opts.ensure_ascii, out);
                out.push_str(&opts.key_sep);
                dump(&v.get_item(k)?, opts, depth + 1, out)?;
            }
            newline(opts, depth, out);
            out.push('}');
        }
        _ => escape(&v.to_string(), opts.ensure_ascii, out),
    }
    Ok(())
}

/// Python's `repr(float)` for the values templates see.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if f == f.trunc() && f.abs() < 1e16 {
        return format!("{f:.1}");
    }
    let s = format!("{f}");
    if f.abs() < 1e-4 || f.abs() >= 1e16 {
        let e = format!("{f:e}");
        // Rust "1e-5" -> Python "1e-05".
        if let Some((m, exp)) = e.split_once('e') {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ("-", d),
                None => ("+", exp),
            };
            return format!("{m}e{sign}{digits:0>2}");
        }
    }
    s
}

fn escape(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
