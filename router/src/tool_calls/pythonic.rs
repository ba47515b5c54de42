//! Pythonic tool calls, `[get_weather(city="Paris", days=3), now()]`:
//! held until the text ends (a partial Python call is not JSON), then
//! read with a small parser of Python literals into JSON arguments. Text
//! that does not start with `[` or does not parse is content.

use super::{CallEvent, CallParser};
use serde_json::{Map, Number, Value};

#[derive(Default)]
pub struct Pythonic {
    text: String,
    /// The text does not start with `[`: it streams as content.
    plain: bool,
}

impl CallParser for Pythonic {
    fn push(&mut self, text: &str, out: &mut Vec<CallEvent>) {
        if self.plain {
            out.push(CallEvent::Content(text.to_string()));
            return;
        }
        self.text.push_str(text);
        let t = self.text.trim_start();
        if !t.is_empty() && !t.starts_with('[') {
            self.plain = true;
            out.push(CallEvent::Content(std::mem::take(&mut self.text)));
        }
    }

    fn finish(&mut self, out: &mut Vec<CallEvent>) {
        if self.plain || self.text.is_empty() {
            return;
        }
        match parse_calls(&self.text) {
            Some(calls) if !calls.is_empty() => {
                for (index, (name, args)) in calls.into_iter().enumerate() {
                    out.push(CallEvent::Start { index, name });
                    out.push(CallEvent::Arguments {
                        index,
                        fragment: Value::Object(args).to_string(),
                    });
                }
            }
            _ => out.push(CallEvent::Content(std::mem::take(&mut self.text))),
        }
    }
}

/// `[f(a=1), g()]` as (name, arguments) pairs; `None` if it is not that.
pub fn parse_calls(text: &str) -> Option<Vec<(String, Map<String, Value>)>> {
    let mut p = Reader {
        s: text.trim().as_bytes(),
        i: 0,
    };
    p.expect(b'[')?;
    let mut calls = Vec::new();
    p.items(b']', |p| {
        let name = p.dotted_name()?;
        p.ws();
        p.expect(b'(')?;
        let mut args = Map::new();
        p.items(b')', |p| {
            let key = p.name()?;
            p.ws();
            p.expect(b'=')?;
            let v = p.value(0)?;
            args.insert(key, v);
            Some(())
        })?;
        calls.push((name, args));
        Some(())
    })?;
    p.ws();
    (p.i == p.s.len()).then_some(calls)
}

struct Reader<'a> {
    s: &'a [u8],
    i: usize,
}

/// Nesting deeper than this is refused (no unbounded recursion).
const MAX_DEPTH: usize = 64;

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        self.eat(c).then_some(())
    }

    /// Comma-separated items up to `close` (a trailing comma allowed),
    /// the opening bracket already read.
    fn items(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        let mut first = true;
        loop {
            self.ws();
            if self.eat(close) {
                return Some(());
            }
            if !first {
                self.expect(b',')?;
                self.ws();
                if self.eat(close) {
                    return Some(());
                }
            }
            first = false;
            item(self)?;
        }
    }

    fn name(&mut self) -> Option<String> {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        {
            self.i += 1;
        }
        let n = std::str::from_utf8(&self.s[start..self.i]).ok()?;
        (!n.is_empty() && !n.as_bytes()[0].is_ascii_digit()).then(|| n.to_string())
    }

    fn dotted_name(&mut self) -> Option<String> {
        let mut n = self.name()?;
        while self.eat(b'.') {
            n.push('.');
            n.push_str(&self.name()?);
        }
        Some(n)
    }

    fn value(&mut self, depth: usize) -> Option<Value> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        let v = match self.peek()? {
            b'\'' | b'"' => Value::String(self.string()?),
            b'[' | b'(' => {
                let close = if self.peek() == Some(b'[') {
                    b']'
                } else {
                    b')'
                };
                self.i += 1;
                let mut items = Vec::new();
                self.items(close, |p| {
                    items.push(p.value(depth + 1)?);
                    Some(())
                })?;
                Value::Array(items)
            }
            b'{' => {
                self.i += 1;
                let mut m = Map::new();
                self.items(b'}', |p| {
                    let k = match p.value(depth + 1)? {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    p.ws();
                    p.expect(b':')?;
                    m.insert(k, p.value(depth + 1)?);
                    Some(())
                })?;
                Value::Object(m)
            }
            _ => self.atom()?,
        };
        self.ws();
        Some(v)
    }

    /// A number, `True`, `False` or `None`.
    fn atom(&mut self) -> Option<Value> {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'_'))
        {
            self.i += 1;
        }
        let word = std::str::from_utf8(&self.s[start..self.i]).ok()?;
        match word {
            "True" => Some(Value::Bool(true)),
            "False" => Some(Value::Bool(false)),
            "None" => Some(Value::Null),
            w => {
                if let Ok(i) = w.parse::<i64>() {
                    Some(Value::Number(i.into()))
                } else {
                    w.parse::<f64>()
                        .ok()
                        .and_then(Number::from_f64)
                        .map(Value::Number)
                }
            }
        }
    }

    fn string(&mut self) -> Option<String> {
        let quote = self.peek()?;
        self.i += 1;
        let mut bytes = Vec::new();
        loop {
            let c = self.peek()?;
            self.i += 1;
            match c {
                b'\\' => {
                    let e = self.peek()?;
                    self.i += 1;
                    match e {
                        b'n' => bytes.push(b'\n'),
                        b't' => bytes.push(b'\t'),
                        b'r' => bytes.push(b'\r'),
                        other => bytes.push(other),
                    }
                }
                c if c == quote => break,
                c => bytes.push(c),
            }
        }
        String::from_utf8(bytes).ok()
    }
}
