//! A request's structured-output fields (OpenAI's `response_format`,
//! vLLM's `structured_outputs` and its older `guided_*` aliases) as the
//! one constraint the replica compiles. Every field is accepted or
//! refused with a 400 naming it: none is dropped unnoticed, and two
//! constraints at once are refused rather than one silently winning.

use crate::error::ApiError;
use llm_serve_proto as pb;
use pb::constraint::Kind;
use serde::Deserialize;
use serde_json::{json, Map, Value};

#[derive(Debug, Default, Deserialize)]
pub struct StructuredFields {
    pub response_format: Option<Value>,
    pub structured_outputs: Option<Value>,
    pub guided_json: Option<Value>,
    pub guided_regex: Option<Value>,
    pub guided_choice: Option<Value>,
    pub guided_grammar: Option<Value>,
    pub guided_whitespace_pattern: Option<Value>,
    // `guided_decoding_backend` is taken whatever it names (ignored like
    // any unknown field): there is one backend, llguidance.
}

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message, Some(param))
}

fn present(v: &Option<Value>) -> Option<&Value> {
    v.as_ref().filter(|v| !v.is_null())
}

impl StructuredFields {
    /// The request's constraint, if it has one.
    pub fn constraint(&self) -> Result<Option<pb::Constraint>, ApiError> {
        if present(&self.guided_whitespace_pattern).is_some() {
            return Err(bad(
                "guided_whitespace_pattern",
                "`guided_whitespace_pattern` is not supported: JSON whitespace is bounded by the server (at most 8 characters in a row); set `structured_outputs.disable_any_whitespace` for none.",
            ));
        }
        let mut found: Vec<pb::Constraint> = Vec::new();
        if let Some(f) = present(&self.response_format) {
            found.extend(response_format(f)?);
        }
        if let Some(s) = present(&self.structured_outputs) {
            found.push(structured_outputs(s)?);
        }
        for (param, value) in [
            ("guided_json", &self.guided_json),
            ("guided_regex", &self.guided_regex),
            ("guided_choice", &self.guided_choice),
            ("guided_grammar", &self.guided_grammar),
        ] {
            if let Some(v) = present(value) {
                let key = param.trim_start_matches("guided_");
                found.push(one_kind(param, key, v, Options::default())?);
            }
        }
        match found.len() {
            0 | 1 => Ok(found.pop()),
            _ => Err(bad(
                &found[1].param,
                format!(
                    "Only one structured-output constraint may be given, but the request has both `{}` and `{}`.",
                    found[0].param, found[1].param
                ),
            )),
        }
    }
}

#[derive(Clone, Copy)]
struct Options {
    compact: bool,
    /// Objects that leave `additionalProperties` out get `false`: what
    /// vLLM's default backend (xgrammar) and OpenAI's strict mode do, so
    /// a model cannot pad an answer with keys nobody asked for. The
    /// answer still validates against the schema as given.
    close_objects: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            compact: false,
            close_objects: true,
        }
    }
}

/// `response_format`: `text` (no constraint), `json_object`, or
/// `json_schema` with `{name, schema, strict}`.
fn response_format(f: &Value) -> Result<Option<pb::Constraint>, ApiError> {
    const P: &str = "response_format";
    let Some(obj) = f.as_object() else {
        return Err(bad(P, "response_format must be an object with a `type`."));
    };
    let kind = match obj.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return Err(bad(P, "response_format.type must be a string.")),
        None => return Err(bad(P, "response_format must be an object with a `type`.")),
    };
    match kind {
        "text" => Ok(None),
        "json_object" => match obj.get("schema").filter(|s| !s.is_null()) {
            // llama.cpp's extension: a schema next to json_object.
            Some(schema) => Ok(Some(schema_constraint(P, schema, Options::default())?)),
            None => Ok(Some(constraint(P, Kind::JsonObject(true), false))),
        },
        "json_schema" => {
            let Some(spec) = obj.get("json_schema").and_then(Value::as_object) else {
                return Err(bad(
                    P,
                    "response_format.json_schema (an object with `name` and `schema`) is required when type is \"json_schema\".",
                ));
            };
            if spec.get("name").is_some_and(|n| !n.is_string() && !n.is_null()) {
                return Err(bad(P, "response_format.json_schema.name must be a string."));
            }
            // `strict` or not, objects are closed (see `Options`).
            if spec.get("strict").is_some_and(|s| !s.is_boolean() && !s.is_null()) {
                return Err(bad(P, "response_format.json_schema.strict must be a boolean."));
            }
            let opts = Options::default();
            match spec.get("schema").filter(|s| !s.is_null()) {
                Some(schema) => Ok(Some(schema_constraint(P, schema, opts)?)),
                None => Ok(Some(constraint(P, Kind::JsonObject(true), false))),
            }
        }
        "structural_tag" => Err(bad(
            P,
            "response_format type \"structural_tag\" is not supported; use \"json_schema\", or `tools` with `tool_choice`.",
        )),
        other => Err(bad(
            P,
            format!("response_format type `{other}` is not one of \"text\", \"json_object\", \"json_schema\"."),
        )),
    }
}

const KINDS: &[&str] = &["json", "regex", "choice", "grammar", "json_object"];

/// vLLM's `structured_outputs`: exactly one of `json`, `regex`,
/// `choice`, `grammar`, `json_object`, with its options.
fn structured_outputs(s: &Value) -> Result<pb::Constraint, ApiError> {
    const P: &str = "structured_outputs";
    let Some(obj) = s.as_object() else {
        return Err(bad(P, "structured_outputs must be an object."));
    };
    let mut opts = Options::default();
    let mut kinds: Vec<(&str, &Value)> = Vec::new();
    for (key, value) in obj {
        if value.is_null() {
            continue;
        }
        let param = format!("{P}.{key}");
        let flag = || {
            value
                .as_bool()
                .ok_or_else(|| bad(&param, format!("`{param}` must be a boolean.")))
        };
        match key.as_str() {
            "disable_any_whitespace" => opts.compact = flag()?,
            "disable_additional_properties" => opts.close_objects = flag()?,
            // One backend here: there is nothing to fall back to.
            "disable_fallback" => {
                flag()?;
            }
            "json_object" if value == &Value::Bool(false) => {}
            k if KINDS.contains(&k) => kinds.push((k, value)),
            "whitespace_pattern" => {
                return Err(bad(
                    &param,
                    "`structured_outputs.whitespace_pattern` is not supported: JSON whitespace is bounded by the server; set `disable_any_whitespace` for none.",
                ))
            }
            "structural_tag" => {
                return Err(bad(
                    &param,
                    "`structured_outputs.structural_tag` is not supported; use `json`, `regex`, `choice` or `grammar`.",
                ))
            }
            other => {
                return Err(bad(
                    &param,
                    format!("`structured_outputs` has no field `{other}` (it takes one of json, regex, choice, grammar, json_object, and disable_any_whitespace, disable_additional_properties, disable_fallback)."),
                ))
            }
        }
    }
    match kinds.as_slice() {
        [] => Err(bad(P, "structured_outputs names no constraint: give one of json, regex, choice, grammar, json_object.")),
        [(key, value)] => one_kind(&format!("{P}.{key}"), key, value, opts),
        _ => Err(bad(
            P,
            "You can only use one kind of constraints for structured outputs ('json', 'regex' or 'choice').",
        )),
    }
}

/// One constraint of kind `key` (`json`, `regex`, ...) from `param`.
fn one_kind(param: &str, key: &str, v: &Value, opts: Options) -> Result<pb::Constraint, ApiError> {
    let text = |what: &str| {
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| bad(param, format!("`{param}` must be a string ({what}).")))
    };
    match key {
        "json" => match v {
            Value::String(s) => {
                let schema: Value = serde_json::from_str(s).map_err(|e| {
                    bad(param, format!("`{param}` is not a valid JSON Schema: {e}"))
                })?;
                schema_constraint(param, &schema, opts)
            }
            other => schema_constraint(param, other, opts),
        },
        "json_object" => Ok(constraint(param, Kind::JsonObject(true), opts.compact)),
        "regex" => Ok(constraint(
            param,
            Kind::Regex(text("a regular expression")?),
            false,
        )),
        "choice" => {
            let items = v.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
                bad(
                    param,
                    format!("`{param}` must be a non-empty list of strings."),
                )
            })?;
            let choices = items
                .iter()
                .map(|c| c.as_str().map(str::to_owned))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| {
                    bad(
                        param,
                        format!("`{param}` must be a non-empty list of strings."),
                    )
                })?;
            Ok(constraint(
                param,
                Kind::Choice(pb::Choices { choices }),
                false,
            ))
        }
        _ => {
            let g = text("a Lark grammar")?;
            if g.contains("::=") {
                return Err(bad(
                    param,
                    format!("`{param}` looks like GBNF/EBNF (`::=`): grammars here are in llguidance's Lark syntax (`rule: ...`)."),
                ));
            }
            Ok(constraint(param, Kind::Lark(g), false))
        }
    }
}

/// A JSON Schema constraint; `close_objects` sets `additionalProperties:
/// false` wherever a schema leaves it out.
fn schema_constraint(
    param: &str,
    schema: &Value,
    opts: Options,
) -> Result<pb::Constraint, ApiError> {
    let schema = match schema {
        Value::Object(_) | Value::Bool(_) => schema.clone(),
        other => {
            return Err(bad(
                param,
                format!("`{param}`: a JSON Schema must be an object or a boolean, got `{other}`."),
            ))
        }
    };
    let schema = if opts.close_objects {
        closed(schema)
    } else {
        schema
    };
    Ok(constraint(
        param,
        Kind::JsonSchema(schema.to_string()),
        opts.compact,
    ))
}

/// A plain schema constraint (tools' parameters, whole answers).
pub fn json_schema(param: &str, schema: &Value) -> Result<pb::Constraint, ApiError> {
    schema_constraint(param, schema, Options::default())
}

fn constraint(param: &str, kind: Kind, compact_json: bool) -> pb::Constraint {
    pb::Constraint {
        kind: Some(kind),
        param: param.to_string(),
        compact_json,
    }
}

/// `schema` with `additionalProperties: false` on every object schema
/// that has `properties` and says nothing about extra ones.
fn closed(schema: Value) -> Value {
    match schema {
        Value::Object(mut m) => {
            for (_, v) in m.iter_mut() {
                *v = closed(std::mem::take(v));
            }
            if m.contains_key("properties") && !m.contains_key("additionalProperties") {
                m.insert("additionalProperties".into(), Value::Bool(false));
            }
            Value::Object(m)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(closed).collect()),
        other => other,
    }
}

/// `{"type": "object"}`: what a tool without `parameters` takes.
pub fn any_object() -> Value {
    json!({"type": "object"})
}

/// Moves `$defs` (and `definitions`) of `schema` into `defs`, so that
/// schemas nested under one root keep resolving their local refs (the
/// caller puts `defs` back under both names at the root); the same
/// name with a different definition is an error naming `param`.
pub fn hoist_defs(
    param: &str,
    schema: &mut Value,
    defs: &mut Map<String, Value>,
) -> Result<(), ApiError> {
    let Some(obj) = schema.as_object_mut() else {
        return Ok(());
    };
    for key in ["$defs", "definitions"] {
        let Some(Value::Object(these)) = obj.remove(key) else {
            continue;
        };
        for (name, def) in these {
            match defs.get(&name) {
                Some(existing) if existing != &def => {
                    return Err(bad(
                        param,
                        format!("Tool definitions conflict: `{name}` is defined differently by two tools' `$defs`."),
                    ))
                }
                _ => {
                    defs.insert(name, def);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn fields(v: Value) -> Result<Option<pb::Constraint>, ApiError> {
        serde_json::from_value::<StructuredFields>(v)
            .unwrap()
            .constraint()
    }

    fn kind(v: Value) -> Kind {
        fields(v).unwrap().unwrap().kind.unwrap()
    }

    #[test]
    fn each_field_becomes_its_constraint() {
        assert!(fields(json!({"response_format": {"type": "text"}}))
            .unwrap()
            .is_none());
        assert_eq!(
            kind(json!({"response_format": {"type": "json_object"}})),
            Kind::JsonObject(true)
        );
        let k = kind(
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer"}}}}),
        );
        assert_eq!(k, Kind::JsonSchema(r#"{"type":"integer"}"#.into()));
        assert_eq!(
            kind(json!({"guided_regex": "a+"})),
            Kind::Regex("a+".into())
        );
        assert_eq!(
            kind(json!({"structured_outputs": {"choice": ["a", "b"]}})),
            Kind::Choice(pb::Choices {
                choices: vec!["a".into(), "b".into()]
            })
        );
        assert_eq!(
            kind(json!({"guided_json": "{\"type\": \"string\"}"})),
            Kind::JsonSchema(r#"{"type":"string"}"#.into())
        );
        let c = fields(
            json!({"structured_outputs": {"json_object": true, "disable_any_whitespace": true}}),
        )
        .unwrap()
        .unwrap();
        assert!(c.compact_json);
        assert_eq!(c.param, "structured_outputs.json_object");
    }

    #[test]
    fn strict_closes_objects() {
        let k = kind(
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": true,
            "schema": {"type": "object", "properties": {"a": {"type": "object", "properties": {}}}}}}}),
        );
        let Kind::JsonSchema(s) = k else { panic!() };
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["additionalProperties"], false);
        assert_eq!(v["properties"]["a"]["additionalProperties"], false);
    }

    #[test]
    fn bad_fields_are_400s_naming_the_field() {
        for (body, param) in [
            (
                json!({"response_format": {"type": "sound"}}),
                "response_format",
            ),
            (json!({"response_format": {"type": 123}}), "response_format"),
            (json!({"response_format": "json"}), "response_format"),
            (
                json!({"response_format": {"type": "json_schema"}}),
                "response_format",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"schema": 123}}}),
                "response_format",
            ),
            (
                json!({"structured_outputs": {"regex": "a", "choice": ["b"]}}),
                "structured_outputs",
            ),
            (json!({"structured_outputs": {}}), "structured_outputs"),
            (
                json!({"structured_outputs": {"frob": 1}}),
                "structured_outputs.frob",
            ),
            (
                json!({"structured_outputs": {"choice": []}}),
                "structured_outputs.choice",
            ),
            (
                json!({"guided_grammar": "root ::= \"a\""}),
                "guided_grammar",
            ),
            (json!({"guided_json": "{nope"}), "guided_json"),
            (
                json!({"guided_whitespace_pattern": " "}),
                "guided_whitespace_pattern",
            ),
            (
                json!({"response_format": {"type": "json_object"}, "guided_regex": "a"}),
                "guided_regex",
            ),
        ] {
            let e = fields(body.clone()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
    }

    #[test]
    fn defs_are_hoisted_and_conflicts_refused() {
        let mut defs = Map::new();
        let mut a = json!({"type": "object", "$defs": {"P": {"type": "integer"}}});
        hoist_defs("tools[0]", &mut a, &mut defs).unwrap();
        assert!(a.get("$defs").is_none());
        let mut b = json!({"$defs": {"P": {"type": "string"}}});
        assert!(hoist_defs("tools[1]", &mut b, &mut defs).is_err());
    }
}
