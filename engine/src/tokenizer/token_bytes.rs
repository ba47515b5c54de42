//! The raw bytes behind each token (for logprobs' `bytes`, and to tell a
//! partial UTF-8 character from a complete one).

use std::collections::HashMap;

pub enum TokenBytes {
    /// GPT-2 style: every byte is spelled by one printable character.
    ByteLevel(HashMap<char, u8>),
    /// SentencePiece: `▁` is a space, `<0xNN>` a raw byte.
    SentencePiece,
    /// Anything else: the UTF-8 of the decoded token.
    Decoded,
}

/// GPT-2's byte-to-character table, inverted.
fn byte_level_table() -> HashMap<char, u8> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut table = HashMap::new();
    let mut extra = 0u32;
    for b in 0..=255u32 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        if let Some(ch) = char::from_u32(c) {
            table.insert(ch, b as u8);
        }
    }
    table
}

impl TokenBytes {
    pub fn byte_level(_t: &tokenizers::Tokenizer) -> Self {
        TokenBytes::ByteLevel(byte_level_table())
    }

    pub fn sentencepiece(_t: &tokenizers::Tokenizer) -> Self {
        TokenBytes::SentencePiece
    }

    /// Picks the scheme from a tokenizer.json's decoder.
    pub fn detect(t: &tokenizers::Tokenizer) -> Self {
        let decoder = t
            .get_decoder()
            .and_then(|d| serde_json::to_value(d).ok())
            .map(|v| v.to_string())
            .unwrap_or_default();
        if decoder.contains("\"ByteLevel\"") {
            TokenBytes::ByteLevel(byte_level_table())
        } else if decoder.contains("ByteFallback") || decoder.contains("Metaspace") {
            TokenBytes::SentencePiece
        } else {
            TokenBytes::Decoded
        }
    }

    pub fn get(&self, t: &tokenizers::Tokenizer, id: u32) -> Vec<u8> {
        let is_added = t.get_added_tokens_decoder().get(&id).is_some();
        let Some(tok) = t.id_to_token(id) else {
            return Vec::new();
        };
        if is_added {
            return tok.into_bytes();
        }
        match self {
            TokenBytes::ByteLevel(table) => tok
                .chars()
                .map(|c| table.get(&c).copied().unwrap_or(b'?'))
                .collect(),
            TokenBytes::SentencePiece => {
                if let Some(hex) = tok.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')) {
                    if let Ok(b) = u8::from_str_radix(hex, 16) {
                        return vec![b];
                    }
                }
                tok.replace('▁', " ").into_bytes()
            }
            TokenBytes::Decoded => t.decode(&[id], false).unwrap_or_default().into_bytes(),
        }
    }
}
