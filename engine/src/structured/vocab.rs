//! The model's vocabulary as llguidance's token trie: every id's raw
//! bytes (special tokens behind the 0xFF marker, so no grammar can spell
//! them by accident) and the end-of-sequence set the engine stops on.

use crate::error::{EngineError, Result};
use crate::tokenizer::Tokenizer;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use std::sync::Arc;

struct Vocabulary {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // Used for literal text in grammars; text the tokenizer cannot
        // take yields no tokens, and llguidance falls back to bytes.
        self.tokenizer
            .encode_plain(&String::from_utf8_lossy(s), false)
            .unwrap_or_default()
    }
}

/// The byte string llguidance sees for each of `width` token ids (the
/// model's logits width, which may exceed the tokenizer's vocabulary:
/// those ids become specials no grammar can produce).
pub fn token_words(tokenizer: &Tokenizer, width: usize) -> Vec<Vec<u8>> {
    let known = tokenizer.vocab_size();
    (0..width)
        .map(|id| {
            let id32 = id as u32;
            if id >= known {
                let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                w.extend_from_slice(format!("<[{id}]>").as_bytes());
                w
            } else if tokenizer.is_special(id32) {
                let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                w.extend_from_slice(&tokenizer.token_bytes(id32));
                w
            } else {
                tokenizer.token_bytes(id32)
            }
        })
        .collect()
}

/// The tokenizer environment grammars compile against; `stop_ids` are
/// the tokens that end a sequence (a grammar allows them once complete).
pub(crate) fn token_env(
    tokenizer: Arc<Tokenizer>,
    width: usize,
    stop_ids: &[u32],
) -> Result<TokEnv> {
    let stop: Vec<u32> = stop_ids
        .iter()
        .copied()
        .filter(|&t| (t as usize) < width)
        .collect();
    let Some(&first) = stop.first() else {
        return Err(EngineError::Tokenizer(
            "structured outputs need an end-of-sequence token, and this model's tokenizer names none inside its vocabulary".into(),
        ));
    };
    let width32 = u32::try_from(width).map_err(|_| {
        EngineError::Tokenizer(format!("a vocabulary of {width} tokens is too large"))
    })?;
    let words = token_words(&tokenizer, width);
    let trie = TokTrie::from(&TokRxInfo::new(width32, first), &words).with_eos_tokens(&stop);
    Ok(Arc::new(Vocabulary { trie, tokenizer }))
}
