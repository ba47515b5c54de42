//! `tools` and `tool_choice`: checked as vLLM checks them (its messages),
//! then planned: which constraint forces the call (a named function: its
//! parameters; `required`: an array of calls) and how the output is read
//! (`auto`: the model's own format, when its template renders tools).

use super::structured::{any_object, hoist_defs, json_schema};
use crate::error::ApiError;
use crate::tool_calls::{Format, Reading};
use llm_serve_proto as pb;
use serde_json::{json, Map, Value};

/// One declared function.
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    pub name: String,
    pub parameters: Value,
}

/// What the request's tools mean for generation and for the answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ToolPlan {
    /// How each choice's text is read (`None`: plain content).
    pub reading: Option<Reading>,
    /// The constraint that forces the call, for named and required.
    pub constraint: Option<pb::Constraint>,
}

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message, Some(param))
}

/// The declared tools; `Ok(None)` when there are none.
pub fn declared(tools: Option<&Value>) -> Result<Option<Vec<Tool>>, ApiError> {
    let items = match tools {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(bad("tools", "`tools` must be a list of tool objects.")),
    };
    if items.is_empty() {
        return Err(bad(
            "tools",
            "`tools` must not be an empty list: leave it out when there are no tools.",
        ));
    }
    let mut out: Vec<Tool> = Vec::with_capacity(items.len());
    for (i, t) in items.iter().enumerate() {
        let param = format!("tools[{i}]");
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(bad(&param, format!("{param}.type must be \"function\".")));
        }
        let Some(f) = t.get("function").and_then(Value::as_object) else {
            return Err(bad(&param, format!("{param}.function must be an object.")));
        };
        let name = match f.get("name") {
            Some(Value::String(n)) if !n.is_empty() => n.clone(),
            Some(Value::String(_)) => {
                return Err(bad(
                    &param,
                    format!("{param}.function.name must not be empty."),
                ))
            }
            _ => {
                return Err(bad(
                    &param,
                    format!("{param}.function.name must be a string."),
                ))
            }
        };
        if out.iter().any(|t| t.name == name) {
            return Err(bad(
                &param,
                format!("{param}: the function `{name}` is declared twice."),
            ));
        }
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => any_object(),
            Some(p @ (Value::Object(_) | Value::Bool(_))) => p.clone(),
            Some(_) => {
                return Err(bad(
                    &param,
                    format!("{param}.function.parameters must be a JSON Schema object."),
                ))
            }
        };
        if f.get("strict")
            .is_some_and(|s| !s.is_boolean() && !s.is_null())
        {
            return Err(bad(
                &param,
                format!("{param}.function.strict must be a boolean."),
            ));
        }
        out.push(Tool { name, parameters });
    }
    Ok(Some(out))
}

/// `tool_choice` as given.
#[derive(Clone, Debug, PartialEq)]
enum Choice {
    None,
    Auto,
    Required,
    Named(String),
}

const USAGE: &str = "`tool_choice` must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}.";

fn choice(v: &Value) -> Result<Choice, ApiError> {
    const P: &str = "tool_choice";
    match v {
        Value::String(s) => match s.as_str() {
            "none" => Ok(Choice::None),
            "auto" => Ok(Choice::Auto),
            "required" => Ok(Choice::Required),
            other => Err(bad(
                P,
                format!("Invalid value for `tool_choice`: `{other}`. {USAGE}"),
            )),
        },
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            match o.get("function").and_then(|f| f.get("name")).and_then(Value::as_str) {
                Some(n) => Ok(Choice::Named(n.to_string())),
                None => Err(bad(
                    P,
                    "Expected field `name` in `function` in `tool_choice`! Correct usage: `{\"type\": \"function\", \"function\": {\"name\": \"my_function\"}}`",
                )),
            }
        }
        _ => Err(bad(P, format!("Invalid value for `tool_choice`. {USAGE}"))),
    }
}

/// Plans a request's tools. `format` is what the model's template asks
/// the model to write (`None`: the template renders no tools, so `auto`
/// answers in content); `structured` says whether the request already
/// has a structured-output constraint.
pub fn plan(
    tools: Option<&Value>,
    tool_choice: Option<&Value>,
    parallel_tool_calls: Option<bool>,
    format: Option<Format>,
    structured: bool,
) -> Result<ToolPlan, ApiError> {
    let tool_choice = tool_choice.filter(|v| !v.is_null());
    let given = tool_choice.map(choice).transpose()?;
    let tools = declared(tools)?;
    let Some(tools) = tools else {
        return match given {
            None | Some(Choice::None) => Ok(ToolPlan::default()),
            Some(_) => Err(bad(
                "tool_choice",
                "When using `tool_choice`, `tools` must be set.",
            )),
        };
    };
    let conflict = || {
        bad(
            "tool_choice",
            "You can only either use constraints for structured outputs or tools, not both.",
        )
    };
    match given.unwrap_or(Choice::Auto) {
        Choice::None => Ok(ToolPlan::default()),
        Choice::Auto => Ok(ToolPlan {
            reading: format.map(Reading::Auto),
            constraint: None,
        }),
        Choice::Named(name) => {
            let Some(tool) = tools.iter().find(|t| t.name == name) else {
                return Err(bad(
                    "tool_choice",
                    format!("The tool specified in `tool_choice` (`{name}`) does not match any of the specified `tools`."),
                ));
            };
            if structured {
                return Err(conflict());
            }
            Ok(ToolPlan {
                reading: Some(Reading::Named(name)),
                constraint: Some(json_schema("tool_choice", &tool.parameters)?),
            })
        }
        Choice::Required => {
            if structured {
                return Err(conflict());
            }
            let schema = required_schema(&tools, parallel_tool_calls.unwrap_or(true))?;
            Ok(ToolPlan {
                reading: Some(Reading::Required),
                constraint: Some(json_schema("tool_choice", &schema)?),
            })
        }
    }
}

/// vLLM's schema for `required`: a JSON array of one or more
/// `{"name": <a declared name>, "parameters": <its schema>}` (one only
/// when `parallel_tool_calls` is false), every tool's `$defs` merged at
/// the root.
pub fn required_schema(tools: &[Tool], parallel: bool) -> Result<Value, ApiError> {
    let mut defs = Map::new();
    let mut variants = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let mut params = t.parameters.clone();
        hoist_defs(&format!("tools[{i}]"), &mut params, &mut defs)?;
        variants.push(json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [t.name]},
                "parameters": params,
            },
            "required": ["name", "parameters"],
            "additionalProperties": false,
        }));
    }
    let mut schema = json!({
        "type": "array",
        "minItems": 1,
        "items": {"anyOf": variants},
    });
    if !parallel {
        schema["maxItems"] = json!(1);
    }
    if !defs.is_empty() {
        schema["$defs"] = Value::Object(defs.clone());
        schema["definitions"] = Value::Object(defs);
    }
    Ok(schema)
}

/// The messages with each assistant `tool_calls[].function.arguments`
/// string turned into the object templates expect (as vLLM does; an
/// empty string is `{}`; text that is not JSON stays a string).
pub fn arguments_as_objects(messages: &[Value]) -> Vec<Value> {
    messages
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if let Some(calls) = m.get_mut("tool_calls").and_then(Value::as_array_mut) {
                for call in calls {
                    if let Some(args) = call
                        .get_mut("function")
                        .and_then(|f| f.get_mut("arguments"))
                    {
                        if let Value::String(s) = args {
                            let parsed = if s.trim().is_empty() {
                                Some(json!({}))
                            } else {
                                serde_json::from_str::<Value>(s).ok()
                            };
                            if let Some(v) = parsed {
                                *args = v;
                            }
                        }
                    }
                }
            }
            m
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tools() -> Value {
        json!([
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "now"}},
        ])
    }

    #[test]
    fn choices_plan_their_constraint_and_reading() {
        let t = tools();
        let p = plan(Some(&t), None, None, Some(Format::Hermes), false).unwrap();
        assert_eq!(p.reading, Some(Reading::Auto(Format::Hermes)));
        assert!(p.constraint.is_none());
        let p = plan(Some(&t), None, None, None, false).unwrap();
        assert_eq!(p.reading, None, "auto without a tool format is content");
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        let p = plan(Some(&t), Some(&named), None, None, false).unwrap();
        assert_eq!(p.reading, Some(Reading::Named("get_weather".into())));
        let p = plan(Some(&t), Some(&json!("required")), Some(false), None, false).unwrap();
        assert_eq!(p.reading, Some(Reading::Required));
        let Some(pb::constraint::Kind::JsonSchema(s)) = p.constraint.unwrap().kind else {
            panic!()
        };
        let s: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(s["maxItems"], 1);
        assert_eq!(
            s["items"]["anyOf"][1]["properties"]["parameters"],
            json!({"type": "object"})
        );
        assert_eq!(
            plan(
                Some(&t),
                Some(&json!("none")),
                None,
                Some(Format::Hermes),
                false
            )
            .unwrap(),
            ToolPlan::default()
        );
    }

    #[test]
    fn bad_tools_and_choices_are_400s_naming_the_field() {
        let t = tools();
        for (tools, choice, param) in [
            (json!("x"), Value::Null, "tools"),
            (json!([]), Value::Null, "tools"),
            (
                json!([{"type": "function", "function": {}}]),
                Value::Null,
                "tools[0]",
            ),
            (
                json!([{"type": "function", "function": {"name": ""}}]),
                Value::Null,
                "tools[0]",
            ),
            (
                json!([{"type": "function", "function": {"name": "a", "parameters": 3}}]),
                Value::Null,
                "tools[0]",
            ),
            (
                t.clone(),
                json!({"type": "function", "function": {"name": "nope"}}),
                "tool_choice",
            ),
            (t.clone(), json!({"type": "function"}), "tool_choice"),
            (t.clone(), json!("sometimes"), "tool_choice"),
            (t.clone(), json!(5), "tool_choice"),
            (Value::Null, json!("required"), "tool_choice"),
        ] {
            let e = plan(Some(&tools), Some(&choice), None, None, false).unwrap_err();
            assert_eq!(
                e.param.as_deref(),
                Some(param),
                "{tools} {choice}: {}",
                e.message
            );
        }
        let e = plan(Some(&t), Some(&json!("required")), None, None, true).unwrap_err();
        assert!(e.message.contains("not both"), "{}", e.message);
    }

    #[test]
    fn history_arguments_become_objects() {
        let m = vec![json!({"role": "assistant", "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}},
            {"id": "2", "type": "function", "function": {"name": "g", "arguments": ""}},
        ]})];
        let out = arguments_as_objects(&m);
        assert_eq!(
            out[0]["tool_calls"][0]["function"]["arguments"],
            json!({"a": 1})
        );
        assert_eq!(out[0]["tool_calls"][1]["function"]["arguments"], json!({}));
    }
}
