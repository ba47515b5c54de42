//! Grammar-constrained decoding (structured outputs): a request's
//! constraint (a JSON Schema, JSON of any object, a regex, a choice of
//! strings or a Lark grammar) compiled by `llguidance` against the model's
//! vocabulary, then applied per sequence as the first logits processor, so
//! that what a constrained sequence generates is valid by construction.

mod constraint;
mod processor;
mod vocab;

pub use constraint::{Constraint, ConstraintKind, Grammar, Grammars, JSON_WHITESPACE};
pub use processor::GrammarProcessor;
pub use vocab::token_words;
