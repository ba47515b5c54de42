"""Structured outputs and tool calls through the official `openai` SDK on
the default model (SmolLM2-135M, whose template renders no tools): the
constraint makes every answer valid whatever the model would have said.
"""
import json
from typing import List, Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from conftest import MODEL


class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    population_millions: int = Field(ge=0, le=100)


class Step(BaseModel):
    explanation: str = Field(max_length=60)
    output: str = Field(max_length=30)


class MathAnswer(BaseModel):
    steps: List[Step] = Field(max_length=3)
    final_answer: str = Field(max_length=20)


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    score: int = Field(ge=1, le=5)
    tags: List[str] = Field(max_length=3)


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "maxLength": 30}},
            "required": ["timezone"],
            "additionalProperties": False,
        },
    },
}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}

PROMPTS = [
    (City, "Tell me about Paris."),
    (City, "Describe Tokyo as data."),
    (City, "What do you know about Cairo?"),
    (City, "Give me facts about Lima."),
    (MathAnswer, "Solve 8x + 7 = -23 step by step."),
    (MathAnswer, "What is 12 times 12?"),
    (Review, "Review: the film was wonderful and moving."),
    (Review, "Review: terrible service, cold food."),
    (Review, "Review: it was fine, nothing special."),
    (City, "Name a big city in Brazil."),
]


@pytest.mark.parametrize("model_cls,prompt", PROMPTS)
def test_parse_returns_a_parsed_pydantic_object(client, model_cls, prompt):
    r = client.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": prompt}], response_format=model_cls,
        temperature=0, max_tokens=300)
    c = r.choices[0]
    assert c.finish_reason == "stop", c.message.content
    assert isinstance(c.message.parsed, model_cls), c.message.content


def test_json_object_is_parseable(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Give me a JSON object about cats."}],
        response_format={"type": "json_object"}, temperature=0, max_tokens=200)
    c = r.choices[0]
    if c.finish_reason == "stop":
        assert isinstance(json.loads(c.message.content), dict)
    else:
        assert c.message.content.startswith("{")


def test_vllm_structured_outputs_fields(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Is the sky blue?"}], temperature=0, max_tokens=10,
        extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
    assert r.choices[0].message.content in ("yes", "no")
    r = client.completions.create(
        model=MODEL, prompt="My email address is", temperature=0, max_tokens=30,
        extra_body={"guided_regex": "[a-z]{2,8}@[a-z]{2,8}\\.com"})
    text = r.choices[0].text
    assert "@" in text and text.endswith(".com"), text


def call_args(call):
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, SCHEMAS[call.function.name])
    return args


def stream_calls(client, **kw):
    """The streamed tool calls, reassembled by index as clients do."""
    calls, finish, content = {}, [], ""
    for chunk in client.chat.completions.create(stream=True, **kw):
        for ch in chunk.choices:
            d = ch.delta
            if d.content:
                content += d.content
            for tc in d.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                if tc.id:
                    assert slot["id"] is None, "a call's id comes once"
                    slot["id"] = tc.id
                    assert tc.type == "function"
                if tc.function and tc.function.name:
                    slot["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    slot["arguments"] += tc.function.arguments
            if ch.finish_reason:
                finish.append(ch.finish_reason)
    return [calls[i] for i in sorted(calls)], finish, content


ASK = [{"role": "user", "content": "What's the weather like in Paris right now?"}]


def test_named_tool_choice_gives_a_valid_call_streamed_or_not(client):
    kw = dict(model=MODEL, messages=ASK, tools=[WEATHER, TIME], temperature=0, max_tokens=100,
              tool_choice={"type": "function", "function": {"name": "get_weather"}})
    r = client.chat.completions.create(**kw)
    c = r.choices[0]
    assert c.finish_reason == "stop"
    assert not c.message.content
    [call] = c.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    call_args(call)
    streamed, finish, content = stream_calls(client, **kw)
    assert finish == ["stop"] and content == ""
    assert [(s["name"], s["arguments"]) for s in streamed] == [("get_weather", call.function.arguments)]
    assert streamed[0]["id"].startswith("chatcmpl-tool-")


def test_required_tool_choice_gives_valid_calls_streamed_or_not(client):
    for parallel in (True, False):
        kw = dict(model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
                  parallel_tool_calls=parallel, temperature=0, max_tokens=200)
        r = client.chat.completions.create(**kw)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls", c
        assert c.message.tool_calls
        if not parallel:
            assert len(c.message.tool_calls) == 1
        for call in c.message.tool_calls:
            call_args(call)
        streamed, finish, _ = stream_calls(client, **kw)
        assert finish == ["tool_calls"]
        assert [(s["name"], s["arguments"]) for s in streamed] == [
            (t.function.name, t.function.arguments) for t in c.message.tool_calls]


def test_max_tokens_one_with_required_is_length(client):
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required",
                                       max_tokens=1)
    assert r.choices[0].finish_reason == "length"
    assert not r.choices[0].message.tool_calls


def test_a_conversation_with_a_tool_result_continues(client):
    first = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], temperature=0, max_tokens=100,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = first.choices[0].message.tool_calls[0]
    messages = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"},
    ]
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], temperature=0, max_tokens=30)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.choices[0].message.content


def test_auto_on_a_template_without_tools_answers_in_content(client):
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="auto",
                                       temperature=0, max_tokens=20)
    c = r.choices[0]
    assert c.message.content and not c.message.tool_calls
    assert c.finish_reason in ("stop", "length")


def test_bad_structured_requests_are_400s_naming_the_field(client, server):
    cases = [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "hiccup"}}}},
         "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "string", "pattern": "(?=a)b"}}}}, "response_format"),
        ({"response_format": {"type": "sound"}}, "response_format"),
        ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0]"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "undeclared"}}},
         "tool_choice"),
        ({"tools": {"type": "function"}}, "tools"),
        ({"response_format": {"type": "json_object"}, "guided_json": {"type": "object"}}, "guided_json"),
        ({"guided_grammar": "root ::= \"a\""}, "guided_grammar"),
    ]
    for extra, param in cases:
        body = {"model": MODEL, "messages": ASK, "max_tokens": 5, **extra}
        r = httpx.post(server + "/v1/chat/completions", json=body)
        assert r.status_code == 400, (extra, r.text)
        assert r.json()["error"]["param"] == param, (extra, r.text)
    # The same through the SDK: a BadRequestError, not a 500 or a stream error.
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=ASK, stream=True,
                                       response_format={"type": "json_schema", "json_schema": {
                                           "name": "x", "schema": {"type": 123}}})
