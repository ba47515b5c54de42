//! The parsers, one per way of writing calls.

use super::call_object::{CallObject, Fed};
use super::pythonic::Pythonic;
use super::{CallEvent, CallParser, Format, Reading};

pub fn parser(reading: &Reading) -> Box<dyn CallParser> {
    match reading {
        Reading::Named(name) => Box::new(Named {
            name: name.clone(),
            started: false,
        }),
        Reading::Required => Box::new(Tagged::new("", Body::Array)),
        Reading::Auto(Format::Hermes) => Box::new(Tagged::new("<tool_call>", Body::Hermes)),
        Reading::Auto(Format::Mistral) => Box::new(Tagged::new("[TOOL_CALLS]", Body::Array)),
        Reading::Auto(Format::Llama3Json) => Box::new(Llama3::default()),
        Reading::Auto(Format::Pythonic) => Box::new(Pythonic::default()),
    }
}

/// The whole text is the named function's arguments.
struct Named {
    name: String,
    started: bool,
}

impl Named {
    fn start(&mut self, out: &mut Vec<CallEvent>) {
        if !self.started {
            self.started = true;
            out.push(CallEvent::Start {
                index: 0,
                name: self.name.clone(),
            });
        }
    }
}

impl CallParser for Named {
    fn push(&mut self, text: &str, out: &mut Vec<CallEvent>) {
        self.start(out);
        if !text.is_empty() {
            out.push(CallEvent::Arguments {
                index: 0,
                fragment: text.to_string(),
            });
        }
    }

    fn finish(&mut self, out: &mut Vec<CallEvent>) {
        self.start(out);
    }
}

/// The call being scanned and what of it was sent.
struct Open {
    object: CallObject,
    started: bool,
    sent: usize,
}

impl Open {
    fn new() -> Self {
        Open {
            object: CallObject::new(),
            started: false,
            sent: 0,
        }
    }

    /// Sends the name once known, then any arguments text not yet sent.
    fn flush(&mut self, index: usize, out: &mut Vec<CallEvent>) {
        if !self.started {
            let Some(name) = self.object.name() else {
                return;
            };
            self.started = true;
            out.push(CallEvent::Start {
                index,
                name: name.to_string(),
            });
        }
        let args = self.object.streamable_arguments();
        if args.len() > self.sent && args.is_char_boundary(self.sent) {
            out.push(CallEvent::Arguments {
                index,
                fragment: args[self.sent..].to_string(),
            });
            self.sent = args.len();
        }
    }

    /// The text ended inside the object: a started call is closed with
    /// what arrived; one that never got its name gives back its raw text.
    fn end(mut self, index: usize, out: &mut Vec<CallEvent>) -> Option<String> {
        if self.started {
            self.close(index, out);
            None
        } else {
            Some(self.object.raw().to_string())
        }
    }

    /// The object closed: the rest of the arguments (`{}` when absent).
    fn close(&mut self, index: usize, out: &mut Vec<CallEvent>) {
        self.flush(index, out);
        let all = self.object.final_arguments();
        if self.started && all.len() > self.sent && all.is_char_boundary(self.sent) {
            out.push(CallEvent::Arguments {
                index,
                fragment: all[self.sent..].to_string(),
            });
            self.sent = all.len();
        }
    }
}

/// How the calls after a tag are written.
#[derive(Clone, Copy, PartialEq)]
enum Body {
    /// One object per tag, closed by `</tool_call>`.
    Hermes,
    /// A JSON array of objects.
    Array,
}

#[derive(PartialEq)]
enum Phase {
    /// Content, watching for the tag.
    Text,
    /// After the tag (or an array's comma), before an object or `[`.
    Before,
    Object,
    /// After an object: `,` or `]` in an array; `</tool_call>` in Hermes.
    After,
    /// Everything else is dropped (after an array's `]`).
    Ended,
}

/// Content with calls after a tag (Hermes, Mistral) or calls alone
/// (required: no tag, an array from the first character).
struct Tagged {
    tag: &'static str,
    body: Body,
    phase: Phase,
    /// Text held while it could still be the start of a tag.
    held: String,
    open: Option<Open>,
    calls: usize,
    in_array: bool,
}

const HERMES_END: &str = "</tool_call>";

impl Tagged {
    fn new(tag: &'static str, body: Body) -> Self {
        Tagged {
            tag,
            body,
            phase: if tag.is_empty() {
                Phase::Before
            } else {
                Phase::Text
            },
            held: String::new(),
            open: None,
            calls: 0,
            in_array: false,
        }
    }

    fn feed(&mut self, c: char, out: &mut Vec<CallEvent>) {
        match self.phase {
            Phase::Text => {
                self.held.push(c);
                if self.held.ends_with(self.tag) {
                    let content = &self.held[..self.held.len() - self.tag.len()];
                    if !(self.calls > 0 && content.trim().is_empty()) {
                        self.content(content.to_string(), out);
                    }
                    self.held.clear();
                    self.phase = Phase::Before;
                } else {
                    let keep = partial_suffix(&self.held, self.tag);
                    let ready = self.held.len() - keep;
                    if ready > 0 && !(self.calls > 0 && self.held[..ready].trim().is_empty()) {
                        let text: String = self.held.drain(..ready).collect();
                        self.content(text, out);
                    }
                }
            }
            Phase::Before => {
                if c.is_whitespace() {
                    self.held.push(c);
                } else if self.body == Body::Array && !self.in_array && c == '[' {
                    self.in_array = true;
                    self.held.push(c);
                } else if c == '{' {
                    let mut open = Open::new();
                    open.object.feed(c);
                    self.open = Some(open);
                    self.held.clear();
                    self.phase = Phase::Object;
                } else {
                    self.fall_back(c, out);
                }
            }
            Phase::Object => {
                let Some(open) = self.open.as_mut() else {
                    return;
                };
                match open.object.feed(c) {
                    Fed::More => open.flush(self.calls, out),
                    Fed::Closed => {
                        if open.object.name().is_some() {
                            open.close(self.calls, out);
                            self.calls += 1;
                            self.open = None;
                            self.phase = Phase::After;
                        } else {
                            let raw = open.object.raw().to_string();
                            self.open = None;
                            self.not_a_call(raw, out);
                        }
                    }
                    Fed::Invalid => {
                        let started = open.started;
                        let raw = open.object.raw().to_string();
                        self.open = None;
                        if started {
                            // A call that broke off: keep what was sent.
                            self.calls += 1;
                            self.phase = Phase::Ended;
                        } else {
                            self.not_a_call(raw, out);
                        }
                    }
                }
            }
            Phase::After => match self.body {
                Body::Hermes => {
                    self.held.push(c);
                    if self.held.ends_with(HERMES_END) {
                        self.held.clear();
                        self.phase = Phase::Text;
                    }
                }
                Body::Array => {
                    if c == ',' && self.in_array {
                        self.phase = Phase::Before;
                    } else if !self.in_array || !c.is_whitespace() {
                        // `]`, or anything else after the last call.
                        self.phase = Phase::Ended;
                    }
                }
            },
            Phase::Ended => {}
        }
    }

    fn content(&mut self, text: String, out: &mut Vec<CallEvent>) {
        if !text.is_empty() {
            out.push(CallEvent::Content(text));
        }
    }

    /// What followed the tag is not a call: it is content after all.
    fn fall_back(&mut self, c: char, out: &mut Vec<CallEvent>) {
        let mut text = String::new();
        if self.calls == 0 {
            text.push_str(self.tag);
        }
        text.push_str(&std::mem::take(&mut self.held));
        text.push(c);
        self.phase = if self.tag.is_empty() {
            Phase::Ended
        } else {
            Phase::Text
        };
        if self.tag.is_empty() {
            // Required output is grammar-made; anything else is dropped.
            return;
        }
        self.content(text, out);
    }

    fn not_a_call(&mut self, raw: String, out: &mut Vec<CallEvent>) {
        if self.tag.is_empty() {
            self.phase = Phase::Ended;
            return;
        }
        let text = format!("{}{raw}", self.tag);
        self.content(text, out);
        self.phase = Phase::Text;
    }
}

impl CallParser for Tagged {
    fn push(&mut self, text: &str, out: &mut Vec<CallEvent>) {
        for c in text.chars() {
            self.feed(c, out);
        }
    }

    fn finish(&mut self, out: &mut Vec<CallEvent>) {
        let unnamed = self.open.take().and_then(|o| o.end(self.calls, out));
        if let Some(raw) = unnamed.filter(|_| !self.tag.is_empty()) {
            self.content(format!("{}{raw}", self.tag), out);
        }
        if self.phase == Phase::Text && !(self.calls > 0 && self.held.trim().is_empty()) {
            let held = std::mem::take(&mut self.held);
            self.content(held, out);
        }
    }
}

/// The longest suffix of `text` that is a proper prefix of `tag`.
fn partial_suffix(text: &str, tag: &str) -> usize {
    (1..tag.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && tag.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

const PYTHON_TAG: &str = "<|python_tag|>";

/// Llama 3.x JSON calls: the text starts (after whitespace, optionally
/// `<|python_tag|>`) with `{"name": .., "parameters": ..}` objects
/// separated by `;`; any other text is content.
#[derive(Default)]
struct Llama3 {
    /// Decided: `Some(true)` calls, `Some(false)` plain content.
    calls_mode: Option<bool>,
    held: String,
    open: Option<Open>,
    calls: usize,
    /// After an object, before `;`.
    between: bool,
    ended: bool,
}

impl Llama3 {
    fn feed(&mut self, c: char, out: &mut Vec<CallEvent>) {
        match self.calls_mode {
            Some(false) => out.push(CallEvent::Content(c.to_string())),
            None => {
                self.held.push(c);
                let t = self.held.trim_start();
                if t.starts_with(PYTHON_TAG) || t.starts_with('{') {
                    self.calls_mode = Some(true);
                    let rest = t.strip_prefix(PYTHON_TAG).unwrap_or(t).to_string();
                    self.held.clear();
                    for c in rest.chars() {
                        self.feed_call(c, out);
                    }
                } else if !t.is_empty() && !PYTHON_TAG.starts_with(t) {
                    self.calls_mode = Some(false);
                    out.push(CallEvent::Content(std::mem::take(&mut self.held)));
                }
            }
            Some(true) => self.feed_call(c, out),
        }
    }

    fn feed_call(&mut self, c: char, out: &mut Vec<CallEvent>) {
        if self.ended {
            return;
        }
        if let Some(open) = self.open.as_mut() {
            match open.object.feed(c) {
                Fed::More => open.flush(self.calls, out),
                Fed::Closed if open.object.name().is_some() => {
                    open.close(self.calls, out);
                    self.calls += 1;
                    self.open = None;
                    self.between = true;
                }
                Fed::Closed | Fed::Invalid => {
                    let open = self.open.take();
                    match open {
                        Some(o) if o.started => {
                            self.calls += 1;
                            self.ended = true;
                        }
                        Some(o) => self.plain(o.object.raw().to_string(), out),
                        None => {}
                    }
                }
            }
            return;
        }
        if c.is_whitespace() {
            return;
        }
        if self.between {
            if c == ';' {
                self.between = false;
            } else {
                self.ended = true;
            }
            return;
        }
        if c == '{' {
            let mut open = Open::new();
            open.object.feed(c);
            self.open = Some(open);
        } else {
            self.ended = true;
        }
    }

    /// The text turned out not to be a call: all of it is content.
    fn plain(&mut self, raw: String, out: &mut Vec<CallEvent>) {
        if self.calls == 0 {
            self.calls_mode = Some(false);
            out.push(CallEvent::Content(raw));
        } else {
            self.ended = true;
        }
    }
}

impl CallParser for Llama3 {
    fn push(&mut self, text: &str, out: &mut Vec<CallEvent>) {
        for c in text.chars() {
            self.feed(c, out);
        }
    }

    fn finish(&mut self, out: &mut Vec<CallEvent>) {
        let unnamed = self.open.take().and_then(|o| o.end(self.calls, out));
        if let Some(raw) = unnamed.filter(|_| self.calls == 0) {
            out.push(CallEvent::Content(raw));
        }
        if self.calls_mode.is_none() && !self.held.is_empty() {
            out.push(CallEvent::Content(std::mem::take(&mut self.held)));
        }
    }
}
