//! `llm-serve serve` end to end: the async-openai client for chat and
//! completions (streaming and not), cancellation freeing the engine, 64
//! concurrent streams, and the HTTP edges (API key, body limit, request
//! ids, errors, a replica that cannot load).
// Each test runs on its own runtime and holds the cross-test `serial()` lock
// for its whole body on purpose: one server at a time on two cores.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::await_holding_lock)]

mod common;

use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, ChatCompletionStreamOptions, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs, FinishReason,
};
use async_openai::types::completions::CreateCompletionRequestArgs;
use async_openai::Client;
use common::{metric_value, serial, sse_payloads, Server, MODEL};
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn client(server: &Server) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("{}/v1", server.base))
            .with_api_key("unused"),
    )
}

fn chat_request(question: &str, max_tokens: u32, stream: bool) -> CreateChatCompletionRequest {
    let mut b = CreateChatCompletionRequestArgs::default();
    b.model(MODEL)
        .messages(vec![ChatCompletionRequestUserMessageArgs::default()
            .content(question)
            .build()
            .unwrap()
            .into()])
        .temperature(0.0)
        .max_completion_tokens(max_tokens);
    if stream {
        b.stream_options(ChatCompletionStreamOptions {
            include_usage: Some(true),
            ..Default::default()
        });
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_openai_chat_and_completions() {
    let _serial = serial();
    let server = Server::start(&[]).await;
    let c = client(&server);
    let question = "What is the capital of France? Answer in one sentence.";

    let whole = c
        .chat()
        .create(chat_request(question, 32, false))
        .await
        .unwrap();
    let answer = whole.choices[0].message.content.clone().unwrap();
    assert!(answer.contains("Paris"), "{answer}");
    assert_eq!(whole.choices[0].finish_reason, Some(FinishReason::Stop));

    let mut stream = c
        .chat()
        .create_stream(chat_request(question, 32, true))
        .await
        .unwrap();
    let mut text = String::new();
    let mut finishes = Vec::new();
    let mut usage = None;
    let mut first = true;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if first {
            assert_eq!(
                chunk.choices[0].delta.role,
                Some(async_openai::types::chat::Role::Assistant)
            );
            first = false;
        }
        for choice in &chunk.choices {
            text.push_str(choice.delta.content.as_deref().unwrap_or(""));
            finishes.extend(choice.finish_reason);
        }
        if chunk.choices.is_empty() {
            usage = chunk.usage;
        }
    }
    assert_eq!(text, answer);
    assert_eq!(finishes, vec![FinishReason::Stop]);
    let usage = usage.expect("a usage chunk");
    assert_eq!(
        usage.completion_tokens,
        whole.usage.unwrap().completion_tokens
    );

    let completion = CreateCompletionRequestArgs::default()
        .model(MODEL)
        .prompt("The capital of France is")
        .max_tokens(8u32)
        .temperature(0.0)
        .build()
        .unwrap();
    let whole = c.completions().create(completion.clone()).await.unwrap();
    assert!(whole.choices[0].text.contains("Paris"));
    let mut stream = c.completions().create_stream(completion).await.unwrap();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        for choice in chunk.unwrap().choices {
            text.push_str(&choice.text);
        }
    }
    assert_eq!(text, whole.choices[0].text);

    let models = c.models().list().await.unwrap();
    assert_eq!(models.data[0].id, MODEL);
}

/// A streaming request over raw HTTP; returns the response once headers
/// are in.
async fn open_stream(base: &str, max_tokens: u32) -> reqwest::Response {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": "Write a very long story about the sea."}],
            "max_tokens": max_tokens,
            "ignore_eos": true,
            "stream": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnecting_frees_the_engine() {
    let _serial = serial();
    let server = Server::start(&[]).await;
    let idle_kv = server.metric("llm_serve:kv_cache_usage_perc").await;
    // Mid-decode: 8 streams that have produced a few chunks.
    let mut streams = Vec::new();
    for _ in 0..8 {
        streams.push(open_stream(&server.base, 1500).await.bytes_stream());
    }
    for s in &mut streams {
        for _ in 0..3 {
            s.next().await.unwrap().unwrap();
        }
    }
    assert!(server.metric("llm_serve:num_requests_running").await >= 1.0);
    drop(streams);
    let dropped = Instant::now();
    loop {
        let text = reqwest::get(format!("{}/metrics", server.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let running = metric_value(&text, "llm_serve:num_requests_running");
        let waiting = metric_value(&text, "llm_serve:num_requests_waiting");
        let kv = metric_value(&text, "llm_serve:kv_cache_usage_perc");
        if running == 0.0 && waiting == 0.0 && kv == idle_kv {
            break;
        }
        assert!(
            dropped.elapsed() < Duration::from_secs(1),
            "1 s after the disconnects: running {running}, waiting {waiting}, kv {kv} (idle {idle_kv})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let aborted = server.metric("llm_serve:request_success_total").await;
    assert!(aborted >= 8.0);
    // A non-streaming request whose client goes away is cancelled too.
    let base = server.base.clone();
    let request = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{base}/v1/completions"))
            .json(&json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": true}))
            .send()
            .await
    });
    let started = Instant::now();
    while server.metric("llm_serve:num_requests_running").await < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    request.abort();
    let aborted_at = Instant::now();
    while server.metric("llm_serve:num_requests_running").await > 0.0 {
        assert!(
            aborted_at.elapsed() < Duration::from_secs(1),
            "a non-streaming request kept running after its client left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_streams() {
    let _serial = serial();
    let server = Server::start(&["--max-num-seqs", "64"]).await;
    let http = reqwest::Client::new();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let http = http.clone();
            let base = server.base.clone();
            tokio::spawn(async move {
                let r = http
                    .post(format!("{base}/v1/chat/completions"))
                    .header("x-request-id", format!("stream-{i}"))
                    .json(&json!({
                        "model": MODEL,
                        "messages": [{"role": "user", "content": format!("Count from {i} upwards.")}],
                        "max_tokens": 12,
                        "ignore_eos": true,
                        "temperature": 0,
                        "stream": true,
                        "stream_options": {"include_usage": true},
                    }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                assert_eq!(r.headers()["x-request-id"], format!("stream-{i}").as_str());
                assert!(r.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("text/event-stream"));
                (i, r.text().await.unwrap())
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let (i, body) = t.await.unwrap();
        let payloads = sse_payloads(&body);
        assert_eq!(
            payloads.last().map(String::as_str),
            Some("[DONE]"),
            "request {i}"
        );
        assert_eq!(payloads.iter().filter(|p| *p == "[DONE]").count(), 1);
        let chunks: Vec<Value> = payloads[..payloads.len() - 1]
            .iter()
            .map(|p| serde_json::from_str(p).unwrap())
            .collect();
        let id = chunks[0]["id"].as_str().unwrap().to_string();
        assert!(chunks.iter().all(|c| c["id"] == id.as_str()));
        assert!(ids.insert(id), "request {i}: an id seen twice");
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let finishes: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"].get(0))
            .map(|c| &c["finish_reason"])
            .filter(|f| !f.is_null())
            .collect();
        assert_eq!(finishes, vec![&json!("length")], "request {i}");
        let usage = &chunks.last().unwrap()["usage"];
        assert_eq!(usage["completion_tokens"], 12, "request {i}");
        assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
        assert_eq!(chunks.last().unwrap()["choices"], json!([]));
    }
    assert_eq!(ids.len(), 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_edges() {
    let _serial = serial();
    let server = Server::start(&["--api-key", "sekret", "--max-request-body-bytes", "4096"]).await;
    let http = reqwest::Client::new();
    let chat =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2});
    // No key, wrong key: 401 in OpenAI's shape; /health and /metrics stay open.
    for auth in [None, Some("Bearer wrong")] {
        let mut r = http
            .post(format!("{}/v1/chat/completions", server.base))
            .json(&chat);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 401);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], 401);
    }
    assert_eq!(
        http.get(format!("{}/health", server.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{}/metrics", server.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let authed = |r: reqwest::RequestBuilder| r.header("authorization", "Bearer sekret");
    let r = authed(http.post(format!("{}/v1/chat/completions", server.base)))
        .header("x-request-id", "my-id-1")
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "my-id-1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["id"], "chatcmpl-my-id-1");
    // A generated request id when none is sent.
    let r = authed(http.get(format!("{}/v1/models", server.base)))
        .send()
        .await
        .unwrap();
    assert!(!r.headers()["x-request-id"].is_empty());
    // Too large a body: 413, not a crash.
    let big = json!({"model": MODEL, "prompt": "x".repeat(10_000)});
    let r = authed(http.post(format!("{}/v1/completions", server.base)))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], 413);
    // Wrong types are 400 naming the field, never 422.
    for (body, param) in [
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}),
            "max_tokens",
        ),
        (json!({"model": MODEL, "messages": "hello"}), "messages"),
        (json!({"model": MODEL, "prompt": "x", "stop": 5}), "stop"),
        (json!({"model": MODEL, "prompt": "x", "top_p": 0}), "top_p"),
        (
            json!({"model": MODEL, "prompt": "x", "logprobs": 50}),
            "logprobs",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}}),
            "stream_options",
        ),
    ] {
        let path = if body.get("prompt").is_some() {
            "completions"
        } else {
            "chat/completions"
        };
        let r = authed(http.post(format!("{}/v1/{path}", server.base)))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["param"], param, "{body}: {e}");
        assert_eq!(e["error"]["type"], "BadRequestError");
    }
    // Unknown routes and models: JSON 404s.
    let r = authed(http.get(format!("{}/v2/nothing", server.base)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], 404);
    let r = authed(http.post(format!("{}/tokenize", server.base)))
        .json(&json!({"model": MODEL, "prompt": "Hello world"}))
        .send()
        .await
        .unwrap();
    let tokens = r.json::<Value>().await.unwrap()["tokens"].clone();
    let r = authed(http.post(format!("{}/detokenize", server.base)))
        .json(&json!({"model": MODEL, "tokens": tokens}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["prompt"], "Hello world");
    let v: Value = authed(http.get(format!("{}/version", server.base)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["version"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_load_gives_503_naming_the_problem() {
    let _serial = serial();
    let server = Server::spawn("/nonexistent/dir/model.gguf", &[]);
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let r = http
            .post(format!("{}/v1/chat/completions", server.base))
            .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        let e: Value = r.json().await.unwrap();
        let message = e["error"]["message"].as_str().unwrap().to_string();
        if message.contains("/nonexistent/dir/model.gguf") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{message}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = http
        .get(format!("{}/health", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits() {
    let _serial = serial();
    let mut server = Server::start(&[]).await;
    let base = server.base.clone();
    let request = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{base}/v1/completions"))
            .json(&json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 64, "ignore_eos": true}))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    while server.metric("llm_serve:num_requests_running").await < 1.0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = tokio::task::block_in_place(|| server.terminate());
    assert!(status.success(), "{status}");
    let body = request.await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 64);
}
