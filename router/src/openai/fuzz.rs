//! Fuzz targets for the OpenAI request path before a replica: arbitrary
//! bytes, and JSON objects made of the real field names with values of
//! every wrong type and range, through parsing, validation and the
//! conversion to the replica protocol. Nothing may panic; every refusal
//! is a client error with a message; what is accepted is within bounds.

use super::{chat, completions};
use crate::error::ApiError;
use crate::extract::parse_object;
use crate::fuzzing::fuzz_for;
use crate::replicas::{Deployment, DeploymentLabels, Models};
use crate::serve_metrics::ServeMetrics;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Map, Value};

/// Field names the endpoints read, and a few they do not.
const FIELDS: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "n",
    "best_of",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logit_bias",
    "seed",
    "stop",
    "stop_token_ids",
    "include_stop_str_in_output",
    "ignore_eos",
    "min_tokens",
    "skip_special_tokens",
    "max_tokens",
    "max_completion_tokens",
    "stream",
    "stream_options",
    "user",
    "priority",
    "logprobs",
    "top_logprobs",
    "add_generation_prompt",
    "continue_final_message",
    "add_special_tokens",
    "chat_template_kwargs",
    "documents",
    "tools",
    "tool_choice",
    "response_format",
    "chat_template",
    "echo",
    "suffix",
    "frobnicate",
];

/// Numbers at and past every edge the checks care about.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(1),
            Just(2),
            Just(20),
            Just(21),
            Just(256),
            Just(257),
            Just(i64::MAX),
            Just(i64::MIN),
            Just(u32::MAX as i64),
            Just(1 << 40),
        ]
        .prop_map(Value::from),
        Just(serde_json::json!(1e300)),
        Just(serde_json::json!(-0.0)),
    ]
}

/// Any JSON value, a few levels deep.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        ".{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("user"),
            Just("assistant"),
            Just("system"),
            Just("tool"),
            Just("text"),
            Just("function"),
            Just("none"),
            Just("auto"),
            Just("required"),
            Just("json_object"),
            Just("m"),
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("role".to_string()),
                        Just("content".to_string()),
                        Just("type".to_string()),
                        Just("text".to_string()),
                        Just("function".to_string()),
                        Just("name".to_string()),
                        Just("parameters".to_string()),
                        Just("include_usage".to_string()),
                        ".{0,6}".prop_map(String::from),
                    ],
                    inner
                ),
                0..5
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A body of real field names with arbitrary values.
fn body() -> impl Strategy<Value = Value> {
    prop::collection::vec((prop::sample::select(FIELDS), value()), 0..10).prop_map(|kv| {
        let mut m = Map::new();
        for (k, v) in kv {
            m.insert(k.to_string(), v);
        }
        Value::Object(m)
    })
}

/// The router's models: one called `m`, as a replica would have it.
fn models() -> Models {
    let models = Models::default();
    let serve = ServeMetrics::register(&prometheus::Registry::new())
        .unwrap_or_else(|e| panic!("metrics: {e}"));
    models.insert(Deployment::new("m", DeploymentLabels::default(), serve));
    models
}

/// A refusal must be a client's error with something to say.
fn refusal(e: &ApiError) -> Result<(), TestCaseError> {
    prop_assert!(
        matches!(e.status.as_u16(), 400 | 404 | 503),
        "status {} for {:?}",
        e.status,
        e.message
    );
    prop_assert!(!e.message.is_empty());
    Ok(())
}

/// Runs a body through both endpoints' preparation.
fn check_body(models: &Models, body: &Value) -> Result<(), TestCaseError> {
    match chat::prepare(models, "fuzz", body) {
        Ok(p) => {
            let s = p.request.sampling.unwrap_or_default();
            prop_assert!(s.n >= 1 && s.n <= p.deployment.max_num_seqs());
        }
        Err(e) => refusal(&e)?,
    }
    match completions::prepare(models, "fuzz", body) {
        Ok(p) => {
            prop_assert!(!p.requests.is_empty());
            prop_assert!(p.requests.len() as u64 * u64::from(p.n) <= 256);
        }
        Err(e) => refusal(&e)?,
    }
    Ok(())
}

#[test]
fn arbitrary_bytes_never_panic() {
    let models = models();
    fuzz_for(
        "request bytes",
        prop::collection::vec(any::<u8>(), 0..256),
        |bytes| {
            match parse_object(&bytes) {
                Ok(v) => check_body(&models, &v)?,
                Err(e) => prop_assert_eq!(e.status.as_u16(), 400),
            }
            Ok(())
        },
    );
}

#[test]
fn structured_but_wrong_json_never_panics() {
    let models = models();
    fuzz_for("request json", body(), |body| {
        // Through the text form too, as a client would send it.
        let text = body.to_string();
        let parsed = parse_object(text.as_bytes()).map_err(|e| TestCaseError::fail(e.message))?;
        check_body(&models, &parsed)
    });
}
