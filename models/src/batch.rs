//! The input of one forward pass: a ragged batch of sequences, flattened
//! once per step into the arrays a device kernel reads (token ids,
//! positions, block tables, slot mapping, logits rows), so no op rebuilds
//! them per layer.

use crate::error::{ModelError, Result};
use llm_serve_kernels::attention::SeqSpan;

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

/// One sequence's part of a batch, as its caller sees it.
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
    /// LoRA adapter slot of its rows (`None`: the base model).
    pub adapter: Option<u16>,
}

/// Where one sequence's rows and blocks sit in the flattened step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqRows {
    /// Row of its first new token.
    pub start: usize,
    /// New tokens this step.
    pub len: usize,
    /// Tokens in its cache once this step's tokens are written.
    pub context_len: usize,
    /// Its block table is `block_tables[table_start..table_start + table_len]`.
    pub table_start: usize,
    pub table_len: usize,
    /// LoRA adapter slot of its rows (`None`: the base model).
    pub adapter_slot: Option<u16>,
}

/// One step's inputs, flattened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepInputs {
    pub block_size: usize,
    /// New tokens of every sequence, sequence by sequence.
    pub token_ids: Vec<u32>,
    /// Position of each new token in its sequence.
    pub positions: Vec<usize>,
    pub seqs: Vec<SeqRows>,
    /// Every sequence's block table, concatenated.
    pub block_tables: Vec<u32>,
    /// Cache slot each new token's K/V goes to: `block * block_size + offset`.
    pub slot_mapping: Vec<u32>,
    /// Rows whose logits are computed, in output order.
    pub logits_rows: Vec<u32>,
}

impl StepInputs {
    /// Flattens `seqs` for a cache of `block_size`-token blocks, checking
    /// that each has new tokens and a block table covering them.
    pub fn new(block_size: usize, seqs: &[SeqInput]) -> Result<Self> {
        if block_size == 0 {
            return Err(ModelError::Batch("block size 0".into()));
        }
        let tokens: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        let tables: usize = seqs.iter().map(|s| s.block_table.len()).sum();
        let mut out = StepInputs {
            block_size,
            token_ids: Vec::with_capacity(tokens),
            positions: Vec::with_capacity(tokens),
            seqs: Vec::with_capacity(seqs.len()),
            block_tables: Vec::with_capacity(tables),
            slot_mapping: Vec::with_capacity(tokens),
            logits_rows: Vec::new(),
        };
        for (i, s) in seqs.iter().enumerate() {
            out.push(i, s)?;
        }
        Ok(out)
    }

    fn push(&mut self, i: usize, s: &SeqInput) -> Result<()> {
        if s.tokens.is_empty() {
            return Err(ModelError::Batch(format!("sequence {i} has no new tokens")));
        }
        let end = s.start_pos + s.tokens.len();
        if s.block_table.len() * self.block_size < end {
            return Err(ModelError::Batch(format!(
                "sequence {i}: {} blocks of {} tokens do not cover position {end}",
                s.block_table.len(),
                self.block_size
            )));
        }
        let start = self.token_ids.len();
        self.token_ids.extend_from_slice(s.tokens);
        self.positions.extend(s.start_pos..end);
        let bs = self.block_size;
        self.slot_mapping.extend(
            (s.start_pos..end).map(|p| s.block_table[p / bs] * bs as u32 + (p % bs) as u32),
        );
        self.seqs.push(SeqRows {
            start,
            len: s.tokens.len(),
            context_len: end,
            table_start: self.block_tables.len(),
            table_len: s.block_table.len(),
            adapter_slot: s.adapter,
        });
        self.block_tables.extend_from_slice(s.block_table);
        match s.logits {
            LogitsWanted::None => {}
            LogitsWanted::Last => self.logits_rows.push((start + s.tokens.len() - 1) as u32),
            LogitsWanted::All => self
                .logits_rows
                .extend((start..start + s.tokens.len()).map(|t| t as u32)),
        }
        Ok(())
    }

    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    /// The block table of sequence `i`.
    pub fn block_table(&self, i: usize) -> &[u32] {
        let s = &self.seqs[i];
        &self.block_tables[s.table_start..s.table_start + s.table_len]
    }

    /// The sequences as the CPU attention kernels read them.
    pub fn spans(&self) -> Vec<SeqSpan<'_>> {
        self.seqs
            .iter()
            .enumerate()
            .map(|(i, s)| SeqSpan {
                start: s.start,
                len: s.len,
                context_len: s.context_len,
                block_table: self.block_table(i),
            })
            .collect()
    }
}
