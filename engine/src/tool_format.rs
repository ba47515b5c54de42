//! Which tool-call format a model writes, named as vLLM's
//! `--tool-call-parser` names them: set in `engine_kwargs`, else read off
//! the chat template (what it asks the model to emit).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolCallFormat {
    /// `<tool_call>{"name": .., "arguments": {..}}</tool_call>` (Hermes,
    /// Qwen2.5, Qwen3).
    Hermes,
    /// `{"name": .., "parameters": {..}}`, optionally after
    /// `<|python_tag|>`, `;`-separated (Llama 3.1 / 3.2).
    Llama3Json,
    /// `[TOOL_CALLS][{"name": .., "arguments": {..}}, ..]` (Mistral).
    Mistral,
    /// `[f(a=1), g(b="x")]` (Llama 3.2 / 4 pythonic prompts).
    Pythonic,
}

impl ToolCallFormat {
    pub fn name(self) -> &'static str {
        match self {
            ToolCallFormat::Hermes => "hermes",
            ToolCallFormat::Llama3Json => "llama3_json",
            ToolCallFormat::Mistral => "mistral",
            ToolCallFormat::Pythonic => "pythonic",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [
            ToolCallFormat::Hermes,
            ToolCallFormat::Llama3Json,
            ToolCallFormat::Mistral,
            ToolCallFormat::Pythonic,
        ]
        .into_iter()
        .find(|f| f.name() == name)
    }

    /// The format a chat template's source asks for; `None` when it does
    /// not render `tools` at all, or in no format known here.
    pub fn of_template(source: &str) -> Option<Self> {
        if !source.contains("tools") {
            return None;
        }
        if source.contains("<tool_call>") {
            Some(ToolCallFormat::Hermes)
        } else if source.contains("[TOOL_CALLS]") {
            Some(ToolCallFormat::Mistral)
        } else if source.contains("<|python_tag|>") || source.contains("ipython") {
            Some(ToolCallFormat::Llama3Json)
        } else {
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn template(name: &str) -> String {
        let path = format!(
            "{}/../fixtures/chat_templates/{name}.jinja",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn formats_are_read_off_the_fixture_templates() {
        use ToolCallFormat::*;
        for (name, want) in [
            ("HuggingFaceTB-SmolLM2-135M-Instruct", None),
            ("Qwen-Qwen2.5-7B-Instruct", Some(Hermes)),
            ("Qwen-Qwen3-0.6B", Some(Hermes)),
            ("meta-llama-Llama-3.1-8B-Instruct", Some(Llama3Json)),
            ("meta-llama-Llama-3.2-3B-Instruct", Some(Llama3Json)),
            ("mistralai-Mistral-Nemo-Instruct-2407", Some(Mistral)),
            ("google-gemma-2-2b-it", None),
        ] {
            assert_eq!(ToolCallFormat::of_template(&template(name)), want, "{name}");
        }
        assert_eq!(ToolCallFormat::from_name("llama3_json"), Some(Llama3Json));
        assert_eq!(ToolCallFormat::from_name("xml"), None);
    }
}
