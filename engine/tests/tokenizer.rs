//! Tokenizers built from GGUF metadata against llama.cpp on the same GGUF
//! (and against transformers' tokenizer.json where there is one), over a
//! multilingual corpus (fixtures/llamacpp/tokenizer_corpus.json, made by
//! scripts/llamacpp_reference.py and scripts/make_spm_fixture.py).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod common;
use llm_serve_engine::tokenizer::IncrementalDetokenizer;
use llm_serve_engine::Tokenizer;
use llm_serve_models::{gguf_file, ModelFiles, WeightsFormat};

fn ids(v: &serde_json::Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

fn gguf_tokenizer(path: &std::path::Path) -> Tokenizer {
    let mut f = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let files = ModelFiles::resolve(path.to_str().unwrap()).unwrap();
    Tokenizer::from_gguf(&content, &files).unwrap()
}

/// Decoding token by token must give the same text as decoding at once,
/// and no piece may carry a replacement character the full text lacks.
fn check_incremental(tok: &Tokenizer, ids: &[u32], skip_special: bool, text: &str) {
    let full = tok.decode(ids, skip_special).unwrap();
    let mut d = IncrementalDetokenizer::new(&[], skip_special);
    let mut pieces = String::new();
    for &id in ids {
        let piece = d.push(tok, id).unwrap();
        if !full.contains('\u{FFFD}') {
            assert!(
                !piece.contains('\u{FFFD}'),
                "{text:?}: broken UTF-8 piece {piece:?}"
            );
        }
        pieces.push_str(&piece);
    }
    pieces.push_str(&d.finish(tok).unwrap());
    assert_eq!(pieces, full, "{text:?}: incremental decode");
}

#[test]
fn smollm2_gguf_tokenizer_matches_llamacpp() {
    let tok = gguf_tokenizer(&common::default_model_path());
    let fx = common::read_json("llamacpp/tokenizer_smollm2_llamacpp.json");
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 40);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let got = tok.encode(text, false).unwrap();
        assert_eq!(
            got,
            ids(&c["ids_special"]),
            "{text:?} (special tokens parsed)"
        );
        let plain = tok.encode_plain(text, false).unwrap();
        assert_eq!(
            plain,
            ids(&c["ids_nospecial"]),
            "{text:?} (special tokens as text)"
        );
        assert_eq!(
            tok.decode(&got, false).unwrap(),
            c["detok_special"].as_str().unwrap(),
            "{text:?}: decode"
        );
        check_incremental(&tok, &got, false, text);
        check_incremental(&tok, &got, true, text);
    }
}

#[test]
fn smollm2_chat_markup_is_one_token_per_special() {
    let tok = gguf_tokenizer(&common::default_model_path());
    let ids = tok.encode("<|im_start|>assistant\n", false).unwrap();
    assert_eq!(ids[0], 1, "<|im_start|> is its own token");
    let spaced = tok.encode(" assistant", false).unwrap();
    assert_ne!(
        ids[1], spaced[0],
        "the role after <|im_start|> must not get a leading space"
    );
    assert_eq!(tok.decode(&ids[1..], false).unwrap(), "assistant\n");
    assert!(tok.is_special(1) && tok.is_special(2));
    assert_eq!(tok.eos_token_ids(), &[2]);
    assert_eq!(
        tok.decode(&ids, true).unwrap(),
        "assistant\n",
        "skip_special_tokens drops markup"
    );
}

#[test]
fn smollm2_tokenizer_json_matches_transformers_and_gguf() {
    let gguf = gguf_tokenizer(&common::default_model_path());
    let mut files = ModelFiles::resolve(common::default_model_path().to_str().unwrap()).unwrap();
    files.format = WeightsFormat::Gguf;
    files.tokenizer_json =
        Some(common::fixtures().join("llamacpp/smollm2-tokenizer/tokenizer.json"));
    let tj = Tokenizer::load(&files, None).unwrap();
    let fx = common::read_json("llamacpp/tokenizer_smollm2_transformers.json");
    for c in fx["cases"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let want = ids(&c["ids_special"]);
        assert_eq!(
            tj.encode(text, false).unwrap(),
            want,
            "{text:?} (tokenizer.json)"
        );
        assert_eq!(
            gguf.encode(text, false).unwrap(),
            want,
            "{text:?} (GGUF-built)"
        );
        assert_eq!(
            tj.decode(&want, false).unwrap(),
            c["decoded"].as_str().unwrap(),
            "{text:?}"
        );
        check_incremental(&tj, &want, false, text);
    }
}

#[test]
fn sentencepiece_gguf_tokenizer_matches_llamacpp() {
    let tok = gguf_tokenizer(&common::fixtures().join("spm/tiny-spm.gguf"));
    let fx = common::read_json("spm/tokenizer_spm_llamacpp.json");
    for c in fx["cases"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let got = tok.encode(text, false).unwrap();
        assert_eq!(
            got,
            ids(&c["ids_special"]),
            "{text:?} (special tokens parsed)"
        );
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids(&c["ids_special_add_bos"]),
            "{text:?} with BOS"
        );
        assert_eq!(
            tok.encode_plain(text, false).unwrap(),
            ids(&c["ids_nospecial"]),
            "{text:?} (special tokens as text)"
        );
        assert_eq!(
            tok.decode(&got, false).unwrap(),
            c["detok_llama_detokenize"].as_str().unwrap(),
            "{text:?}: decode"
        );
        check_incremental(&tok, &got, false, text);
    }
}

#[test]
fn token_bytes_reassemble_text() {
    let m = common::default_model();
    for text in [
        "héllo wörld",
        "日本語のテキスト",
        "emoji 👨‍👩‍👧 and 🇫🇷",
        "tab\tand\nnewline",
    ] {
        let ids = m.tokenizer.encode(text, false).unwrap();
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&i| m.tokenizer.token_bytes(i))
            .collect();
        assert_eq!(String::from_utf8(bytes).unwrap(), text);
    }
}
