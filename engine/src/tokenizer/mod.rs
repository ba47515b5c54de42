//! Text <-> token ids for a model: from its `tokenizer.json` when it ships
//! one, otherwise built from the GGUF vocabulary. Also knows the special
//! tokens (BOS, the end-of-generation set) and each token's raw bytes.

mod detok;
mod gguf;
mod token_bytes;

pub use detok::IncrementalDetokenizer;

use crate::error::{EngineError, Result};
use llm_serve_models::gguf_file::Content;
use llm_serve_models::{token_id_list, ModelFiles};
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;
use token_bytes::TokenBytes;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The same tokenizer with special-token parsing off (made on demand).
    plain: std::sync::OnceLock<tokenizers::Tokenizer>,
    bos_token_id: Option<u32>,
    eos_token_ids: Vec<u32>,
    special_ids: HashSet<u32>,
    bytes: TokenBytes,
    /// Template inputs from tokenizer_config.json / the GGUF.
    pub(crate) chat_template: Option<String>,
    pub(crate) bos_token: Option<String>,
    pub(crate) eos_token: Option<String>,
    /// Whether prompts get BOS when encoded with special tokens.
    add_bos: bool,
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| EngineError::Tokenizer(format!("{}: invalid JSON: {e}", path.display())))
}

/// `"<s>"` or `{"content": "<s>", ...}`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// The model's tokenizer: `tokenizer.json` (+ `tokenizer_config.json`,
    /// `generation_config.json`) when present, else the GGUF vocabulary.
    pub fn load(files: &ModelFiles, gguf: Option<&Content>) -> Result<Self> {
        match (&files.tokenizer_json, gguf) {
            (Some(path), _) => Self::from_hf_files(files, path, gguf),
            (None, Some(content)) => Self::from_gguf(content, files),
            (None, None) => Err(EngineError::Tokenizer(format!(
                "{}: no tokenizer.json next to the weights",
                files.weights_path().display()
            ))),
        }
    }

    /// Builds the tokenizer from GGUF metadata alone.
    pub fn from_gguf(content: &Content, files: &ModelFiles) -> Result<Self> {
        let info = gguf::from_gguf(content)?;
        let inner = tokenizers::Tokenizer::from_bytes(info.json.as_bytes()).map_err(tok_err)?;
        let name = |id: Option<u32>| id.and_then(|i| inner.id_to_token(i));
        let mut eos_token_ids: Vec<u32> = info.eos_token_id.into_iter().collect();
        eos_token_ids.extend(info.extra_eog_ids.iter().copied());
        if let Some(gc) = &files.generation_config {
            eos_token_ids.extend(token_id_list(read_json(gc)?.get("eos_token_id")));
        }
        dedup(&mut eos_token_ids);
        let bytes = if info.byte_level {
            TokenBytes::byte_level(&inner)
        } else {
            TokenBytes::sentencepiece(&inner)
        };
        let special_ids = special_ids(&inner);
        Ok(Tokenizer {
            bos_token: name(info.bos_token_id),
            eos_token: name(info.eos_token_id),
            bos_token_id: info.bos_token_id,
            eos_token_ids,
            special_ids,
            bytes,
            chat_template: files
                .chat_template
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .or(info.chat_template),
            add_bos: info.add_bos,
            inner,
            plain: std::sync::OnceLock::new(),
        })
    }

    fn from_hf_files(files: &ModelFiles, path: &Path, gguf: Option<&Content>) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", path.display())))?;
        let tc = match &files.tokenizer_config {
            Some(p) => read_json(p)?,
            None => Value::Null,
        };
        let bos_token = token_string(tc.get("bos_token"));
        let eos_token = token_string(tc.get("eos_token"));
        let id_of = |s: &Option<String>| s.as_deref().and_then(|s| inner.token_to_id(s));
        let mut eos_token_ids: Vec<u32> = id_of(&eos_token).into_iter().collect();
        let mut bos_token_id = id_of(&bos_token);
        if let Some(gc) = &files.generation_config {
            let gc = read_json(gc)?;
            eos_token_ids.extend(token_id_list(gc.get("eos_token_id")));
            bos_token_id = bos_token_id.or(token_id_list(gc.get("bos_token_id")).first().copied());
        }
        if let Some(cfg) = &files.config {
            eos_token_ids.extend(token_id_list(read_json(cfg)?.get("eos_token_id")));
        }
        dedup(&mut eos_token_ids);
        let mut chat_template = match tc.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: the "default" one.
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Value::as_str))
                .map(str::to_string),
            _ => None,
        };
        if let Some(p) = &files.chat_template {
            chat_template = Some(
                std::fs::read_to_string(p)
                    .map_err(|e| EngineError::Template(format!("{}: {e}", p.display())))?,
            );
        }
        if chat_template.is_none() {
            chat_template = gguf.and_then(|g| match g.metadata.get("tokenizer.chat_template") {
                Some(llm_serve_models::gguf_file::Value::String(s)) => Some(s.clone()),
                _ => None,
            });
        }
        let add_bos = tc
            .get("add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let bytes = TokenBytes::detect(&inner);
        let special_ids = special_ids(&inner);
        Ok(Tokenizer {
            inner,
            plain: std::sync::OnceLock::new(),
            bos_token_id,
            eos_token_ids,
            special_ids,
            bytes,
            chat_template,
            bos_token,
            eos_token,
            add_bos,
        })
    }

    /// Token ids of `text`. `add_special_tokens` adds BOS/EOS as the model
    /// wants; special-token strings in the text are always parsed.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text` with special-token strings (`<|im_start|>`...)
    /// treated as plain text.
    pub fn encode_plain(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let plain = self.plain.get_or_init(|| {
            let mut t = self.inner.clone();
            t.set_encode_special_tokens(true);
            t
        });
        let enc = plain
            .encode_fast(text, add_special_tokens)
            .map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; `skip_special_tokens` drops control tokens.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(tok_err)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    /// Whether prompts should start with BOS (templates often add it).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Tokens that end generation (EOS and friends).
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// The vocabulary string of a token (as the model spells it).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The raw bytes a token stands for (may be part of a UTF-8 character).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.bytes.get(&self.inner, id)
    }

    /// A token's display text: its decoded string, or its vocabulary string
    /// when it is not valid UTF-8 on its own.
    pub fn token_text(&self, id: u32) -> String {
        let bytes = self.token_bytes(id);
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(_) => self.decode(&[id], false).unwrap_or_default(),
        }
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }
}

fn dedup(ids: &mut Vec<u32>) {
    let mut seen = HashSet::new();
    ids.retain(|id| seen.insert(*id));
}

fn special_ids(t: &tokenizers::Tokenizer) -> HashSet<u32> {
    t.get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, tok)| tok.special)
        .map(|(id, _)| id)
        .collect()
}
