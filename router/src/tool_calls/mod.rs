//! Tool calls in a model's output: parsers for the formats models write
//! (vLLM's `hermes`, `llama3_json`, `mistral`, `pythonic`) and for the
//! output of a forced tool choice (named: the arguments alone; required:
//! a JSON array of calls). Every parser takes text as it streams and
//! emits content and call events; a whole response is the same events
//! collected, so streamed deltas always reassemble to the whole answer.

mod call_object;
mod formats;
mod pythonic;
#[cfg(test)]
mod tests;

pub use formats::parser;

/// What a model writes its calls as when it chooses to call tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Hermes,
    Llama3Json,
    Mistral,
    Pythonic,
}

impl Format {
    /// vLLM's `--tool-call-parser` name; unknown names are `None`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "hermes" => Some(Format::Hermes),
            "llama3_json" => Some(Format::Llama3Json),
            "mistral" => Some(Format::Mistral),
            "pythonic" => Some(Format::Pythonic),
            _ => None,
        }
    }
}

/// How a choice's text is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reading {
    /// `tool_choice` names a function: the whole text is its arguments.
    Named(String),
    /// `tool_choice: "required"`: a JSON array of `{name, parameters}`.
    Required,
    /// `tool_choice: "auto"`: content, and calls in the model's format.
    Auto(Format),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallEvent {
    Content(String),
    /// Call `index` starts; its name is known.
    Start {
        index: usize,
        name: String,
    },
    /// More of call `index`'s arguments (a JSON text, in pieces).
    Arguments {
        index: usize,
        fragment: String,
    },
}

pub trait CallParser: Send {
    /// Takes the next piece of text.
    fn push(&mut self, text: &str, out: &mut Vec<CallEvent>);
    /// The text has ended: whatever was held back comes out.
    fn finish(&mut self, out: &mut Vec<CallEvent>);
}

/// A call as the whole response carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub name: String,
    pub arguments: String,
}

/// The content and calls a list of events adds up to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assembled {
    pub content: String,
    pub calls: Vec<Call>,
}

impl Assembled {
    pub fn add(&mut self, e: &CallEvent) {
        match e {
            CallEvent::Content(t) => self.content.push_str(t),
            CallEvent::Start { index, name } => {
                if *index == self.calls.len() {
                    self.calls.push(Call {
                        name: name.clone(),
                        arguments: String::new(),
                    });
                }
            }
            CallEvent::Arguments { index, fragment } => {
                if let Some(c) = self.calls.get_mut(*index) {
                    c.arguments.push_str(fragment);
                }
            }
        }
    }

    /// Parses a whole text.
    pub fn of_text(reading: &Reading, text: &str) -> Self {
        let mut p = parser(reading);
        let mut events = Vec::new();
        p.push(text, &mut events);
        p.finish(&mut events);
        let mut a = Assembled::default();
        events.iter().for_each(|e| a.add(e));
        a
    }
}

/// A new tool-call id, as vLLM makes them.
pub fn call_id() -> String {
    format!("chatcmpl-tool-{}", uuid::Uuid::new_v4().simple())
}
