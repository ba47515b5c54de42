//! Real chat templates (Llama 3.x, Qwen2.5/3, Mistral, SmolLM2, Gemma 2,
//! Phi-3.5, DeepSeek-R1, Granite; fixtures/chat_templates, from the
//! llama-cpp-python sdist) render exactly what transformers'
//! apply_chat_template renders (expected.json, made by
//! scripts/chat_template_reference.py).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod common;
use llm_serve_engine::chat_template::ContentFormat;
use llm_serve_engine::{ChatTemplate, TemplateArgs};
use serde_json::json;

#[test]
fn templates_render_like_transformers() {
    let fx = common::read_json("chat_templates/expected.json");
    let cases = fx["cases"].as_array().unwrap();
    let mut families = std::collections::BTreeSet::new();
    for c in cases {
        let id = c["id"].as_str().unwrap();
        let file = c["template"].as_str().unwrap();
        let source =
            std::fs::read_to_string(common::fixtures().join("chat_templates").join(file)).unwrap();
        let t = ChatTemplate::new(&source, None, None).unwrap_or_else(|e| panic!("{id}: {e}"));
        if let Some(now) = c["fixed_now"].as_str() {
            let now = chrono::NaiveDateTime::parse_from_str(now, "%Y-%m-%dT%H:%M:%S").unwrap();
            t.set_now(Some(now));
        }
        let ctx = c["context"].as_object().unwrap();
        let got = t.render_context(ctx);
        match (c.get("expected"), c.get("error")) {
            (Some(want), _) => {
                let got = got.unwrap_or_else(|e| panic!("{id}: {e}"));
                assert_eq!(got, want.as_str().unwrap(), "{id}");
            }
            (None, Some(err)) => {
                let e = got.expect_err(id).to_string();
                assert!(
                    e.contains(err.as_str().unwrap()),
                    "{id}: {e:?} should mention {err}"
                );
            }
            _ => panic!("{id}: neither expected nor error"),
        }
        families.insert(file.to_string());
    }
    assert!(families.len() >= 6, "{families:?}");
}

#[test]
fn template_errors_are_errors_not_panics() {
    assert!(
        ChatTemplate::new("{% for x in %}", None, None).is_err(),
        "syntax error"
    );
    let t = ChatTemplate::new("{{ raise_exception('no system role') }}", None, None).unwrap();
    let e = t
        .render(&[], &TemplateArgs::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no system role"), "{e}");
    let t = ChatTemplate::new("{{ messages[0].content.nope() }}", None, None).unwrap();
    assert!(t
        .render(
            &[json!({"role": "user", "content": "x"})],
            &TemplateArgs::default()
        )
        .is_err());
}

#[test]
fn list_content_is_joined_for_string_templates() {
    let smol = std::fs::read_to_string(
        common::fixtures().join("chat_templates/HuggingFaceTB-SmolLM2-135M-Instruct.jinja"),
    )
    .unwrap();
    let t = ChatTemplate::new(&smol, None, None).unwrap();
    assert_eq!(t.content_format(), ContentFormat::String);
    let parts = json!({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]});
    let plain = json!({"role": "user", "content": "a\nb"});
    let args = TemplateArgs {
        add_generation_prompt: true,
        ..Default::default()
    };
    assert_eq!(
        t.render(&[parts], &args).unwrap(),
        t.render(&[plain], &args).unwrap()
    );
    let qwen35 =
        std::fs::read_to_string(common::fixtures().join("chat_templates/Qwen3.5-4B.jinja"))
            .unwrap();
    assert_eq!(
        ChatTemplate::new(&qwen35, None, None)
            .unwrap()
            .content_format(),
        ContentFormat::OpenAi
    );
}

#[test]
fn tojson_uses_python_separators_and_keeps_key_order() {
    let t = ChatTemplate::new(
        "{{ tools | tojson }}|{{ tools[0] | tojson(indent=2) }}",
        None,
        None,
    )
    .unwrap();
    let args = TemplateArgs {
        tools: Some(json!([{"name": "f", "b": [1, 2.5, "é\n"], "a": null}])),
        ..Default::default()
    };
    let out = t.render_raw(&[], &args).unwrap();
    assert_eq!(
        out,
        "[{\"name\": \"f\", \"b\": [1, 2.5, \"é\\n\"], \"a\": null}]|{\n  \"name\": \"f\",\n  \"b\": [\n    1,\n    2.5,\n    \"é\\n\"\n  ],\n  \"a\": null\n}"
    );
}

#[test]
fn continue_final_message_leaves_the_turn_open() {
    let smol = std::fs::read_to_string(
        common::fixtures().join("chat_templates/HuggingFaceTB-SmolLM2-135M-Instruct.jinja"),
    )
    .unwrap();
    let t = ChatTemplate::new(&smol, None, None).unwrap();
    let msgs = [
        json!({"role": "user", "content": "Hi"}),
        json!({"role": "assistant", "content": "Hello, I am"}),
    ];
    let out = t
        .render(
            &msgs,
            &TemplateArgs {
                continue_final_message: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(
        out.ends_with("<|im_start|>assistant\nHello, I am"),
        "{out:?}"
    );
    let both = TemplateArgs {
        continue_final_message: true,
        add_generation_prompt: true,
        ..Default::default()
    };
    assert!(t.render(&msgs, &both).is_err());
}
