"""The official `openai` SDK against `llm-serve serve` on the default model.

Every response is read through the SDK's own types, so a shape it does
not accept fails the test.
"""
import httpx
import openai
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion

from conftest import MAX_MODEL_LEN, MODEL

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def test_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].object == "model"
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_chat(client):
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=32)
    assert isinstance(r, ChatCompletion)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    c = r.choices[0]
    assert c.message.role == "assistant"
    assert "Paris" in c.message.content
    assert c.finish_reason == "stop"
    assert r.usage.prompt_tokens > 10
    assert r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streaming_matches_non_streaming(client):
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=32)
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=32,
                                            stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_completions(client):
    r = client.completions.create(model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=8)
    assert isinstance(r, Completion)
    assert r.object == "text_completion"
    assert "Paris" in r.choices[0].text
    assert r.choices[0].finish_reason in ("stop", "length")
    stream = client.completions.create(model=MODEL, prompt="The capital of France is", temperature=0,
                                       max_tokens=8, stream=True)
    text = "".join(ch.choices[0].text for ch in stream if ch.choices)
    assert text == r.choices[0].text


def test_completions_prompt_shapes_and_echo(client, server):
    tokens = httpx.post(server + "/tokenize", json={"model": MODEL, "prompt": "Hello there"}).json()["tokens"]
    r = client.completions.create(model=MODEL, prompt=["One, two,", "Hello there"], temperature=0, max_tokens=4)
    assert sorted(c.index for c in r.choices) == [0, 1]
    single = client.completions.create(model=MODEL, prompt=tokens, temperature=0, max_tokens=4)
    assert single.choices[0].text == r.choices[1].text
    r = client.completions.create(model=MODEL, prompt=[tokens, tokens], temperature=0, max_tokens=4)
    assert r.choices[0].text == r.choices[1].text
    r = client.completions.create(model=MODEL, prompt="Once upon a time", echo=True, temperature=0, max_tokens=4)
    assert r.choices[0].text.startswith("Once upon a time")


def test_n_two(client):
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, n=2, temperature=1.0, seed=7,
                                       max_tokens=16)
    assert sorted(c.index for c in r.choices) == [0, 1]
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, n=2, temperature=1.0, seed=7,
                                            max_tokens=16, stream=True)
    texts = {0: "", 1: ""}
    for ch in stream:
        for c in ch.choices:
            texts[c.index] += c.delta.content or ""
    assert texts == {c.index: c.message.content for c in r.choices}


def test_stop_string(client):
    r = client.completions.create(model=MODEL, prompt="Count: 1, 2, 3, 4, 5,", temperature=0, max_tokens=32,
                                  stop=[" 8"])
    c = r.choices[0]
    assert c.finish_reason == "stop"
    assert " 8" not in c.text
    assert "7" in c.text


def test_max_tokens_length(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Write a long story."}],
                                       temperature=0, max_tokens=5)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Write a long story."}],
                                       temperature=0, max_completion_tokens=3)
    assert r.usage.completion_tokens == 3


def test_seed_reproducible_at_temperature_one(client):
    ask = lambda seed: client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a random word."}], temperature=1.0,
        seed=seed, max_tokens=24).choices[0].message.content
    assert ask(1234) == ask(1234)
    outputs = {ask(s) for s in range(4)}
    assert len(outputs) > 1


def test_chat_logprobs(client):
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=6,
                                       logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for t in content:
        assert t.logprob <= 0
        assert isinstance(t.bytes, list)
        assert len(t.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert t.top_logprobs[0].token == t.token
    assert "".join(t.token for t in content) == r.choices[0].message.content
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=6,
                                            logprobs=True, top_logprobs=2, stream=True)
    streamed = [t for ch in stream if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]


def test_completion_logprobs(client):
    r = client.completions.create(model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=5,
                                  logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    assert lp.text_offset == sorted(lp.text_offset)
    assert all(len(d) >= 2 for d in lp.top_logprobs)
    assert "".join(lp.tokens) == r.choices[0].text


def test_include_usage(client):
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=8,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens > 0
    assert all(ch.usage is None for ch in chunks[:-1])
    stream = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, stream=True,
                                       stream_options={"include_usage": True, "continuous_usage_stats": True})
    chunks = list(stream)
    assert all(ch.usage is not None for ch in chunks)
    assert chunks[-1].usage.completion_tokens == 4


def test_errors(client, server):
    # Malformed JSON: a 400 in OpenAI's error shape.
    r = httpx.post(server + "/v1/chat/completions", content=b'{"model": "x", "messages": [',
                   headers={"content-type": "application/json"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == 400
    with pytest.raises(openai.BadRequestError) as e:
        client.post("/chat/completions", body={"model": MODEL}, cast_to=httpx.Response)
    assert "messages" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=-1)
    assert "temperature" in str(e.value)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="hello " * (MAX_MODEL_LEN + 10), max_tokens=4)
    assert "maximum context length" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=MAX_MODEL_LEN)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=QUESTION, n="two")
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="x", suffix="y")


def test_unknown_fields_are_ignored(client):
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=4,
                                       user="someone", extra_body={"not_a_field": 1})
    assert r.choices[0].message.content
