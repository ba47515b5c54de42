//! Structured outputs on the default model's vocabulary: random logits
//! sampled through a grammar's mask always give text that parses and
//! validates (JSON Schemas checked with the `jsonschema` crate, regexes
//! and choices by matching), compile errors name their field, and the
//! engine ends a constrained sequence when its grammar is complete.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use llm_serve_engine::structured::{
    token_words, Constraint, ConstraintKind, Grammar, GrammarProcessor, Grammars,
};
use llm_serve_engine::{
    ConstraintStatus, EngineError, EngineEvent, EngineRequest, SamplingParams, SequenceSampler,
    Tokenizer,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock};

struct Vocab {
    tokenizer: Arc<Tokenizer>,
    grammars: Grammars,
    width: usize,
}

fn vocab() -> &'static Vocab {
    static V: OnceLock<Vocab> = OnceLock::new();
    V.get_or_init(|| {
        let (model, tokenizer) = common::default_model_shared();
        let width = model.config().vocab_size;
        let grammars = Grammars::new(tokenizer.clone(), width, tokenizer.eos_token_ids()).unwrap();
        Vocab {
            tokenizer,
            grammars,
            width,
        }
    })
}

fn compile(kind: ConstraintKind) -> Result<Grammar, EngineError> {
    vocab().grammars.compile(&Constraint {
        kind,
        param: "response_format".into(),
        compact_json: false,
    })
}

/// Samples random logits through the grammar until it completes (or
/// `limit` tokens); the text, and whether it completed.
fn sample(g: &Grammar, seed: u64, limit: usize) -> (String, bool) {
    let v = vocab();
    let eos = v.tokenizer.eos_token_ids().to_vec();
    let params = SamplingParams {
        temperature: 1.0,
        seed: Some(seed),
        ..SamplingParams::default()
    };
    let mut sampler = SequenceSampler::new(&params, &[], &eos, 0);
    sampler.prepend_processor(Box::new(GrammarProcessor::new(g.matcher())));
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut tokens = Vec::new();
    let mut complete = false;
    for _ in 0..limit {
        let logits: Vec<f32> = (0..v.width)
            .map(|_| rng.random_range(-4.0f32..4.0))
            .collect();
        let s = sampler.sample(&logits);
        let status = sampler.constraint_status();
        if let ConstraintStatus::Failed(m) = &status {
            panic!("seed {seed}: {m}");
        }
        if eos.contains(&s.token) {
            complete = true;
            break;
        }
        tokens.push(s.token);
        if status == ConstraintStatus::Complete {
            complete = true;
            break;
        }
    }
    (v.tokenizer.decode(&tokens, false).unwrap(), complete)
}

fn schemas() -> Vec<Value> {
    vec![
        json!({"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 130},
            "member": {"type": "boolean"}},
            "required": ["name", "age", "member"], "additionalProperties": false}),
        json!({"type": "array", "items": {"enum": ["red", "green", "blue", 3, null]}, "minItems": 1, "maxItems": 4}),
        // Pydantic's shape: nested models behind $defs / $ref, strict.
        json!({"$defs": {"Address": {"type": "object", "title": "Address",
                "properties": {"city": {"type": "string", "maxLength": 10, "title": "City"},
                               "zip": {"type": "string", "pattern": "^[0-9]{5}$", "title": "Zip"}},
                "required": ["city", "zip"], "additionalProperties": false}},
               "type": "object", "title": "Person",
               "properties": {"home": {"$ref": "#/$defs/Address"},
                              "past": {"type": "array", "items": {"$ref": "#/$defs/Address"}, "maxItems": 2}},
               "required": ["home", "past"], "additionalProperties": false}),
        json!({"type": "object", "properties": {
            "score": {"type": "number", "minimum": -1, "maximum": 1},
            "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]{1,6}$"}, "maxItems": 3},
            "kind": {"const": "fixed"},
            "either": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "string", "maxLength": 3}]}},
            "required": ["score", "tags", "kind", "either"], "additionalProperties": false}),
    ]
}

fn validates(schema: &Value, text: &str) -> Result<(), String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("{text:?}: {e}"))?;
    let validator = jsonschema::validator_for(schema).unwrap();
    if validator.is_valid(&value) {
        Ok(())
    } else {
        Err(format!("{text:?} does not validate"))
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn random_logits_through_a_schema_mask_give_valid_json(seed in any::<u64>()) {
        for schema in schemas() {
            let g = compile(ConstraintKind::JsonSchema(schema.clone())).unwrap();
            let (text, complete) = sample(&g, seed, 400);
            prop_assert!(complete, "seed {seed}: no end after 400 tokens: {text:?}");
            prop_assert!(validates(&schema, &text).is_ok(), "{}", validates(&schema, &text).unwrap_err());
        }
    }

    #[test]
    fn random_logits_through_regex_and_choice_masks_match(seed in any::<u64>()) {
        let rx = "[a-z]{1,8}@[a-z]{2,5}\\.(com|org)";
        let g = compile(ConstraintKind::Regex(rx.into())).unwrap();
        let (text, complete) = sample(&g, seed, 100);
        prop_assert!(complete);
        let re = regex_full(rx);
        prop_assert!(re(&text), "{text:?} does not match {rx}");
        let choices = vec!["yes".to_string(), "no".into(), "maybe (later)".into()];
        let g = compile(ConstraintKind::Choice(choices.clone())).unwrap();
        let (text, complete) = sample(&g, seed, 50);
        prop_assert!(complete);
        prop_assert!(choices.contains(&text), "{text:?}");
    }
}

/// A whole-string matcher for the regex test (the test's own check,
/// independent of llguidance): `[a-z]{1,8}@[a-z]{2,5}\.(com|org)`.
fn regex_full(_rx: &str) -> impl Fn(&str) -> bool {
    |s: &str| {
        let Some((user, rest)) = s.split_once('@') else {
            return false;
        };
        let Some((host, tld)) = rest.rsplit_once('.') else {
            return false;
        };
        let lower = |t: &str, lo: usize, hi: usize| {
            (lo..=hi).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_lowercase())
        };
        lower(user, 1, 8) && lower(host, 2, 5) && (tld == "com" || tld == "org")
    }
}

#[test]
fn json_object_gives_an_object() {
    let g = compile(ConstraintKind::JsonObject).unwrap();
    let mut complete = 0;
    for seed in 0..8 {
        let (text, done) = sample(&g, seed, 300);
        if done {
            complete += 1;
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert!(v.is_object(), "{text:?}");
        } else {
            assert!(text.starts_with('{'), "{text:?}");
        }
    }
    assert!(complete > 0);
}

#[test]
fn bad_constraints_are_invalid_naming_the_field() {
    for kind in [
        ConstraintKind::JsonSchema(json!({"type": "hiccup"})),
        ConstraintKind::JsonSchema(json!({"type": 123})),
        ConstraintKind::JsonSchema(json!({"type": "string", "pattern": "(?=lookahead)"})),
        ConstraintKind::JsonSchema(json!({"$ref": "https://example.com/remote.json"})),
        ConstraintKind::JsonSchema(json!(false)),
        ConstraintKind::JsonSchema(json!(5)),
        ConstraintKind::Regex("(unclosed".into()),
        ConstraintKind::Choice(vec![]),
        ConstraintKind::Lark("start: undefined_rule".into()),
        ConstraintKind::Lark("this is not lark".into()),
    ] {
        match compile(kind.clone()) {
            Err(EngineError::InvalidConstraint { param, message }) => {
                assert_eq!(param, "response_format", "{kind:?}");
                assert!(message.contains("response_format"), "{message}");
            }
            Err(e) => panic!("{kind:?}: {e}"),
            Ok(_) => panic!("{kind:?} compiled"),
        }
    }
}

#[test]
fn a_pathological_grammar_is_refused_or_compiled_within_its_fuel() {
    let started = std::time::Instant::now();
    let nested = (0..60).fold(json!({"type": "string"}), |inner, _| {
        json!({"anyOf": [{"type": "array", "items": inner}, {"type": "object", "additionalProperties": {"type": "integer"}}]})
    });
    for kind in [
        ConstraintKind::Regex("(a|aa|aaa){1,50}c".into()),
        ConstraintKind::Regex("(b{1,50}){1,50}c".into()),
        ConstraintKind::Regex("b{1,5000}c".into()),
        ConstraintKind::JsonSchema(json!({"type": "string", "maxLength": 100000})),
        ConstraintKind::Regex("(a|aa|aaa){1,500}(b{1,500}){1,500}c".into()),
        ConstraintKind::JsonSchema(
            json!({"type": "string", "pattern": "^(x{1,300}y{1,300}){1,300}$"}),
        ),
        ConstraintKind::JsonSchema(nested),
    ] {
        if let Ok(g) = compile(kind) {
            let _ = sample(&g, 1, 20);
        }
    }
    // Fuel bounds the work (about a second of CPU per grammar at most);
    // this only guards against an unbounded compile.
    assert!(started.elapsed() < std::time::Duration::from_secs(120));
}

#[test]
fn the_engine_ends_a_constrained_sequence_with_valid_json() {
    let loaded = common::default_model();
    let engine = loaded.engine();
    let schema = json!({"type": "object", "properties": {
        "capital": {"type": "string", "maxLength": 20},
        "population_millions": {"type": "integer", "minimum": 0, "maximum": 100}},
        "required": ["capital", "population_millions"], "additionalProperties": false});
    let grammar = engine
        .grammars()
        .unwrap()
        .compile(&Constraint {
            kind: ConstraintKind::JsonSchema(schema.clone()),
            param: "response_format".into(),
            compact_json: false,
        })
        .unwrap();
    let prompt = loaded
        .tokenizer
        .encode("<|im_start|>user\nWhat is the capital of France? Answer in JSON.<|im_end|>\n<|im_start|>assistant\n", false)
        .unwrap();
    for (temperature, n) in [(0.0, 1), (1.0, 3)] {
        let mut stream = engine
            .submit(EngineRequest {
                prompt: prompt.clone(),
                params: SamplingParams {
                    temperature,
                    seed: Some(7),
                    n,
                    max_tokens: Some(200),
                    ..SamplingParams::default()
                },
                grammar: Some(grammar.clone()),
                ..EngineRequest::default()
            })
            .unwrap();
        let mut texts = vec![None; n];
        while let Some(e) = stream.blocking_next() {
            match e {
                EngineEvent::SampleFinished {
                    index,
                    reason,
                    text,
                } => {
                    assert_eq!(reason.as_openai(), "stop", "{text:?}");
                    texts[index] = Some(text);
                }
                EngineEvent::Error(m) => panic!("{m}"),
                EngineEvent::Finished { .. } => break,
                EngineEvent::Token(_) => {}
            }
        }
        for t in texts {
            let t = t.unwrap();
            validates(&schema, &t).unwrap();
        }
    }
}

#[test]
fn tokenizer_json_and_gguf_vocabularies_give_the_same_token_bytes() {
    // The default model's tokenizer.json (transformers') beside the tiny
    // llama's weights: a model directory whose tokenizer is not GGUF-built.
    let dir = tempfile::tempdir().unwrap();
    let tiny = common::fixtures().join("tiny-models/tiny-llama");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::copy(
        common::fixtures().join("llamacpp/smollm2-tokenizer/tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let files = llm_serve_models::ModelFiles::resolve(dir.path().to_str().unwrap()).unwrap();
    let from_json = Arc::new(Tokenizer::load(&files, None).unwrap());
    let v = vocab();
    let width = from_json.vocab_size();
    assert_eq!(width, v.tokenizer.vocab_size());
    assert_eq!(
        token_words(&from_json, width),
        token_words(&v.tokenizer, width)
    );
    // And a grammar compiled against it ends on <|im_end|> (id 2).
    let grammars = Grammars::new(from_json.clone(), width, &[2]).unwrap();
    let g = grammars
        .compile(&Constraint {
            kind: ConstraintKind::Choice(vec!["yes".into(), "no".into()]),
            param: "guided_choice".into(),
            compact_json: false,
        })
        .unwrap();
    let mut m = g.matcher();
    for t in from_json.encode_plain("yes", false).unwrap() {
        m.consume_token(t).unwrap();
    }
    let mask = m.compute_mask_or_eos().unwrap();
    assert!(mask.is_allowed(2));
    assert_eq!(mask.num_set(), 1);
}
