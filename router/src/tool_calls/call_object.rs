//! One JSON tool-call object, `{"name": "f", "arguments": {...}}` (or
//! `"parameters"`), scanned as its text arrives: the name as soon as its
//! string is complete, the arguments' raw text as it grows. Every format
//! that writes calls as JSON objects uses it, so streaming and whole
//! responses agree by construction.

/// Where the scanner is inside the object.
#[derive(Clone, Copy, Debug, PartialEq)]
enum At {
    /// Before the opening `{`.
    Start,
    KeyOrEnd,
    Key,
    Colon,
    Value,
    /// Inside a top-level value (`depth` counts nesting below the object).
    InValue,
    AfterValue,
    Done,
    Failed,
}

/// What feeding one character did.
#[derive(Debug, PartialEq)]
pub enum Fed {
    More,
    /// The object's closing brace.
    Closed,
    /// Not a JSON object: the caller falls back to plain text.
    Invalid,
}

#[derive(Debug)]
pub struct CallObject {
    at: At,
    in_string: bool,
    escaped: bool,
    depth: usize,
    key: String,
    value: String,
    /// Which key's value is being read.
    value_key: String,
    name: Option<String>,
    /// The arguments' raw JSON text (so far).
    arguments: String,
    /// Whether the arguments are a string holding JSON (held to the end).
    arguments_quoted: bool,
    arguments_done: bool,
    /// Everything fed, for the fallback to text.
    raw: String,
}

const ARGUMENT_KEYS: &[&str] = &["arguments", "parameters"];

impl CallObject {
    pub fn new() -> Self {
        CallObject {
            at: At::Start,
            in_string: false,
            escaped: false,
            depth: 0,
            key: String::new(),
            value: String::new(),
            value_key: String::new(),
            name: None,
            arguments: String::new(),
            arguments_quoted: false,
            arguments_done: false,
            raw: String::new(),
        }
    }

    pub fn raw(&self) -> &str {
        &self.raw
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The arguments text that may be sent now: while an object or array
    /// value is open, what has arrived; other values once complete.
    pub fn streamable_arguments(&self) -> &str {
        if self.arguments_done || (!self.arguments_quoted && self.value_key_is_arguments()) {
            &self.arguments
        } else {
            ""
        }
    }

    /// The whole arguments, once the object is closed (`{}` when absent).
    pub fn final_arguments(&self) -> String {
        if self.arguments.is_empty() && !self.arguments_done {
            "{}".to_string()
        } else {
            self.arguments.clone()
        }
    }

    fn value_key_is_arguments(&self) -> bool {
        self.at == At::InValue && ARGUMENT_KEYS.contains(&self.value_key.as_str())
    }

    pub fn feed(&mut self, c: char) -> Fed {
        self.raw.push(c);
        let fed = self.step(c);
        if fed == Fed::Invalid {
            self.at = At::Failed;
        }
        fed
    }

    fn step(&mut self, c: char) -> Fed {
        match self.at {
            At::Done | At::Failed => Fed::Invalid,
            At::Start if c.is_whitespace() => Fed::More,
            At::Start if c == '{' => {
                self.at = At::KeyOrEnd;
                Fed::More
            }
            At::Start => Fed::Invalid,
            At::KeyOrEnd if c.is_whitespace() => Fed::More,
            At::KeyOrEnd if c == '"' => {
                self.at = At::Key;
                self.key.clear();
                Fed::More
            }
            At::KeyOrEnd if c == '}' => self.close(),
            At::KeyOrEnd => Fed::Invalid,
            At::Key => {
                if self.escaped {
                    self.escaped = false;
                    self.key.push(c);
                } else if c == '\\' {
                    self.escaped = true;
                } else if c == '"' {
                    self.at = At::Colon;
                } else {
                    self.key.push(c);
                }
                Fed::More
            }
            At::Colon if c.is_whitespace() => Fed::More,
            At::Colon if c == ':' => {
                self.at = At::Value;
                Fed::More
            }
            At::Colon => Fed::Invalid,
            At::Value if c.is_whitespace() => Fed::More,
            At::Value => {
                self.value_key = std::mem::take(&mut self.key);
                self.value.clear();
                self.in_string = false;
                self.escaped = false;
                self.depth = 0;
                self.at = At::InValue;
                if self.value_key_is_arguments() {
                    self.arguments.clear();
                    self.arguments_quoted = c == '"';
                    self.arguments_done = false;
                }
                self.in_value(c)
            }
            At::InValue => self.in_value(c),
            At::AfterValue if c.is_whitespace() => Fed::More,
            At::AfterValue if c == ',' => {
                self.at = At::KeyOrEnd;
                Fed::More
            }
            At::AfterValue if c == '}' => self.close(),
            At::AfterValue => Fed::Invalid,
        }
    }

    /// A character of a top-level value.
    fn in_value(&mut self, c: char) -> Fed {
        let scalar = !self.value.starts_with(['{', '[', '"']) && !self.value.is_empty();
        // A number or literal ends at the delimiter after it.
        if scalar && self.depth == 0 && (c == ',' || c == '}' || c.is_whitespace()) {
            self.end_value();
            return self.step(c);
        }
        self.value.push(c);
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if c == '\\' {
                self.escaped = true;
            } else if c == '"' {
                self.in_string = false;
            }
        } else {
            match c {
                '"' => self.in_string = true,
                '{' | '[' => self.depth += 1,
                '}' | ']' => {
                    if self.depth == 0 {
                        return Fed::Invalid;
                    }
                    self.depth -= 1;
                }
                _ => {}
            }
        }
        if self.value_key_is_arguments() && !self.arguments_quoted {
            self.arguments.push(c);
        }
        // A string, object or array is complete when its closing quote or
        // bracket brings the scan back to the top.
        let complete =
            !self.in_string && self.depth == 0 && self.value.starts_with(['{', '[', '"']);
        if complete {
            self.end_value();
        }
        Fed::More
    }

    fn end_value(&mut self) {
        let value = std::mem::take(&mut self.value);
        match self.value_key.as_str() {
            "name" => self.name = serde_json::from_str::<String>(&value).ok(),
            k if ARGUMENT_KEYS.contains(&k) => {
                self.arguments = if self.arguments_quoted {
                    // A string holding the arguments' JSON.
                    serde_json::from_str::<String>(&value).unwrap_or(value)
                } else {
                    value.trim().to_string()
                };
                self.arguments_done = true;
            }
            _ => {}
        }
        self.at = At::AfterValue;
    }

    fn close(&mut self) -> Fed {
        self.at = At::Done;
        Fed::Closed
    }
}
