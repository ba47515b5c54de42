//! Incremental detokenization: turns a growing list of token ids into text
//! deltas without ever emitting half a UTF-8 character.
//!
//! It decodes a short window of recent tokens twice (without and with the
//! newest ones) and emits the difference once it no longer ends in U+FFFD,
//! which is what byte-fallback and byte-level tokens decode to while a
//! character is still incomplete. Decoding a window (rather than single
//! tokens) keeps spacing rules that depend on the previous token right.

use super::Tokenizer;
use crate::error::Result;

/// Prompt tokens kept as left context for the first decoded window.
const INITIAL_CONTEXT: usize = 5;

#[derive(Clone, Debug)]
pub struct IncrementalDetokenizer {
    tokens: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    skip_special_tokens: bool,
}

impl IncrementalDetokenizer {
    /// `prompt` supplies left context only; its text is never emitted.
    pub fn new(prompt: &[u32], skip_special_tokens: bool) -> Self {
        let ctx = &prompt[prompt.len().saturating_sub(INITIAL_CONTEXT)..];
        IncrementalDetokenizer {
            tokens: ctx.to_vec(),
            prefix_offset: 0,
            read_offset: ctx.len(),
            skip_special_tokens,
        }
    }

    /// Adds one token; returns the text that became complete.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.tokens.push(id);
        self.flush_ready(tok, false)
    }

    /// Text still held back (an incomplete character at the very end),
    /// returned as is when generation ends.
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String> {
        self.flush_ready(tok, true)
    }

    fn flush_ready(&mut self, tok: &Tokenizer, force: bool) -> Result<String> {
        let prefix = tok.decode(
            &self.tokens[self.prefix_offset..self.read_offset],
            self.skip_special_tokens,
        )?;
        let full = tok.decode(&self.tokens[self.prefix_offset..], self.skip_special_tokens)?;
        if full.len() <= prefix.len() && !force {
            return Ok(String::new());
        }
        if full.ends_with('\u{FFFD}') && !force {
            return Ok(String::new());
        }
        let delta = match full.strip_prefix(prefix.as_str()) {
            Some(d) => d.to_string(),
            // The decoder rewrote the boundary (rare): skip as many
            // characters as the prefix had.
            None => full.chars().skip(prefix.chars().count()).collect(),
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = self.tokens.len();
        // Keep the window short: only the context the next decode needs.
        if self.prefix_offset > 64 {
            let drop = self.prefix_offset;
            self.tokens.drain(..drop);
            self.prefix_offset = 0;
            self.read_offset -= drop;
        }
        Ok(delta)
    }
}
