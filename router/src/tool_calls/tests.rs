//! The parsers against the committed canned outputs
//! (`fixtures/tool_calls/cases.json`): whole, and split into deltas at
//! every point, they give the same content and calls.

#![allow(clippy::unwrap_used)]

use super::*;
use serde_json::Value;

fn cases() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/tool_calls/cases.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn reading(name: &str) -> Reading {
    match name.strip_prefix("named:") {
        Some(f) => Reading::Named(f.to_string()),
        None if name == "required" => Reading::Required,
        None => Reading::Auto(Format::from_name(name).unwrap()),
    }
}

fn streamed(r: &Reading, pieces: &[&str]) -> Assembled {
    let mut p = parser(r);
    let mut events = Vec::new();
    for piece in pieces {
        p.push(piece, &mut events);
    }
    p.finish(&mut events);
    let mut a = Assembled::default();
    for e in &events {
        a.add(e);
    }
    a
}

#[test]
fn canned_outputs_parse_to_their_calls() {
    let cases = cases();
    assert!(cases.len() >= 15);
    for case in cases {
        let what = case["what"].as_str().unwrap();
        let r = reading(case["reading"].as_str().unwrap());
        let text = case["text"].as_str().unwrap();
        let whole = Assembled::of_text(&r, text);
        assert_eq!(whole.content, case["content"].as_str().unwrap(), "{what}");
        let want = case["calls"].as_array().unwrap();
        assert_eq!(whole.calls.len(), want.len(), "{what}: {whole:?}");
        for (got, want) in whole.calls.iter().zip(want) {
            assert_eq!(got.name, want["name"].as_str().unwrap(), "{what}");
            let args: Value = serde_json::from_str(&got.arguments)
                .unwrap_or_else(|e| panic!("{what}: arguments {:?}: {e}", got.arguments));
            assert_eq!(args, want["arguments"], "{what}");
        }
    }
}

#[test]
fn every_split_into_deltas_gives_the_same_calls() {
    for case in cases() {
        let what = case["what"].as_str().unwrap();
        let r = reading(case["reading"].as_str().unwrap());
        let text = case["text"].as_str().unwrap();
        let whole = Assembled::of_text(&r, text);
        let bounds: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        for &i in &bounds {
            for &j in bounds.iter().filter(|&&j| j >= i) {
                let got = streamed(&r, &[&text[..i], &text[i..j], &text[j..]]);
                assert_eq!(got, whole, "{what}: split at {i}, {j}");
            }
        }
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let one_by_one: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(streamed(&r, &one_by_one), whole, "{what}: char by char");
    }
}

#[test]
fn a_named_call_streams_its_name_first_then_the_arguments() {
    let mut p = parser(&Reading::Named("f".into()));
    let mut events = Vec::new();
    p.push("{\"a\"", &mut events);
    p.push(": 1}", &mut events);
    p.finish(&mut events);
    assert_eq!(
        events,
        [
            CallEvent::Start {
                index: 0,
                name: "f".into()
            },
            CallEvent::Arguments {
                index: 0,
                fragment: "{\"a\"".into()
            },
            CallEvent::Arguments {
                index: 0,
                fragment: ": 1}".into()
            },
        ]
    );
}

#[test]
fn hermes_arguments_stream_before_the_call_closes() {
    let mut p = parser(&Reading::Auto(Format::Hermes));
    let mut events = Vec::new();
    p.push(
        "<tool_call>{\"name\": \"f\", \"arguments\": {\"city\": \"Par",
        &mut events,
    );
    assert!(events.contains(&CallEvent::Start {
        index: 0,
        name: "f".into()
    }));
    let sent: String = events
        .iter()
        .filter_map(|e| match e {
            CallEvent::Arguments { fragment, .. } => Some(fragment.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(sent, "{\"city\": \"Par");
}
