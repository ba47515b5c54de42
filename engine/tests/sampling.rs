//! Every sampling parameter changes what is sampled (each test fails if
//! its parameter were ignored), and invalid values are rejected naming the
//! parameter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod common;
use llm_serve_engine::{EngineError, FinishReason, OutputState, SamplingParams, SequenceSampler};
use std::collections::{HashMap, HashSet};

fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
    let mut p = SamplingParams {
        seed: Some(7),
        max_tokens: None,
        ..Default::default()
    };
    f(&mut p);
    p.validate(1000).unwrap();
    p
}

/// Token frequencies over `n` independent first samples.
fn histogram(p: &SamplingParams, logits: &[f32], n: usize) -> HashMap<u32, usize> {
    let mut h = HashMap::new();
    for i in 0..n {
        let mut q = p.clone();
        q.seed = Some(1000 + i as u64);
        let mut s = SequenceSampler::new(&q, &[], &[], 0);
        *h.entry(s.sample(logits).token).or_insert(0) += 1;
    }
    h
}

fn logits(v: &[f32]) -> Vec<f32> {
    v.to_vec()
}

#[test]
fn temperature_zero_is_greedy_and_temperature_scales_randomness() {
    let l = logits(&[2.0, 1.9, 0.0, 0.0, 0.0]);
    let g = histogram(&params(|p| p.temperature = 0.0), &l, 50);
    assert_eq!(g.get(&0), Some(&50));
    let cold = histogram(&params(|p| p.temperature = 0.05), &l, 300);
    let hot = histogram(&params(|p| p.temperature = 50.0), &l, 300);
    // T = 0.05: token 0 is e^2 ~ 7x likelier than token 1; T = 50: ~uniform.
    assert!(cold[&0] > 250, "{cold:?}");
    assert!(hot.len() == 5 && hot[&0] < 120, "{hot:?}");
}

#[test]
fn top_k_keeps_only_the_k_best() {
    let l = logits(&[1.0, 0.9, 0.8, 0.7, 0.6, 0.5]);
    let all = histogram(&params(|_| {}), &l, 400);
    assert_eq!(all.len(), 6, "without top_k every token appears");
    let k2 = histogram(&params(|p| p.top_k = 2), &l, 400);
    assert_eq!(
        k2.keys().copied().collect::<HashSet<_>>(),
        HashSet::from([0, 1])
    );
    assert_eq!(histogram(&params(|p| p.top_k = 1), &l, 50).len(), 1);
}

#[test]
fn top_p_keeps_the_smallest_set_reaching_p() {
    // Probabilities ~ [0.5, 0.3, 0.1, 0.1].
    let l = logits(&[0.5f32.ln(), 0.3f32.ln(), 0.1f32.ln(), 0.1f32.ln()]);
    let p06 = histogram(&params(|p| p.top_p = 0.6), &l, 400);
    assert_eq!(
        p06.keys().copied().collect::<HashSet<_>>(),
        HashSet::from([0, 1])
    );
    let p04 = histogram(&params(|p| p.top_p = 0.4), &l, 100);
    assert_eq!(
        p04.keys().copied().collect::<HashSet<_>>(),
        HashSet::from([0])
    );
    assert_eq!(histogram(&params(|_| {}), &l, 400).len(), 4);
}

#[test]
fn min_p_drops_tokens_below_a_fraction_of_the_best() {
    // Relative to the best: 1.0, 0.6, 0.3, 0.1.
    let l = logits(&[0.0, 0.6f32.ln(), 0.3f32.ln(), 0.1f32.ln()]);
    let h = histogram(&params(|p| p.min_p = 0.5), &l, 400);
    assert_eq!(
        h.keys().copied().collect::<HashSet<_>>(),
        HashSet::from([0, 1])
    );
    assert_eq!(histogram(&params(|_| {}), &l, 400).len(), 4);
}

fn greedy_run(p: &SamplingParams, prompt: &[u32], l: &[f32], steps: usize) -> Vec<u32> {
    let mut s = SequenceSampler::new(p, prompt, &[], 0);
    (0..steps).map(|_| s.sample(l).token).collect()
}

#[test]
fn presence_penalty_discourages_any_repeat() {
    let l = logits(&[1.0, 0.9, 0.0]);
    let base = params(|p| p.temperature = 0.0);
    assert_eq!(greedy_run(&base, &[], &l, 3), vec![0, 0, 0]);
    let pen = params(|p| {
        p.temperature = 0.0;
        p.presence_penalty = 0.5;
    });
    // 1.0 -> 0.5 (< 0.9): token 1; then 0.5 vs 0.4: token 0 again (the
    // penalty does not grow with the count).
    assert_eq!(greedy_run(&pen, &[], &l, 3), vec![0, 1, 0]);
}

#[test]
fn frequency_penalty_grows_with_each_repeat() {
    let l = logits(&[1.0, 0.5]);
    let pen = params(|p| {
        p.temperature = 0.0;
        p.frequency_penalty = 0.3;
    });
    // 1.0 -> 0.7 (> 0.5) -> 0.4 (< 0.5).
    assert_eq!(greedy_run(&pen, &[], &l, 3), vec![0, 0, 1]);
}

#[test]
fn repetition_penalty_applies_to_prompt_tokens_in_both_signs() {
    let pen = params(|p| {
        p.temperature = 0.0;
        p.repetition_penalty = 1.5;
    });
    // Positive logit divided: 1.0 / 1.5 < 0.8.
    assert_eq!(greedy_run(&pen, &[0], &logits(&[1.0, 0.8]), 1), vec![1]);
    // Negative logit multiplied: -0.5 * 1.5 < -0.6.
    assert_eq!(greedy_run(&pen, &[0], &logits(&[-0.5, -0.6]), 1), vec![1]);
    let base = params(|p| p.temperature = 0.0);
    assert_eq!(greedy_run(&base, &[0], &logits(&[1.0, 0.8]), 1), vec![0]);
}

#[test]
fn logit_bias_shifts_and_is_clamped() {
    let l = logits(&[1.0, 0.0, -200.0]);
    let b = params(|p| {
        p.temperature = 0.0;
        p.logit_bias = HashMap::from([(1, 5.0)]);
    });
    assert_eq!(greedy_run(&b, &[], &l, 1), vec![1]);
    // +1000 is clamped to +100: -200 + 100 still loses.
    let c = params(|p| {
        p.temperature = 0.0;
        p.logit_bias = HashMap::from([(2, 1000.0)]);
    });
    assert_eq!(greedy_run(&c, &[], &l, 1), vec![0]);
}

#[test]
fn seed_makes_sampling_reproducible_and_samples_differ() {
    let l = vec![0.0f32; 1000];
    let run = |seed: u64, index: usize| {
        let p = params(|p| p.seed = Some(seed));
        let mut s = SequenceSampler::new(&p, &[], &[], index);
        (0..20).map(|_| s.sample(&l).token).collect::<Vec<_>>()
    };
    assert_eq!(run(1, 0), run(1, 0));
    assert_ne!(run(1, 0), run(2, 0));
    assert_ne!(run(1, 0), run(1, 1), "the n samples of one request differ");
}

#[test]
fn min_tokens_bans_stop_tokens_until_reached() {
    let l = logits(&[0.0, 5.0, 1.0]);
    let p = params(|p| {
        p.temperature = 0.0;
        p.min_tokens = 2;
        p.stop_token_ids = vec![1];
    });
    let mut s = SequenceSampler::new(&p, &[], &[], 0);
    assert_eq!(s.sample(&l).token, 2);
    assert_eq!(s.sample(&l).token, 2);
    assert_eq!(s.sample(&l).token, 1);
    // EOS is banned the same way.
    let mut s = SequenceSampler::new(
        &params(|p| {
            p.temperature = 0.0;
            p.min_tokens = 1;
        }),
        &[],
        &[1],
        0,
    );
    assert_eq!(s.sample(&l).token, 2);
    assert_eq!(s.sample(&l).token, 1);
}

#[test]
fn logprobs_come_from_the_raw_distribution() {
    let l = logits(&[2.0, 1.0, 0.0, -1.0]);
    let p = params(|p| {
        p.temperature = 0.0;
        p.logprobs = Some(2);
        p.logit_bias = HashMap::from([(3, 10.0)]);
    });
    let mut s = SequenceSampler::new(&p, &[], &[], 0);
    let out = s.sample(&l);
    assert_eq!(out.token, 3, "the bias picks token 3");
    let z: f32 = l.iter().map(|v| v.exp()).sum();
    assert!(
        (out.logprob - ((-1.0f32).exp() / z).ln()).abs() < 1e-5,
        "logprob of the raw logits"
    );
    assert_eq!(out.top_logprobs.len(), 2);
    assert_eq!(out.top_logprobs[0].0, 0);
    assert!((out.top_logprobs[0].1 - (2.0f32.exp() / z).ln()).abs() < 1e-5);
    assert!(out.top_logprobs[0].1 > out.top_logprobs[1].1);
    let none = params(|p| p.temperature = 0.0);
    assert!(SequenceSampler::new(&none, &[], &[], 0)
        .sample(&l)
        .top_logprobs
        .is_empty());
}

#[test]
fn invalid_values_are_rejected_naming_the_parameter() {
    let bad: Vec<(&str, SamplingParams)> = vec![
        (
            "temperature",
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
        ),
        (
            "temperature",
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            },
        ),
        (
            "top_p",
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
        ),
        (
            "top_p",
            SamplingParams {
                top_p: 1.5,
                ..Default::default()
            },
        ),
        (
            "top_k",
            SamplingParams {
                top_k: -2,
                ..Default::default()
            },
        ),
        (
            "min_p",
            SamplingParams {
                min_p: 1.5,
                ..Default::default()
            },
        ),
        (
            "presence_penalty",
            SamplingParams {
                presence_penalty: 2.5,
                ..Default::default()
            },
        ),
        (
            "frequency_penalty",
            SamplingParams {
                frequency_penalty: -3.0,
                ..Default::default()
            },
        ),
        (
            "repetition_penalty",
            SamplingParams {
                repetition_penalty: 0.0,
                ..Default::default()
            },
        ),
        (
            "logprobs",
            SamplingParams {
                logprobs: Some(21),
                ..Default::default()
            },
        ),
        (
            "n",
            SamplingParams {
                n: 0,
                ..Default::default()
            },
        ),
        (
            "max_tokens",
            SamplingParams {
                max_tokens: Some(0),
                ..Default::default()
            },
        ),
        (
            "min_tokens",
            SamplingParams {
                min_tokens: 20,
                max_tokens: Some(10),
                ..Default::default()
            },
        ),
        (
            "stop",
            SamplingParams {
                stop: vec![String::new()],
                ..Default::default()
            },
        ),
        (
            "stop_token_ids",
            SamplingParams {
                stop_token_ids: vec![5000],
                ..Default::default()
            },
        ),
        (
            "logit_bias",
            SamplingParams {
                logit_bias: HashMap::from([(5000, 1.0)]),
                ..Default::default()
            },
        ),
    ];
    for (name, p) in bad {
        match p.validate(1000) {
            Err(EngineError::InvalidParam { param, message }) => {
                assert_eq!(param, name, "{message}");
                assert!(message.contains(name), "{message:?} should name {name}");
            }
            other => panic!("{name}: expected a rejection, got {other:?}"),
        }
    }
    SamplingParams::default().validate(1000).unwrap();
}

#[test]
fn stop_strings_end_the_text_and_are_held_back_while_streaming() {
    let tok = &common::default_model().tokenizer;
    let ids = tok
        .encode("The answer is 42. Then more text follows.", false)
        .unwrap();
    for include in [false, true] {
        let p = params(|p| {
            p.stop = vec![". Then".into()];
            p.include_stop_str_in_output = include;
        });
        let mut out = OutputState::new(&p, &[], &[], 4096);
        let mut streamed = String::new();
        let mut finished = None;
        for &id in &ids {
            let u = out.push(tok, id).unwrap();
            streamed.push_str(&u.text);
            assert!(
                !streamed.contains(". Then") || include,
                "stop text leaked: {streamed:?}"
            );
            if u.finished.is_some() {
                finished = u.finished;
                break;
            }
        }
        assert_eq!(finished, Some(FinishReason::StopString(". Then".into())));
        let want = if include {
            "The answer is 42. Then"
        } else {
            "The answer is 42"
        };
        assert_eq!(streamed, want);
        assert_eq!(out.text(), want);
    }
}

#[test]
fn stop_token_ids_eos_ignore_eos_and_max_tokens() {
    let tok = &common::default_model().tokenizer;
    let hello = tok.encode("Hello", false).unwrap();
    let world = tok.encode(" world", false).unwrap()[0];
    let eos = tok.eos_token_ids()[0];
    // Stop token: finishes, its text is not part of the output.
    let p = params(|p| p.stop_token_ids = vec![world]);
    let mut out = OutputState::new(&p, &[], &[eos], 4096);
    out.push(tok, hello[0]).unwrap();
    let u = out.push(tok, world).unwrap();
    assert_eq!(u.finished, Some(FinishReason::StopToken(world)));
    assert_eq!(out.text(), "Hello");
    // EOS finishes; with ignore_eos it does not.
    let mut out = OutputState::new(&params(|_| {}), &[], &[eos], 4096);
    assert_eq!(
        out.push(tok, eos).unwrap().finished,
        Some(FinishReason::Eos(eos))
    );
    let mut out = OutputState::new(&params(|p| p.ignore_eos = true), &[], &[eos], 4096);
    assert_eq!(out.push(tok, eos).unwrap().finished, None);
    // min_tokens keeps EOS from ending the sequence early.
    let mut out = OutputState::new(&params(|p| p.min_tokens = 2), &[], &[eos], 4096);
    assert_eq!(out.push(tok, eos).unwrap().finished, None);
    assert_eq!(
        out.push(tok, eos).unwrap().finished,
        Some(FinishReason::Eos(eos))
    );
    // max_tokens.
    let mut out = OutputState::new(&params(|p| p.max_tokens = Some(2)), &[], &[eos], 4096);
    assert_eq!(out.push(tok, hello[0]).unwrap().finished, None);
    assert_eq!(
        out.push(tok, world).unwrap().finished,
        Some(FinishReason::Length)
    );
    // The end of the context is a length finish too.
    let mut out = OutputState::new(&params(|_| {}), &[1, 2, 3], &[eos], 4);
    assert_eq!(
        out.push(tok, hello[0]).unwrap().finished,
        Some(FinishReason::Length)
    );
}

#[test]
fn seeded_generation_on_the_model_is_reproducible() {
    let m = common::default_model();
    let prompt = m.tokenizer.encode("Once upon a time", false).unwrap();
    let run = |seed: u64| {
        let g = m.engine();
        let p = SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            max_tokens: Some(24),
            ignore_eos: true,
            ..Default::default()
        };
        g.generate(&prompt, &p, |_| {}).unwrap().tokens
    };
    let a = run(11);
    assert_eq!(a, run(11));
    assert_ne!(a, run(12));
}

#[test]
fn prompt_length_errors_name_the_limit() {
    let m = common::default_model();
    let g = m.engine();
    let long = vec![42u32; 4096];
    let e = g
        .generate(&long, &SamplingParams::greedy(), |_| {})
        .unwrap_err();
    assert!(
        matches!(
            e,
            EngineError::InvalidPrompt {
                param: "input_tokens",
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("maximum context length is 4096"),
        "{e}"
    );
    let p = SamplingParams {
        max_tokens: Some(4090),
        ..SamplingParams::greedy()
    };
    let e = g
        .generate(&[1, 2, 3, 4, 5, 6, 7, 8], &p, |_| {})
        .unwrap_err();
    assert!(
        matches!(
            e,
            EngineError::InvalidPrompt {
                param: "max_tokens",
                ..
            }
        ),
        "{e}"
    );
}
