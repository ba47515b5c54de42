//! A request's input (chat messages, text, or token ids) to prompt token
//! ids, the way vLLM's OpenAI server builds them.

use crate::chat_template::{ChatTemplate, TemplateArgs};
use crate::error::{invalid, EngineError, Result};
use crate::tokenizer::Tokenizer;
use llm_serve_proto::{generate_request, tokenize_request, ChatInput, TextPrompt};
use serde_json::Value as Json;

/// What a request asks the model to continue.
pub(crate) enum PromptInput<'a> {
    Chat(&'a ChatInput),
    Text(&'a TextPrompt),
    Tokens(&'a [u32]),
}

impl<'a> PromptInput<'a> {
    pub(crate) fn of_generate(input: Option<&'a generate_request::Input>) -> Result<Self> {
        match input {
            Some(generate_request::Input::Chat(c)) => Ok(PromptInput::Chat(c)),
            Some(generate_request::Input::Text(t)) => Ok(PromptInput::Text(t)),
            Some(generate_request::Input::Tokens(t)) => Ok(PromptInput::Tokens(&t.ids)),
            None => Err(invalid("prompt", "the request has no prompt or messages")),
        }
    }

    pub(crate) fn of_tokenize(input: Option<&'a tokenize_request::Input>) -> Result<Self> {
        match input {
            Some(tokenize_request::Input::Chat(c)) => Ok(PromptInput::Chat(c)),
            Some(tokenize_request::Input::Text(t)) => Ok(PromptInput::Text(t)),
            None => Err(invalid("prompt", "the request has no prompt or messages")),
        }
    }
}

/// Token ids of the prompt.
pub(crate) fn prompt_ids(
    input: &PromptInput,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
) -> Result<Vec<u32>> {
    match input {
        PromptInput::Tokens(ids) => Ok(ids.to_vec()),
        PromptInput::Text(t) => tokenizer.encode(&t.text, t.add_special_tokens),
        PromptInput::Chat(c) => {
            let text = render_chat(c, template)?;
            tokenizer.encode(&text, c.add_special_tokens)
        }
    }
}

fn parse_json(field: &'static str, text: &str) -> Result<Option<Json>> {
    if text.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| invalid(field, format!("{field} is not valid JSON: {e}")))
}

fn render_chat(c: &ChatInput, template: Option<&ChatTemplate>) -> Result<String> {
    let template = template.ok_or_else(|| {
        invalid(
            "messages",
            "this model has no chat template, so chat completions are not available for it; use the completions API",
        )
    })?;
    if c.add_generation_prompt && c.continue_final_message {
        return Err(invalid(
            "continue_final_message",
            "Cannot set both `continue_final_message` and `add_generation_prompt` to true.",
        ));
    }
    let messages = match parse_json("messages", &c.messages_json)? {
        Some(Json::Array(m)) => m,
        _ => return Err(invalid("messages", "messages must be an array")),
    };
    let extra = match parse_json("chat_template_kwargs", &c.chat_template_kwargs_json)? {
        None => serde_json::Map::new(),
        Some(Json::Object(m)) => m,
        Some(_) => {
            return Err(invalid(
                "chat_template_kwargs",
                "chat_template_kwargs must be an object",
            ))
        }
    };
    let args = TemplateArgs {
        add_generation_prompt: c.add_generation_prompt,
        continue_final_message: c.continue_final_message,
        tools: parse_json("tools", &c.tools_json)?,
        documents: parse_json("documents", &c.documents_json)?,
        extra,
    };
    template.render(&messages, &args).map_err(|e| match e {
        EngineError::Template(m) => invalid("messages", m),
        other => other,
    })
}
