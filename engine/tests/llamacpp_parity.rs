//! Greedy parity with llama.cpp on the default model: chat prompts rendered
//! with the model's template and tokenized by our GGUF tokenizer give
//! llama.cpp's prompt ids, and greedy decoding gives llama.cpp's first 32
//! tokens (fixtures/llamacpp/greedy_smollm2.json, made by
//! scripts/llamacpp_reference.py).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod common;
use llm_serve_engine::{ChatTemplate, SamplingParams, TemplateArgs};

#[test]
fn greedy_tokens_match_llamacpp() {
    let m = common::default_model();
    let fx = common::read_json("llamacpp/greedy_smollm2.json");
    let template = ChatTemplate::new(
        m.tokenizer.chat_template().unwrap(),
        m.tokenizer.bos_token(),
        m.tokenizer.eos_token(),
    )
    .unwrap();
    let gen = m.engine();
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: Some(32),
        ignore_eos: true,
        ..Default::default()
    };
    let mut full_matches = Vec::new();
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let messages = case["messages"].as_array().unwrap().clone();
        let text = template
            .render(
                &messages,
                &TemplateArgs {
                    add_generation_prompt: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            text,
            case["prompt_text"].as_str().unwrap(),
            "{name}: prompt text"
        );
        let ids = m.tokenizer.encode(&text, false).unwrap();
        let want_prompt: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
        assert_eq!(ids, want_prompt, "{name}: prompt ids");
        let out = gen.generate(&ids, &params, |_| {}).unwrap();
        let want: Vec<u32> = serde_json::from_value(case["generated_ids"].clone()).unwrap();
        let agree = out
            .tokens
            .iter()
            .zip(&want)
            .take_while(|(a, b)| a == b)
            .count();
        eprintln!("{name}: {agree}/32 tokens agree with llama.cpp");
        if agree == 32 {
            full_matches.push(name.to_string());
        } else {
            // A divergence is only acceptable where llama.cpp itself was
            // nearly undecided between its top two tokens.
            let margin = case["top2_margins"][agree].as_f64().unwrap();
            assert!(
                margin < 0.5,
                "{name}: diverges at token {agree} where llama.cpp's top-2 margin is {margin}"
            );
        }
        let stable = case["stable_prefix_len"].as_u64().unwrap() as usize;
        assert!(agree >= stable, "{name}: {agree} < stable prefix {stable}");
    }
    eprintln!("full matches: {full_matches:?}");
    // Every case above already had to agree over its stable prefix and may
    // diverge only at a near-tie. How many then run the whole 32 tokens
    // depends on the dot-product kernel's summation order: on AVX-512 VNNI
    // three or more cases do, on AVX2 two (capital_of_france and
    // multi_turn_math; count_to_ten parts at a 0.16 margin on token 29).
    assert!(
        full_matches.len() >= 2,
        "only {full_matches:?} match llama.cpp for all 32 tokens"
    );
}
