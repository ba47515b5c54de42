//! Every JSON body the router sends, as typed structs: OpenAI's (and
//! vLLM's) responses and stream chunks, model cards, tokenizer results,
//! the health and version bodies and the error body.
//!
//! The types exist so the shapes are written down once and checked by
//! the compiler instead of being spelled out as `json!` literals at each
//! endpoint. Clients depend on the exact bytes, so the structs follow the
//! bytes: field order is output order (`serde_json` keeps it), a field
//! that is `null` when unset is a plain `Option`, and only fields that
//! are left out when unset are skipped. The module depends on nothing
//! else in the crate, so every other module (errors included) can use it.

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

/// The `{"error": {...}}` body of every error, streamed ones included.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

/// OpenAI's error object, with the HTTP status in `code`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ErrorDetail<'a> {
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// The request field at fault; `null` when none is.
    pub param: Option<&'a str>,
    pub code: u16,
}

/// `/health` when a model has no ready replica (a 503).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Unavailable {
    /// Always `unavailable`.
    pub status: &'static str,
    pub models_not_ready: Vec<String>,
}

/// `/version`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Version {
    pub version: &'static str,
}

/// `GET /v1/models`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

/// One served model (`GET /v1/models/{model}`, and each of the list).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelCard {
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// Where the weights came from (the model id until a replica says;
    /// an adapter's path or URI).
    pub root: String,
    /// The base model of a LoRA adapter; `null` for a base model.
    pub parent: Option<String>,
    /// `null` until a replica has reported it.
    pub max_model_len: Option<u32>,
    /// Always an empty list.
    pub permission: [(); 0],
}

/// vLLM's `POST /tokenize`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tokenized {
    pub count: usize,
    pub max_model_len: u32,
    pub tokens: Vec<u32>,
    /// The text of each token, when `return_token_strs` asks; else `null`.
    pub token_strs: Option<Vec<String>>,
}

/// vLLM's `POST /detokenize`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Detokenized {
    pub prompt: String,
}

/// A request's token counts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub prompt_tokens_details: PromptTokensDetails,
}

impl Usage {
    pub fn new(prompt_tokens: u32, completion_tokens: u32, cached_tokens: u32) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens found in the prefix cache.
    pub cached_tokens: u32,
}

/// vLLM's `stop_reason`: the stop string or the stop token id that ended
/// a sample (`null`, as an `Option`, when neither did).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum StopReason {
    Text(String),
    TokenId(u32),
}

/// A whole (non-streamed) response: `chat.completion` or
/// `text_completion`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Completion<C> {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<C>,
    pub usage: Usage,
}

/// One chunk of a stream: `chat.completion.chunk` or `text_completion`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Chunk<C> {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    /// Empty in the usage chunk that ends a stream.
    pub choices: Vec<C>,
    /// Left out unless `stream_options.include_usage` is set; then `null`
    /// (`Some(None)`) on content chunks, unless `continuous_usage_stats`
    /// puts the running usage there, and the totals on the last chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

/// `POST /v1/chat/completions` without streaming.
pub type ChatCompletion = Completion<ChatChoice>;
/// A chunk of a streamed chat completion.
pub type ChatCompletionChunk = Chunk<ChatChunkChoice>;
/// `POST /v1/completions` without streaming.
pub type TextCompletion = Completion<CompletionChoice>;
/// A chunk of a streamed completion.
pub type TextCompletionChunk = Chunk<CompletionChoice>;

/// A choice of a whole chat completion.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: ChatMessage,
    /// `null` unless logprobs were asked for.
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
    pub stop_reason: Option<StopReason>,
}

/// The assistant's message of a chat choice.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// `null` when the answer is tool calls alone.
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
}

/// A tool call of a whole chat answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ToolCall {
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as a JSON text.
    pub arguments: String,
}

/// A piece of a streamed tool call: the first for a call carries its id,
/// type and name; the others more of its arguments.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDelta,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FunctionDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// A choice of a chat chunk.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatChunkChoice {
    pub index: u32,
    pub delta: ChatDelta,
    /// `null` unless logprobs were asked for.
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
    pub stop_reason: Option<StopReason>,
}

/// What a chat chunk adds to its choice's message.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatDelta {
    /// Only on the first chunk of each choice (`assistant`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// Absent from chunks that carry only tool calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallDelta>,
}

/// Chat logprobs: one entry per token.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

/// A generated token of chat logprobs, with the most likely tokens there.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    /// An `f32` logprob widened to `f64`: its JSON has the digits of the
    /// widened value, as the router has always written it.
    pub logprob: f64,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

/// One of the most likely tokens at a position of chat logprobs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatTopLogprob {
    pub token: String,
    /// As `ChatTokenLogprob::logprob`.
    pub logprob: f64,
    pub bytes: Vec<u8>,
}

/// A choice of a completion, whole or a chunk of one.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    /// `null` unless logprobs were asked for.
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<String>,
    pub stop_reason: Option<StopReason>,
}

/// Completions' logprobs: parallel lists over the choice's tokens.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    /// Widened from `f32`, as `ChatTokenLogprob::logprob`.
    pub token_logprobs: Vec<f64>,
    pub top_logprobs: Vec<TopLogprobs>,
    /// The character offset of each token in the choice's text.
    pub text_offset: Vec<usize>,
}

/// A `{token: logprob}` object in the order tokens were first inserted;
/// inserting a token again replaces its logprob and keeps its place.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopLogprobs(Vec<(String, f64)>);

impl TopLogprobs {
    /// Sets `token`'s logprob (at the end when the token is new).
    pub fn insert(&mut self, token: &str, logprob: f64) {
        match self.0.iter_mut().find(|(t, _)| t == token) {
            Some(entry) => entry.1 = logprob,
            None => self.0.push((token.to_string(), logprob)),
        }
    }

    /// Adds `token` unless it is there already.
    pub fn insert_if_absent(&mut self, token: &str, logprob: f64) {
        if !self.0.iter().any(|(t, _)| t == token) {
            self.0.push((token.to_string(), logprob));
        }
    }
}

impl Serialize for TopLogprobs {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (token, logprob) in &self.0 {
            map.serialize_entry(token, logprob)?;
        }
        map.end()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! Each body against the `json!` literal it replaced (the chunks and
    //! completions are checked in `openai::golden`'s users).
    use super::*;
    use serde_json::{json, Value};

    fn same(typed: &impl Serialize, literal: Value) {
        assert_eq!(serde_json::to_string(typed).unwrap(), literal.to_string());
    }

    #[test]
    fn error_body() {
        for param in [None, Some("messages[0]")] {
            let typed = ErrorBody {
                error: ErrorDetail {
                    message: "bad \"thing\"",
                    kind: "BadRequestError",
                    param,
                    code: 400,
                },
            };
            same(
                &typed,
                json!({
                    "error": {
                        "message": "bad \"thing\"",
                        "type": "BadRequestError",
                        "param": param,
                        "code": 400u16,
                    }
                }),
            );
        }
    }

    #[test]
    fn health_and_version() {
        let not_ready = vec!["a".to_string(), "b".into()];
        same(
            &Unavailable {
                status: "unavailable",
                models_not_ready: not_ready.clone(),
            },
            json!({"status": "unavailable", "models_not_ready": not_ready}),
        );
        same(
            &Unavailable {
                status: "unavailable",
                models_not_ready: Vec::new(),
            },
            json!({"status": "unavailable", "models_not_ready": Vec::<String>::new()}),
        );
        same(&Version { version: "0.1.0" }, json!({"version": "0.1.0"}));
    }

    #[test]
    fn model_cards() {
        for max_model_len in [None, Some(8192u32)] {
            let card = ModelCard {
                id: "m".into(),
                object: "model",
                created: 1_700_000_000,
                owned_by: "llm-serve",
                root: "/models/m.gguf".into(),
                parent: None,
                max_model_len,
                permission: [],
            };
            let literal = json!({
                "id": "m",
                "object": "model",
                "created": 1_700_000_000u64,
                "owned_by": "llm-serve",
                "root": "/models/m.gguf",
                "parent": null,
                "max_model_len": max_model_len,
                "permission": [],
            });
            same(&card, literal.clone());
            same(
                &ModelList {
                    object: "list",
                    data: vec![card.clone(), card],
                },
                json!({"object": "list", "data": [literal.clone(), literal]}),
            );
        }
        same(
            &ModelList {
                object: "list",
                data: Vec::new(),
            },
            json!({"object": "list", "data": Vec::<Value>::new()}),
        );
    }

    #[test]
    fn tokenizer_results() {
        let ids = vec![1u32, 22, 333];
        let strs = vec!["<s>".to_string(), "é".into(), "\n".into()];
        for token_strs in [None, Some(strs)] {
            let literal_strs = match &token_strs {
                Some(s) => json!(s),
                None => Value::Null,
            };
            same(
                &Tokenized {
                    count: ids.len(),
                    max_model_len: 2048,
                    tokens: ids.clone(),
                    token_strs,
                },
                json!({
                    "count": ids.len(),
                    "max_model_len": 2048u32,
                    "tokens": ids,
                    "token_strs": literal_strs,
                }),
            );
        }
        same(
            &Detokenized {
                prompt: "a \u{1F600} b".into(),
            },
            json!({"prompt": "a \u{1F600} b"}),
        );
    }

    #[test]
    fn top_logprobs_keep_first_place_and_last_value() {
        let mut t = TopLogprobs::default();
        t.insert("a", -1.0);
        t.insert("b", -2.0);
        t.insert("a", -3.0);
        t.insert_if_absent("b", -4.0);
        t.insert_if_absent("c", -5.0);
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"a":-3.0,"b":-2.0,"c":-5.0}"#
        );
    }
}
