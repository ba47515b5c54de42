//! Request bodies of the OpenAI endpoints: parsed strictly for types (a
//! wrong type is a 400 naming the field), permissively for unknown fields
//! (ignored, as vLLM does), then turned into the replica protocol.

use crate::error::ApiError;
use llm_serve_proto as pb;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The most top logprobs a request may ask for (vLLM's `--max-logprobs`).
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// Reads `T` from the body's fields; a type error names the field.
pub fn fields<T: DeserializeOwned>(value: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            ApiError::bad_request(format!("Invalid request: {inner}"), None)
        } else {
            ApiError::bad_request(format!("Invalid value for `{path}`: {inner}"), Some(&path))
        }
    })
}

/// A field every request of the endpoint must have.
pub fn require(value: &Value, field: &str) -> Result<(), ApiError> {
    match value.get(field) {
        None | Some(Value::Null) => Err(ApiError::bad_request(
            format!("`{field}` is required."),
            Some(field),
        )),
        Some(_) => Ok(()),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
    pub continuous_usage_stats: Option<bool>,
}

/// Fields shared by chat and completions requests.
#[derive(Debug, Default, Deserialize)]
pub struct CommonFields {
    pub model: Option<String>,
    pub n: Option<u32>,
    pub best_of: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub logit_bias: Option<BTreeMap<String, f32>>,
    pub seed: Option<serde_json::Number>,
    pub stop: Option<Value>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub include_stop_str_in_output: Option<bool>,
    pub ignore_eos: Option<bool>,
    pub min_tokens: Option<u32>,
    pub skip_special_tokens: Option<bool>,
    pub max_tokens: Option<u32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Accepted and ignored (OpenAI's end-user id).
    #[allow(dead_code)]
    pub user: Option<String>,
    pub priority: Option<i32>,
}

impl CommonFields {
    pub fn stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Checks what the engine cannot: stream options without streaming,
    /// `n` and `best_of`, the seed's range.
    pub fn check(&self) -> Result<(), ApiError> {
        if self.stream_options.is_some() && !self.stream() {
            return Err(ApiError::bad_request(
                "Stream options can only be defined when `stream=True`.",
                Some("stream_options"),
            ));
        }
        if self.n == Some(0) {
            return Err(ApiError::bad_request(
                "n must be at least 1, got 0.",
                Some("n"),
            ));
        }
        let n = self.n();
        match self.best_of {
            None => {}
            Some(b) if b == n => {}
            Some(b) if b < n => {
                return Err(ApiError::bad_request(
                    format!("best_of must be greater than or equal to n, got n={n} and best_of={b}."),
                    Some("best_of"),
                ))
            }
            Some(b) => {
                return Err(ApiError::bad_request(
                    format!("best_of={b} is not supported: this server returns every sample it generates. Leave best_of out or set it to n ({n})."),
                    Some("best_of"),
                ))
            }
        }
        self.seed()?;
        Ok(())
    }

    /// Samples per prompt.
    pub fn n(&self) -> u32 {
        self.n.unwrap_or(1)
    }

    /// The seed as the engine takes it: any 64-bit signed integer (vLLM's
    /// range), negative ones reinterpreted.
    fn seed(&self) -> Result<Option<u64>, ApiError> {
        let Some(n) = &self.seed else {
            return Ok(None);
        };
        match n.as_i64() {
            Some(i) => Ok(Some(i as u64)),
            None => Err(ApiError::bad_request(
                format!(
                    "seed must be an integer between {} and {}, got {n}.",
                    i64::MIN,
                    i64::MAX
                ),
                Some("seed"),
            )),
        }
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    pub fn continuous_usage(&self) -> bool {
        self.include_usage()
            && self
                .stream_options
                .as_ref()
                .and_then(|o| o.continuous_usage_stats)
                .unwrap_or(false)
    }

    /// The protocol's sampling parameters; `max_tokens` and `logprobs`
    /// are the endpoint's (their names and defaults differ).
    pub fn sampling(
        &self,
        max_tokens: Option<u32>,
        logprobs: Option<u32>,
    ) -> Result<pb::Sampling, ApiError> {
        let mut logit_bias = std::collections::HashMap::new();
        for (k, &v) in self.logit_bias.iter().flatten() {
            let id: u32 = k.parse().map_err(|_| {
                ApiError::bad_request(
                    format!("logit_bias keys must be token ids (integers as strings), got `{k}`."),
                    Some("logit_bias"),
                )
            })?;
            logit_bias.insert(id, v.clamp(-100.0, 100.0));
        }
        let seed = self.seed()?;
        Ok(pb::Sampling {
            n: self.n(),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            repetition_penalty: self.repetition_penalty,
            logit_bias,
            seed,
            stop: stop_strings(self.stop.as_ref())?,
            stop_token_ids: self.stop_token_ids.clone().unwrap_or_default(),
            include_stop_str_in_output: self.include_stop_str_in_output.unwrap_or(false),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            min_tokens: self.min_tokens.unwrap_or(0),
            max_tokens,
            logprobs,
            skip_special_tokens: self.skip_special_tokens.unwrap_or(true),
        })
    }
}

/// Checks that `prompts` prompts of `n` samples each stay within the
/// `cap` sequences one request may run (the engine's `max_num_seqs`):
/// every sample of a request is admitted at once, so more could never run.
pub fn check_fan_out(n: u32, prompts: usize, cap: u32) -> Result<(), ApiError> {
    if n > cap {
        return Err(ApiError::bad_request(
            format!("n must be at most {cap} (the model's max_num_seqs), got {n}."),
            Some("n"),
        ));
    }
    let total = u64::from(n) * prompts as u64;
    if total > u64::from(cap) {
        return Err(ApiError::bad_request(
            format!("{prompts} prompts with n={n} ask for {total} samples, more than the {cap} one request may run (the model's max_num_seqs)."),
            Some("prompt"),
        ));
    }
    Ok(())
}

/// `stop` as a string or a list of strings.
fn stop_strings(stop: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "`stop` must be a string or a list of strings.",
            Some("stop"),
        )
    };
    match stop {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// Fields of `/v1/chat/completions` besides the common ones.
#[derive(Debug, Default, Deserialize)]
pub struct ChatFields {
    pub messages: Vec<Value>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub add_generation_prompt: Option<bool>,
    pub continue_final_message: Option<bool>,
    pub add_special_tokens: Option<bool>,
    pub chat_template_kwargs: Option<Map<String, Value>>,
    pub documents: Option<Value>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub chat_template: Option<String>,
}

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

impl ChatFields {
    /// The protocol's `logprobs`: the top count, when logprobs are asked for.
    pub fn logprobs(&self) -> Result<Option<u32>, ApiError> {
        let wanted = self.logprobs.unwrap_or(false);
        match self.top_logprobs {
            Some(k) if k > MAX_TOP_LOGPROBS => Err(ApiError::bad_request(
                format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {k}."),
                Some("top_logprobs"),
            )),
            Some(k) if k > 0 && !wanted => Err(ApiError::bad_request(
                "when using `top_logprobs`, `logprobs` must be set to true.",
                Some("top_logprobs"),
            )),
            k => Ok(wanted.then(|| k.unwrap_or(0))),
        }
    }

    /// Checks the messages and the template options (tools are planned
    /// in `tools`, constraints in `structured`).
    pub fn check(&self) -> Result<(), ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::bad_request(
                "`messages` must contain at least one message.",
                Some("messages"),
            ));
        }
        for (i, m) in self.messages.iter().enumerate() {
            check_message(i, m)?;
        }
        if self.chat_template.is_some() {
            return Err(ApiError::bad_request(
                "A request may not bring its own `chat_template`: the model's template is used.",
                Some("chat_template"),
            ));
        }
        if self.continue_final_message == Some(true) && self.add_generation_prompt == Some(true) {
            return Err(ApiError::bad_request(
                "Cannot set both `continue_final_message` and `add_generation_prompt` to true.",
                Some("continue_final_message"),
            ));
        }
        Ok(())
    }

    pub fn chat_input(&self) -> pb::ChatInput {
        let json = |v: &Option<Value>| -> String {
            match v {
                None | Some(Value::Null) => String::new(),
                Some(v) => v.to_string(),
            }
        };
        let add_generation_prompt = self.add_generation_prompt.unwrap_or(true);
        pb::ChatInput {
            // Serializing JSON values cannot fail.
            messages_json: serde_json::to_string(&without_null_content(
                &super::tools::arguments_as_objects(&self.messages),
            ))
            .unwrap_or_default(),
            add_generation_prompt: add_generation_prompt
                && !self.continue_final_message.unwrap_or(false),
            continue_final_message: self.continue_final_message.unwrap_or(false),
            tools_json: json(&self.tools),
            documents_json: json(&self.documents),
            chat_template_kwargs_json: self
                .chat_template_kwargs
                .as_ref()
                .map(|m| Value::Object(m.clone()).to_string())
                .unwrap_or_default(),
            add_special_tokens: self.add_special_tokens.unwrap_or(false),
        }
    }
}

/// The messages with an absent or `null` content (an assistant message
/// that only called tools, as OpenAI allows) as an empty string, which
/// every chat template can render.
fn without_null_content(messages: &[Value]) -> std::borrow::Cow<'_, [Value]> {
    let empty = |m: &Value| m.get("content").is_none_or(Value::is_null);
    if !messages.iter().any(empty) {
        return std::borrow::Cow::Borrowed(messages);
    }
    let mut owned = messages.to_vec();
    for m in owned.iter_mut() {
        if empty(m) {
            if let Some(obj) = m.as_object_mut() {
                obj.insert("content".into(), Value::String(String::new()));
            }
        }
    }
    std::borrow::Cow::Owned(owned)
}

fn check_message(i: usize, m: &Value) -> Result<(), ApiError> {
    let param = format!("messages[{i}]");
    let bad = |msg: String| Err(ApiError::bad_request(msg, Some(&param)));
    let Some(obj) = m.as_object() else {
        return bad(format!(
            "{param} must be an object with `role` and `content`."
        ));
    };
    let role = match obj.get("role") {
        Some(Value::String(r)) => r.as_str(),
        Some(_) => return bad(format!("{param}.role must be a string.")),
        None => return bad(format!("{param} has no `role`.")),
    };
    if !ROLES.contains(&role) {
        return bad(format!(
            "{param}.role `{role}` is not one of {}.",
            ROLES.join(", ")
        ));
    }
    match obj.get("content") {
        Some(Value::String(_)) => Ok(()),
        None | Some(Value::Null) if role == "assistant" => Ok(()),
        None | Some(Value::Null) => bad(format!("{param} has no `content`.")),
        Some(Value::Array(parts)) => {
            for (j, p) in parts.iter().enumerate() {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") if p.get("text").is_some_and(Value::is_string) => {}
                    Some("text") => {
                        return bad(format!("{param}.content[{j}] needs a string `text`."))
                    }
                    Some(t) => {
                        return bad(format!(
                            "{param}.content[{j}]: content of type `{t}` is not supported; this server takes text only."
                        ))
                    }
                    None => return bad(format!("{param}.content[{j}] has no `type`.")),
                }
            }
            Ok(())
        }
        Some(_) => bad(format!(
            "{param}.content must be a string or a list of content parts."
        )),
    }
}

/// Fields of `/v1/completions` besides the common ones.
#[derive(Debug, Default, Deserialize)]
pub struct CompletionFields {
    pub prompt: Value,
    pub echo: Option<bool>,
    pub logprobs: Option<u32>,
    pub suffix: Option<Value>,
    pub add_special_tokens: Option<bool>,
}

/// One prompt of a completions request.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

impl CompletionFields {
    pub fn check(&self) -> Result<(), ApiError> {
        if self.suffix.as_ref().is_some_and(|s| !s.is_null()) {
            return Err(ApiError::bad_request(
                "`suffix` is not supported: this server has no fill-in-the-middle.",
                Some("suffix"),
            ));
        }
        if let Some(k) = self.logprobs {
            if k > MAX_TOP_LOGPROBS {
                return Err(ApiError::bad_request(
                    format!("logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {k}."),
                    Some("logprobs"),
                ));
            }
        }
        if self.echo.unwrap_or(false) && self.logprobs.is_some() {
            return Err(ApiError::bad_request(
                "`echo` together with `logprobs` would need prompt logprobs, which this server does not compute.",
                Some("echo"),
            ));
        }
        Ok(())
    }

    /// The prompts: a string, a list of strings, a list of token ids, or a
    /// list of lists of token ids.
    pub fn prompts(&self) -> Result<Vec<Prompt>, ApiError> {
        let bad = |m: &str| ApiError::bad_request(m.to_string(), Some("prompt"));
        let shape = "`prompt` must be a string, a list of strings, a list of token ids, or a list of lists of token ids.";
        let token = |v: &Value| -> Result<u32, ApiError> {
            v.as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .ok_or_else(|| bad("token ids in `prompt` must be non-negative integers."))
        };
        match &self.prompt {
            Value::String(s) => Ok(vec![Prompt::Text(s.clone())]),
            Value::Array(items) if items.is_empty() => {
                Err(bad("`prompt` must not be an empty list."))
            }
            Value::Array(items) => match &items[0] {
                Value::String(_) => items
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(|s| Prompt::Text(s.to_owned()))
                            .ok_or_else(|| bad(shape))
                    })
                    .collect(),
                Value::Number(_) => Ok(vec![Prompt::Tokens(
                    items.iter().map(token).collect::<Result<_, _>>()?,
                )]),
                Value::Array(_) => items
                    .iter()
                    .map(|v| match v {
                        Value::Array(ids) if !ids.is_empty() => Ok(Prompt::Tokens(
                            ids.iter().map(token).collect::<Result<_, _>>()?,
                        )),
                        Value::Array(_) => Err(bad("a token-id prompt must not be empty.")),
                        _ => Err(bad(shape)),
                    })
                    .collect(),
                _ => Err(bad(shape)),
            },
            _ => Err(bad(shape)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wrong_types_name_the_field() {
        let v = json!({"messages": [], "temperature": "hot"});
        let e = fields::<CommonFields>(&v).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let v = json!({"n": -1});
        assert_eq!(
            fields::<CommonFields>(&v).unwrap_err().param.as_deref(),
            Some("n")
        );
        // Unknown fields are ignored.
        assert!(fields::<CommonFields>(&json!({"frobnicate": 1})).is_ok());
    }

    #[test]
    fn prompts_of_every_shape() {
        let f = |p: Value| CompletionFields {
            prompt: p,
            ..Default::default()
        };
        assert_eq!(
            f(json!("hi")).prompts().unwrap(),
            vec![Prompt::Text("hi".into())]
        );
        assert_eq!(f(json!(["a", "b"])).prompts().unwrap().len(), 2);
        assert_eq!(
            f(json!([1, 2])).prompts().unwrap(),
            vec![Prompt::Tokens(vec![1, 2])]
        );
        assert_eq!(f(json!([[1], [2, 3]])).prompts().unwrap().len(), 2);
        for bad in [
            json!([]),
            json!([[]]),
            json!(5),
            json!(["a", 1]),
            json!([-1]),
            json!({"a": 1}),
        ] {
            assert!(f(bad.clone()).prompts().is_err(), "{bad}");
        }
    }

    #[test]
    fn messages_are_checked() {
        let chat = |m: Value| ChatFields {
            messages: vec![m],
            ..Default::default()
        };
        assert!(chat(json!({"role": "user", "content": "hi"}))
            .check()
            .is_ok());
        assert!(
            chat(json!({"role": "user", "content": [{"type": "text", "text": "hi"}]}))
                .check()
                .is_ok()
        );
        let e = chat(json!({"role": "wizard", "content": "hi"}))
            .check()
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0]"));
        assert!(chat(json!({"role": "user"})).check().is_err());
        assert!(
            chat(json!({"role": "user", "content": [{"type": "image_url"}]}))
                .check()
                .is_err()
        );
        assert!(chat(json!("hi")).check().is_err());
    }
}
