//! Builds a Hugging Face `tokenizer.json` from a GGUF file's vocabulary, so
//! GGUF-only models tokenize exactly as llama.cpp does.
//!
//! - `gpt2` (byte-level BPE): vocab + merges, the pre-tokenizer regexes
//!   llama.cpp uses for the file's `tokenizer.ggml.pre`, control and
//!   user-defined tokens as added tokens (so `<|im_start|>` is one token).
//! - `llama` (SentencePiece BPE): vocab with scores turned into merges
//!   ranked by the merged piece's score, byte fallback, and llama.cpp's
//!   space handling (a `▁` before the text and after every special token).

use crate::error::{EngineError, Result};
use llm_serve_models::gguf_file::{Content, Value};
use serde_json::{json, Map, Value as Json};
use std::collections::HashMap;

const TYPE_NORMAL: i32 = 1;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer regexes (applied in order) and whether whole-word
/// vocabulary hits skip the merges, for a GGUF `tokenizer.ggml.pre` name.
fn pre_tokenizer(pre: &str) -> (Vec<&'static str>, bool) {
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "llama4" => {
            (vec![LLAMA3_REGEX], true)
        }
        "qwen2" | "stablelm2" | "deepseek-r1-qwen" | "megrez" | "hunyuan" => {
            (vec![QWEN2_REGEX], false)
        }
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            (vec![r"\p{N}", GPT2_REGEX], false)
        }
        "gpt-2" | "gpt2" | "mpt" | "olmo" | "jais" | "default" | "trillion" => {
            (vec![GPT2_REGEX], false)
        }
        other => {
            tracing::warn!(
                "GGUF pre-tokenizer {other:?} is not known here; using the GPT-2 splitting rules, which may tokenize some text differently from llama.cpp"
            );
            (vec![GPT2_REGEX], false)
        }
    }
}

struct Meta<'a>(&'a Content);

impl Meta<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.metadata.get(key)
    }

    fn string(&self, key: &str) -> Option<String> {
        match self.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        }
    }

    fn u32(&self, key: &str) -> Option<u32> {
        match self.get(key)? {
            Value::U32(v) => Some(*v),
            Value::I32(v) => u32::try_from(*v).ok(),
            Value::U64(v) => u32::try_from(*v).ok(),
            Value::I64(v) => u32::try_from(*v).ok(),
            Value::U16(v) => Some(*v as u32),
            Value::U8(v) => Some(*v as u32),
            _ => None,
        }
    }

    fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>> {
        match self.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(EngineError::Tokenizer(format!("{key}: expected strings"))),
                })
                .collect(),
            _ => Err(EngineError::Tokenizer(format!(
                "GGUF metadata has no {key}"
            ))),
        }
    }

    fn numbers(&self, key: &str) -> Option<Vec<f64>> {
        match self.get(key) {
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|v| match v {
                        Value::F32(x) => *x as f64,
                        Value::F64(x) => *x,
                        Value::I32(x) => *x as f64,
                        Value::U32(x) => *x as f64,
                        Value::I64(x) => *x as f64,
                        Value::U8(x) => *x as f64,
                        Value::I8(x) => *x as f64,
                        _ => f64::NAN,
                    })
                    .collect(),
            ),
            _ => None,
        }
    }
}

/// What the GGUF says about special tokens, beside the tokenizer itself.
pub struct GgufTokenizerInfo {
    pub json: String,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// Tokens that end generation besides EOS (end-of-turn and the like).
    pub extra_eog_ids: Vec<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
    pub byte_level: bool,
}

pub fn from_gguf(content: &Content) -> Result<GgufTokenizerInfo> {
    let meta = Meta(content);
    let model = meta.string("tokenizer.ggml.model").ok_or_else(|| {
        EngineError::Tokenizer("GGUF metadata has no tokenizer.ggml.model".into())
    })?;
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let types: Vec<i32> = meta
        .numbers("tokenizer.ggml.token_type")
        .map(|v| v.into_iter().map(|x| x as i32).collect())
        .unwrap_or_else(|| vec![TYPE_NORMAL; tokens.len()]);
    if types.len() != tokens.len() {
        return Err(EngineError::Tokenizer(format!(
            "tokenizer.ggml.token_type has {} entries for {} tokens",
            types.len(),
            tokens.len()
        )));
    }
    let bos = meta.u32("tokenizer.ggml.bos_token_id");
    let eos = meta.u32("tokenizer.ggml.eos_token_id");
    let unk = meta.u32("tokenizer.ggml.unknown_token_id");
    let byte_level = model == "gpt2";
    let add_bos = meta
        .bool("tokenizer.ggml.add_bos_token")
        .unwrap_or(model == "llama");
    let add_eos = meta.bool("tokenizer.ggml.add_eos_token").unwrap_or(false);
    let mut extra_eog_ids = Vec::new();
    for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        if let Some(id) = meta.u32(key) {
            extra_eog_ids.push(id);
        }
    }
    let added_tokens: Vec<Json> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, t))| **t == TYPE_CONTROL || **t == TYPE_USER_DEFINED)
        .map(|(id, (tok, t))| {
            json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": *t == TYPE_CONTROL,
            })
        })
        .collect();
    let (model_json, normalizer, pre_tok, decoder) = match model.as_str() {
        "gpt2" => {
            let merges = meta.strings("tokenizer.ggml.merges")?;
            let pre = meta
                .string("tokenizer.ggml.pre")
                .unwrap_or_else(|| "default".into());
            let (regexes, ignore_merges) = pre_tokenizer(&pre);
            let vocab: Map<String, Json> = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), json!(i)))
                .collect();
            let mut splits: Vec<Json> = regexes
                .iter()
                .map(|r| {
                    json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false})
                })
                .collect();
            splits.push(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}));
            let merges: Vec<Json> = merges
                .iter()
                .map(|m| match m.split_once(' ') {
                    Some((a, b)) => json!([a, b]),
                    None => json!([m, ""]),
                })
                .collect();
            (
                json!({
                    "type": "BPE", "dropout": null, "unk_token": null,
                    "continuing_subword_prefix": null, "end_of_word_suffix": null,
                    "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
                    "vocab": vocab, "merges": merges,
                }),
                Json::Null,
                json!({"type": "Sequence", "pretokenizers": splits}),
                json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}),
            )
        }
        "llama" => {
            let scores = meta
                .numbers("tokenizer.ggml.scores")
                .unwrap_or_else(|| vec![0.0; tokens.len()]);
            let add_space_prefix = meta.bool("tokenizer.ggml.add_space_prefix").unwrap_or(true);
            let unk_token = unk.and_then(|u| tokens.get(u as usize)).cloned();
            let (vocab, merges) = spm_merges(&tokens, &types, &scores);
            let mut normalizers = Vec::new();
            if add_space_prefix {
                normalizers.push(json!({"type": "Prepend", "prepend": "▁"}));
            }
            normalizers
                .push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
            let mut decoders = vec![
                json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if add_space_prefix {
                decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            (
                json!({
                    "type": "BPE", "dropout": null, "unk_token": unk_token,
                    "continuing_subword_prefix": null, "end_of_word_suffix": null,
                    "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                    "vocab": vocab, "merges": merges,
                }),
                json!({"type": "Sequence", "normalizers": normalizers}),
                Json::Null,
                json!({"type": "Sequence", "decoders": decoders}),
            )
        }
        other => {
            return Err(EngineError::Tokenizer(format!(
                "GGUF tokenizer model {other:?} is not supported (gpt2 and llama are)"
            )))
        }
    };
    let post = post_processor(&tokens, bos.filter(|_| add_bos), eos.filter(|_| add_eos));
    let json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tok,
        "post_processor": post,
        "decoder": decoder,
        "model": model_json,
    });
    Ok(GgufTokenizerInfo {
        json: json.to_string(),
        bos_token_id: bos,
        eos_token_id: eos,
        extra_eog_ids,
        add_bos,
        chat_template: meta.string("tokenizer.chat_template"),
        byte_level,
    })
}

/// BOS/EOS insertion when encoding with special tokens.
fn post_processor(tokens: &[String], bos: Option<u32>, eos: Option<u32>) -> Json {
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut specials = Map::new();
    let name = |id: u32| tokens.get(id as usize).cloned().unwrap_or_default();
    if let Some(b) = bos {
        single.push(json!({"SpecialToken": {"id": name(b), "type_id": 0}}));
        pair.push(json!({"SpecialToken": {"id": name(b), "type_id": 0}}));
        specials.insert(
            name(b),
            json!({"id": name(b), "ids": [b], "tokens": [name(b)]}),
        );
    }
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    pair.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    if let Some(e) = eos {
        single.push(json!({"SpecialToken": {"id": name(e), "type_id": 0}}));
        pair.push(json!({"SpecialToken": {"id": name(e), "type_id": 0}}));
        specials.insert(
            name(e),
            json!({"id": name(e), "ids": [e], "tokens": [name(e)]}),
        );
    }
    pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}

/// SentencePiece BPE as vocab + merges: every way to split a normal piece
/// into two pieces of the vocabulary is a merge, ranked by the merged
/// piece's score (higher first), as llama.cpp's bigram search ranks them.
fn spm_merges(tokens: &[String], types: &[i32], scores: &[f64]) -> (Map<String, Json>, Vec<Json>) {
    let mut vocab = Map::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t.clone(), json!(i));
        index.entry(t.as_str()).or_insert(i);
    }
    let mut merges: Vec<(f64, usize, usize, usize)> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if types[i] != TYPE_NORMAL && types[i] != TYPE_USER_DEFINED {
            continue;
        }
        let chars: Vec<(usize, char)> = t.char_indices().collect();
        for &(split, _) in chars.iter().skip(1) {
            let (a, b) = t.split_at(split);
            if let (Some(&ia), Some(&ib)) = (index.get(a), index.get(b)) {
                let usable = |j: usize| types[j] == TYPE_NORMAL || types[j] == TYPE_USER_DEFINED;
                if usable(ia) && usable(ib) {
                    merges.push((scores.get(i).copied().unwrap_or(0.0), i, ia, ib));
                }
            }
        }
    }
    merges.sort_by(|x, y| {
        y.0.partial_cmp(&x.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(x.1.cmp(&y.1))
            .then(x.2.cmp(&y.2))
    });
    let merges = merges
        .into_iter()
        .map(|(_, _, a, b)| json!([tokens[a], tokens[b]]))
        .collect();
    (vocab, merges)
}
