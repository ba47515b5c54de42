//! The input of one forward pass: a ragged batch of sequences.

/// Which positions of a sequence need logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsWanted {
    /// None (a prefill chunk that does not end the prompt).
    None,
    /// The last new token's (the usual case).
    Last,
    /// Every new token's (prompt logprobs).
    All,
}

/// One sequence's part of a batch.
#[derive(Clone, Copy, Debug)]
pub struct SeqInput<'a> {
    /// The new tokens this step (a prefill chunk or one decode token).
    pub tokens: &'a [u32],
    /// Position of the first new token; the cache already holds
    /// positions `0..start_pos` of this sequence.
    pub start_pos: usize,
    /// KV cache blocks of this sequence, covering `start_pos + tokens.len()`.
    pub block_table: &'a [u32],
    pub logits: LogitsWanted,
}
