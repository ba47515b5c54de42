//! What a request constrains its output to, and its compilation into a
//! grammar for this model's vocabulary. Compilation is where a bad schema
//! or grammar is found, so it runs before a response starts: the error is
//! the caller's 400, naming the field the constraint came from.

use super::vocab;
use crate::error::{EngineError, Result};
use crate::tokenizer::Tokenizer;
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory, TokenParser};
use serde_json::{json, Value};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

/// The whitespace JSON may have wherever JSON allows it: at most 8
/// characters at each place, so a small model cannot ramble to
/// `max_tokens` in blank lines (vLLM caps it at 8 too).
pub const JSON_WHITESPACE: &str = r"[\x20\x0A\x0D\x09]{1,8}";

#[derive(Clone, Debug, PartialEq)]
pub enum ConstraintKind {
    /// Text that is one JSON value valid under the schema.
    JsonSchema(Value),
    /// Any JSON object (`response_format: json_object`).
    JsonObject,
    /// Text the whole of which matches the regular expression.
    Regex(String),
    /// Exactly one of the strings.
    Choice(Vec<String>),
    /// A grammar in llguidance's Lark dialect.
    Lark(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Constraint {
    pub kind: ConstraintKind,
    /// The request field it came from, named in errors.
    pub param: String,
    /// JSON with no optional whitespace at all (vLLM's
    /// `disable_any_whitespace`); otherwise bounded by [`JSON_WHITESPACE`].
    pub compact_json: bool,
}

impl Constraint {
    fn error(&self, message: impl std::fmt::Display) -> EngineError {
        EngineError::InvalidConstraint {
            param: self.param.clone(),
            message: format!("Grammar error in `{}`: {message}", self.param),
        }
    }

    fn top_level(&self) -> Result<TopLevelGrammar> {
        Ok(match &self.kind {
            ConstraintKind::JsonSchema(schema) => {
                TopLevelGrammar::from_json_schema(self.json_options(schema)?)
            }
            ConstraintKind::JsonObject => {
                TopLevelGrammar::from_json_schema(self.json_options(&json!({"type": "object"}))?)
            }
            ConstraintKind::Regex(rx) => {
                // Checked here: llguidance's rewrite assumes a valid regex.
                regex_syntax::Parser::new()
                    .parse(rx)
                    .map_err(|e| self.error(format!("invalid regular expression: {e}")))?;
                TopLevelGrammar::from_regex(rx)
            }
            ConstraintKind::Choice(items) => {
                if items.is_empty() {
                    return Err(self.error("the list of choices is empty"));
                }
                let alternatives: Vec<String> =
                    items.iter().map(|s| regex_syntax::escape(s)).collect();
                TopLevelGrammar::from_regex(&alternatives.join("|"))
            }
            ConstraintKind::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
        })
    }

    /// The schema with this server's JSON options (any `x-guidance` the
    /// request brought is replaced: whitespace is the server's to bound).
    fn json_options(&self, schema: &Value) -> Result<Value> {
        let mut object = match schema {
            Value::Object(m) => m.clone(),
            Value::Bool(true) => serde_json::Map::new(),
            Value::Bool(false) => return Err(self.error("the schema `false` admits no value")),
            other => {
                return Err(self.error(format!(
                    "a JSON Schema must be an object or a boolean, got `{other}`"
                )))
            }
        };
        let options = if self.compact_json {
            json!({"whitespace_flexible": false})
        } else {
            json!({"whitespace_pattern": JSON_WHITESPACE})
        };
        object.insert("x-guidance".into(), options);
        Ok(Value::Object(object))
    }
}

/// One model's grammar compiler: its vocabulary's token trie and limits.
pub struct Grammars {
    factory: ParserFactory,
}

impl Grammars {
    /// `width` is the model's logits width; `stop_ids` the tokens a
    /// sequence ends on (what a complete grammar then allows).
    pub fn new(tokenizer: Arc<Tokenizer>, width: usize, stop_ids: &[u32]) -> Result<Self> {
        let env = vocab::token_env(tokenizer, width, stop_ids)?;
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| EngineError::Tokenizer(format!("building the token trie: {e}")))?;
        factory.set_stderr_log_level(0);
        factory.set_buffer_log_level(0);
        // llguidance's default fuel and size limits bound what one grammar
        // may cost to compile and per token; errors stay short.
        factory.limits_mut().verbose_errors = false;
        Ok(Grammars { factory })
    }

    /// Compiles `c`, and computes its first mask, so that a grammar that
    /// cannot start (or is too complex for the limits) fails here.
    pub fn compile(&self, c: &Constraint) -> Result<Grammar> {
        let top = c.top_level()?;
        let parser = std::panic::catch_unwind(AssertUnwindSafe(|| self.factory.create_parser(top)))
            .map_err(|_| c.error("the grammar compiler failed on this input"))?
            .map_err(|e| c.error(e))?;
        let grammar = Grammar { parser };
        let mut first = grammar.matcher();
        let mask = first.compute_mask().map_err(|e| c.error(e))?;
        if mask.num_set() == 0 {
            return Err(c.error("the grammar admits no token at the start"));
        }
        Ok(grammar)
    }
}

/// A compiled constraint, ready to start one matcher per sample.
#[derive(Clone)]
pub struct Grammar {
    parser: TokenParser,
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Grammar")
    }
}

impl Grammar {
    /// A fresh matcher at the start of the grammar.
    pub fn matcher(&self) -> Matcher {
        Matcher::new(Ok(self.parser.deep_clone()))
    }
}
