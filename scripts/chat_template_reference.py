#!/usr/bin/env python3
"""Real chat templates + expected renderings from transformers' own renderer.

Produces fixtures/chat_templates/:
  *.jinja        chat templates of real model families, byte-for-byte as shipped
  SOURCES.md     where every template came from (PyPI package + path inside it)
  expected.json  rendering cases (see the "format" field inside it)

Template sources (PyPI only, nothing from the web):
  * the llama-cpp-python sdist (`pip download --no-deps --no-binary llama-cpp-python
    llama-cpp-python==0.3.36`), which vendors llama.cpp's models/templates/*.jinja
    (these are the Hugging Face tokenizer_config.json chat templates of those models);
  * the SmolLM2 template comes from the `tokenizer.chat_template` metadata of the default
    GGUF, ~/.cache/llm-serve/models/SmolLM2-135M-Instruct.Q4_1.gguf
    (produced by scripts/fetch-default-model.sh).
The sdist is looked up in $LLAMA_CPP_PYTHON_SDIST, then ~/.cache/llm-serve/pypi/, and
downloaded there with pip if absent.

Rendering uses transformers.utils.chat_template_utils.render_jinja_template (the code path
of tokenizer.apply_chat_template): ImmutableSandboxedEnvironment(trim_blocks=True,
lstrip_blocks=True, loopcontrols), transformers' tojson (json.dumps, ensure_ascii=False,
keeps indent/separators/sort_keys), raise_exception, strftime_now, namespace, dict.
The template always sees `messages`, `tools` (None when absent), `documents` (None),
`add_generation_prompt`, plus the case's extra variables (bos_token, eos_token,
date_string, enable_thinking, ...). The only deviation from stock transformers:
strftime_now is pinned to a fixed clock (2024-07-26T12:00:00) so the output is
deterministic; cases where the template actually called it carry "fixed_now".

Run from the repo root:  python3 scripts/chat_template_reference.py
Needs (versions used): transformers 5.23.0, jinja2 3.1.6, gguf 0.19.0, pip (for the sdist
download; the llama-cpp-python sdist 0.3.36 itself is only unpacked, not built).
"""
import copy
import datetime
import glob
import json
import os
import subprocess
import sys
import tarfile
from importlib.metadata import version as pkg_version

import jinja2
import transformers
from transformers.utils import chat_template_utils as ctu

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "fixtures", "chat_templates")
GGUF_PATH = os.path.expanduser("~/.cache/llm-serve/models/SmolLM2-135M-Instruct.Q4_1.gguf")
SDIST_VERSION = "0.3.36"
SDIST_NAME = f"llama_cpp_python-{SDIST_VERSION}.tar.gz"
SDIST_TEMPLATE_DIR = f"llama_cpp_python-{SDIST_VERSION}/vendor/llama.cpp/models/templates/"
FIXED_NOW = datetime.datetime(2024, 7, 26, 12, 0, 0)

GENERATED_BY = {
    "script": "scripts/chat_template_reference.py",
    "transformers": transformers.__version__,
    "jinja2": jinja2.__version__,
    "gguf": pkg_version("gguf"),
    "llama-cpp-python-sdist": SDIST_VERSION,
    "renderer": "transformers.utils.chat_template_utils.render_jinja_template",
}

# file name -> (source package, path inside it or "GGUF metadata", bos, eos)
LLAMA3 = ("<|begin_of_text|>", "<|eot_id|>")
TEMPLATES = {
    "meta-llama-Llama-3.1-8B-Instruct.jinja": LLAMA3,
    "meta-llama-Llama-3.2-3B-Instruct.jinja": LLAMA3,
    "Qwen-Qwen2.5-7B-Instruct.jinja": (None, "<|im_end|>"),
    "Qwen-Qwen3-0.6B.jinja": (None, "<|im_end|>"),
    "Qwen3.5-4B.jinja": (None, "<|im_end|>"),
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": ("<s>", "</s>"),
    "Mistral-Small-3.2-24B-Instruct-2506.jinja": ("<s>", "</s>"),
    "google-gemma-2-2b-it.jinja": ("<bos>", "<eos>"),
    "microsoft-Phi-3.5-mini-instruct.jinja": ("<s>", "<|endoftext|>"),
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "ibm-granite-granite-3.3-2B-Instruct.jinja": ("<|end_of_text|>", "<|end_of_text|>"),
    "HuggingFaceTB-SmolLM2-135M-Instruct.jinja": ("<|im_start|>", "<|im_end|>"),
}
SMOLLM2 = "HuggingFaceTB-SmolLM2-135M-Instruct.jinja"

# ---------------------------------------------------------------- conversations
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city and country, e.g. Paris, France"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Heure actuelle à un endroit — returns ISO-8601 time",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]},
    },
}
TOOL_CALL_ID = "call00001"  # Mistral templates require 9 alphanumeric chars


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def s(text):
    return {"role": "system", "content": text}


USER_ONLY = [u("Hello! Who are you?")]
SYSTEM_USER = [s("You are a concise assistant."), u("List three colors.")]
MULTI_TURN = [u("What is 2+2?"), a("2+2 equals 4."), u("And times 3?")]
MULTI_TURN_ENDS_ASSISTANT = [s("Answer briefly."), u("Capital of France?"), a("Paris."),
                             u("And of Spain?"), a("Madrid.")]
WHITESPACE = [u("  padded message with trailing newline\n\n"), a("\n answer with spaces  "), u("next")]
UNICODE = [u("Grüße! 你好 こんにちは 👍🏽 \"quotes\" and \\backslash\\ <b>tags</b> & {braces}")]
TOOL_CALL_CONV = [
    u("What's the weather in Paris?"),
    {"role": "assistant", "content": "", "tool_calls": [{
        "id": TOOL_CALL_ID, "type": "function",
        "function": {"name": "get_current_weather",
                     "arguments": {"location": "Paris, France", "unit": "celsius"}}}]},
    {"role": "tool", "tool_call_id": TOOL_CALL_ID, "name": "get_current_weather",
     "content": "{\"temperature\": 22, \"condition\": \"sunny\"}"},
]
LIST_CONTENT = [
    {"role": "system", "content": [{"type": "text", "text": "You are terse."}]},
    {"role": "user", "content": [{"type": "text", "text": "Describe "}, {"type": "text", "text": "the sea."}]},
]
LIST_CONTENT_MULTI = [
    {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
    {"role": "user", "content": [{"type": "text", "text": "Part one. "}, {"type": "text", "text": "Part two."}]},
]
THINK_HISTORY = [u("What is 3*7?"), a("<think>\n3*7 is 21.\n</think>\n\nIt is 21."), u("And 3*8?")]
NON_ALTERNATING = [u("first"), u("second")]


def base_cases():
    """Cases every template gets: (name, messages, add_generation_prompt, extra vars)."""
    return [
        ("user_only_gen", USER_ONLY, True, {}),
        ("user_only_nogen", USER_ONLY, False, {}),
        ("system_user_gen", SYSTEM_USER, True, {}),
        ("multi_turn_gen", MULTI_TURN, True, {}),
        ("multi_turn_ends_assistant_nogen", MULTI_TURN_ENDS_ASSISTANT, False, {}),
        ("whitespace_gen", WHITESPACE, True, {}),
        ("unicode_gen", UNICODE, True, {}),
    ]


TOOLS = [WEATHER_TOOL, TIME_TOOL]


def extra_cases(name):
    c = []
    if name.startswith("meta-llama-Llama-3"):
        c += [
            ("tools_gen", [u("What's the weather in Paris?")], True, {"tools": TOOLS}),
            ("tools_system_gen", [s("Be precise."), u("Weather in Oslo?")], True, {"tools": [WEATHER_TOOL]}),
            ("tools_not_in_user_message_gen", [s("Be precise."), u("Weather in Oslo?")], True,
             {"tools": [WEATHER_TOOL], "tools_in_user_message": False}),
            ("tool_call_roundtrip_gen", TOOL_CALL_CONV, True, {"tools": [WEATHER_TOOL]}),
            ("error_two_tool_calls", [u("Weather in Paris and Oslo?"), {
                "role": "assistant", "content": "", "tool_calls": [
                    TOOL_CALL_CONV[1]["tool_calls"][0], TOOL_CALL_CONV[1]["tool_calls"][0]]}], True,
             {"tools": [WEATHER_TOOL]}),
            ("error_tools_without_user_message", [s("sys only")], True, {"tools": [WEATHER_TOOL]}),
            ("other_date_gen", SYSTEM_USER, True, {"date_string": "01 Jan 2025"}),
        ]
        if "3.1" in name:
            c.append(("builtin_tools_gen", [s("You can search."), u("Search for rust")], True,
                      {"builtin_tools": ["brave_search", "wolfram_alpha"], "tools": [WEATHER_TOOL]}))
        if "3.2" in name:
            c.append(("no_date_string_uses_strftime_now_gen", USER_ONLY, True, {"date_string": None}))
    if name.startswith("Qwen"):
        c += [
            ("tools_gen", [u("What's the weather in Paris?")], True, {"tools": TOOLS}),
            ("tools_system_gen", [s("Be precise."), u("Weather in Oslo?")], True, {"tools": [WEATHER_TOOL]}),
            ("tool_call_roundtrip_gen", TOOL_CALL_CONV, True, {"tools": [WEATHER_TOOL]}),
            ("two_tool_results_gen", TOOL_CALL_CONV + [
                {"role": "tool", "tool_call_id": TOOL_CALL_ID, "content": "second result"}], True,
             {"tools": [WEATHER_TOOL]}),
        ]
    if name in ("Qwen-Qwen3-0.6B.jinja", "Qwen3.5-4B.jinja"):
        c += [
            ("think_history_gen", THINK_HISTORY, True, {}),
            ("enable_thinking_false_gen", USER_ONLY, True, {"enable_thinking": False}),
            ("reasoning_content_field_gen",
             [u("Hi"), {"role": "assistant", "content": "Hello!", "reasoning_content": "Greet back."}],
             True, {}),
        ]
    if name == "Qwen3.5-4B.jinja":
        c += [
            ("list_content_gen", LIST_CONTENT, True, {}),
            ("list_content_multi_gen", LIST_CONTENT_MULTI, True, {}),
            ("error_empty_messages", [], True, {}),
        ]
    if name.startswith("mistralai-Mistral-Nemo") or name.startswith("Mistral-Small"):
        c += [
            ("tools_gen", [u("What's the weather in Paris?")], True, {"tools": TOOLS}),
            ("tool_call_roundtrip_gen", TOOL_CALL_CONV, True, {"tools": [WEATHER_TOOL]}),
            ("error_non_alternating", NON_ALTERNATING, True, {}),
            ("error_bad_tool_call_id", [TOOL_CALL_CONV[0], dict(TOOL_CALL_CONV[1], tool_calls=[
                dict(TOOL_CALL_CONV[1]["tool_calls"][0], id="short")])], True, {"tools": [WEATHER_TOOL]}),
        ]
    if name.startswith("Mistral-Small"):
        c += [
            ("list_content_gen", LIST_CONTENT, True, {}),
            ("list_content_multi_gen", LIST_CONTENT_MULTI, True, {}),
        ]
    if name.startswith("google-gemma"):
        c += [
            # (system_user_gen already raises "System role not supported" for gemma 2)
            ("error_non_alternating", NON_ALTERNATING, True, {}),
        ]
    if name.startswith("deepseek"):
        c += [
            ("think_history_gen", THINK_HISTORY, True, {}),
            ("enable_thinking_true_gen", USER_ONLY, True, {"enable_thinking": True}),
        ]
    if name.startswith("ibm-granite"):
        c += [
            ("tools_gen", [s("Be precise."), u("What's the weather in Paris?")], True, {"tools": [WEATHER_TOOL]}),
            ("tools_default_system_gen", [u("What's the weather in Paris?")], True, {"tools": [WEATHER_TOOL]}),
            ("documents_gen", [u("Summarize.")], True,
             {"documents": [{"doc_id": 1, "title": "T", "text": "Rust is a language."}]}),
        ]
    return c


# ---------------------------------------------------------------- template sources
def find_sdist():
    cands = [os.environ.get("LLAMA_CPP_PYTHON_SDIST", "")]
    cache = os.path.expanduser("~/.cache/llm-serve/pypi")
    cands += [os.path.join(cache, SDIST_NAME), os.path.join("/tmp/pkgs", SDIST_NAME)]
    for c in cands:
        if c and os.path.exists(c):
            return c
    os.makedirs(cache, exist_ok=True)
    subprocess.check_call([sys.executable, "-m", "pip", "download", "--no-deps",
                           "--no-binary", "llama-cpp-python", f"llama-cpp-python=={SDIST_VERSION}",
                           "-d", cache])
    return os.path.join(cache, SDIST_NAME)


def smollm2_template():
    from gguf import GGUFReader
    r = GGUFReader(GGUF_PATH)
    return r.fields["tokenizer.chat_template"].contents()


def collect_templates():
    sdist = find_sdist()
    out = {}
    with tarfile.open(sdist) as tf:
        for fname in TEMPLATES:
            if fname == SMOLLM2:
                continue
            member = SDIST_TEMPLATE_DIR + fname
            out[fname] = (tf.extractfile(member).read().decode("utf-8"),
                          f"llama-cpp-python {SDIST_VERSION} sdist (PyPI)", member)
    out[SMOLLM2] = (smollm2_template(), "GGUF metadata key tokenizer.chat_template",
                    "~/.cache/llm-serve/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    return out


# ---------------------------------------------------------------- rendering
def render(template_text, messages, add_generation_prompt, extra):
    compiled = ctu._compile_jinja_template(template_text)
    called = []

    def fixed_strftime_now(fmt):
        called.append(fmt)
        return FIXED_NOW.strftime(fmt)

    compiled.globals["strftime_now"] = fixed_strftime_now
    kwargs = {k: v for k, v in extra.items() if k not in ("tools", "documents")}
    rendered, _ = ctu.render_jinja_template(
        conversations=[copy.deepcopy(messages)],
        tools=copy.deepcopy(extra.get("tools")),
        documents=copy.deepcopy(extra.get("documents")),
        chat_template=template_text,
        add_generation_prompt=add_generation_prompt,
        **copy.deepcopy(kwargs),
    )
    return rendered[0], called


def main():
    os.makedirs(OUT, exist_ok=True)
    for old in glob.glob(os.path.join(OUT, "*.jinja")):
        os.remove(old)
    templates = collect_templates()
    sources = ["# Chat template sources", "",
               "Every template is stored byte-for-byte as found; all come from PyPI packages or",
               "from the default GGUF (itself fetched by scripts/fetch-default-model.sh).",
               "Regenerate with `python3 scripts/chat_template_reference.py`.", "",
               "| file | origin model | source | path inside the source |",
               "| --- | --- | --- | --- |"]
    cases = []
    for fname, (bos, eos) in TEMPLATES.items():
        text, src, path = templates[fname]
        with open(os.path.join(OUT, fname), "w", encoding="utf-8", newline="") as f:
            f.write(text)
        origin = fname[:-len(".jinja")]
        sources.append(f"| `{fname}` | {origin} | {src} | `{path}` |")
        special = {}
        if bos is not None:
            special["bos_token"] = bos
        special["eos_token"] = eos
        for cname, messages, agp, extra in base_cases() + extra_cases(fname):
            extra = dict(special, **extra)
            if fname.startswith("meta-llama-Llama-3") and "date_string" not in extra:
                extra["date_string"] = "26 Jul 2024"
            if extra.get("date_string", "") is None:
                del extra["date_string"]
            context = {"messages": messages, "add_generation_prompt": agp,
                       "tools": extra.get("tools"), "documents": extra.get("documents")}
            context.update({k: v for k, v in extra.items() if k not in ("tools", "documents")})
            case = {"id": f"{origin}/{cname}", "template": fname, "context": context}
            try:
                out, called = render(text, messages, agp, extra)
                case["expected"] = out
            except Exception as e:  # template raised (raise_exception) or jinja/type error
                called = []
                case["error"] = str(e)
                case["error_type"] = type(e).__name__
            if called:
                case["fixed_now"] = FIXED_NOW.isoformat()
            cases.append(case)
    sources += ["", "The llama.cpp copies were taken from each model's Hugging Face tokenizer_config.json",
                "by llama.cpp's scripts/get_chat_template.py (see models/templates/README.md in the sdist).",
                "Files are written unmodified, trailing newline included."]
    with open(os.path.join(OUT, "SOURCES.md"), "w") as f:
        f.write("\n".join(sources) + "\n")
    doc = {
        "generated_by": GENERATED_BY,
        "format": {
            "cases": "list of {id, template, context, expected | (error, error_type), fixed_now?}",
            "context": "all variables the template sees: messages, add_generation_prompt, tools (null when "
                       "absent), documents (null when absent) and any extras (bos_token, eos_token, "
                       "date_string, enable_thinking, tools_in_user_message, builtin_tools). A family "
                       "without a bos token (Qwen) has no bos_token key at all (undefined in jinja).",
            "expected": "exact rendered string",
            "error": "message of the exception the template raised (raise_exception -> TemplateError)",
            "fixed_now": "present when the template called strftime_now(); it was answered from this "
                         "fixed local time instead of the real clock",
            "jinja_env": "ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, "
                         "extensions=[loopcontrols]); tojson = json.dumps(x, ensure_ascii=False, "
                         "indent=None, separators=None, sort_keys=False) i.e. ', ' and ': ' separators",
        },
        "cases": cases,
    }
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    n_err = sum("error" in c for c in cases)
    print(f"{len(templates)} templates, {len(cases)} cases ({n_err} errors)")
    for c in cases:
        if "error" in c:
            print(f"  ERR {c['id']}: {c['error_type']}: {c['error'][:100]}")
        elif c.get("fixed_now"):
            print(f"  NOW {c['id']}")


if __name__ == "__main__":
    main()
