//! PEFT's `adapter_config.json`: which modules an adapter adapts, each
//! module's rank and alpha (`r`, `lora_alpha`, `rank_pattern`,
//! `alpha_pattern`), the scaling rule (`use_rslora`), and the features a
//! plain LoRA update cannot express, which are refused with the reason.

use super::Projection;
use regex::Regex;
use serde_json::{Map, Value};

/// What an adapter's config says about its modules.
#[derive(Debug)]
pub struct PeftConfig {
    r: usize,
    alpha: f64,
    rslora: bool,
    rank_pattern: Vec<(Regex, usize)>,
    alpha_pattern: Vec<(Regex, f64)>,
}

impl PeftConfig {
    /// Parses the JSON text of `adapter_config.json`. Errors are the reason
    /// the adapter cannot be served, in words for a 400.
    pub fn parse(text: &str) -> Result<PeftConfig, String> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| format!("adapter_config.json: {e}"))?;
        let obj = v
            .as_object()
            .ok_or("adapter_config.json is not a JSON object")?;
        if let Some(t) = obj.get("peft_type").and_then(Value::as_str) {
            if t != "LORA" {
                return Err(format!("peft_type {t:?} is not supported (LORA is)"));
            }
        }
        refuse_features(obj)?;
        check_targets(obj.get("target_modules"))?;
        let r = positive(obj, "r")?.unwrap_or(8.0);
        if r.fract() != 0.0 {
            return Err(format!("r must be a positive integer, got {r}"));
        }
        let alpha = positive(obj, "lora_alpha")?.unwrap_or(8.0);
        let rslora = match obj.get("use_rslora") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(format!("use_rslora must be a boolean, got {other}")),
        };
        let rank_pattern = patterns(obj, "rank_pattern")?
            .into_iter()
            .map(|(re, v)| {
                if v.fract() != 0.0 {
                    Err(format!("rank_pattern: rank {v} is not an integer"))
                } else {
                    Ok((re, v as usize))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(PeftConfig {
            r: r as usize,
            alpha,
            rslora,
            rank_pattern,
            alpha_pattern: patterns(obj, "alpha_pattern")?,
        })
    }

    /// The rank the config gives `module` (a base-model module name such as
    /// `model.layers.3.self_attn.q_proj`).
    pub fn rank(&self, module: &str) -> usize {
        first_match(&self.rank_pattern, module).unwrap_or(self.r)
    }

    /// The factor of `B (A x)` for `module`: alpha/r, or alpha/sqrt(r)
    /// with rsLoRA, each from the patterns when one matches (PEFT's
    /// `update_layer`).
    pub fn scaling(&self, module: &str) -> f64 {
        let r = self.rank(module) as f64;
        let alpha = first_match(&self.alpha_pattern, module).unwrap_or(self.alpha);
        if self.rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }
    }
}

/// PEFT's pattern rule: the first key such that the module name is the key
/// or ends with `.key` (keys are regular expressions).
fn first_match<T: Copy>(patterns: &[(Regex, T)], module: &str) -> Option<T> {
    patterns
        .iter()
        .find(|(re, _)| re.is_match(module))
        .map(|(_, v)| *v)
}

fn patterns(obj: &Map<String, Value>, field: &str) -> Result<Vec<(Regex, f64)>, String> {
    let Some(v) = obj.get(field) else {
        return Ok(Vec::new());
    };
    let Some(map) = v.as_object() else {
        if v.is_null() {
            return Ok(Vec::new());
        }
        return Err(format!("{field} must be an object, got {v}"));
    };
    map.iter()
        .map(|(key, value)| {
            let re = Regex::new(&format!(r"^(?:.*\.)?(?:{key})$"))
                .map_err(|e| format!("{field}: key {key:?} is not a pattern: {e}"))?;
            match value.as_f64() {
                Some(x) if x > 0.0 && x.is_finite() => Ok((re, x)),
                _ => Err(format!(
                    "{field}: the value for {key:?} must be a positive number, got {value}"
                )),
            }
        })
        .collect()
}

fn positive(obj: &Map<String, Value>, field: &str) -> Result<Option<f64>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if x > 0.0 && x.is_finite() => Ok(Some(x)),
            _ => Err(format!("{field} must be a positive number, got {v}")),
        },
    }
}

/// Features of PEFT's LoraConfig that change the update beyond `B (A x)`.
fn refuse_features(obj: &Map<String, Value>) -> Result<(), String> {
    let set = |k: &str| {
        obj.get(k)
            .is_some_and(|v| !matches!(v, Value::Null | Value::Bool(false)))
    };
    if set("use_dora") {
        return Err("DoRA adapters (use_dora) are not supported; merge the DoRA weights into the base model or train a plain LoRA adapter".into());
    }
    if let Some(bias) = obj.get("bias").and_then(Value::as_str) {
        if bias != "none" {
            return Err(format!(
                "bias {bias:?} is not supported: only adapters trained with bias \"none\" are"
            ));
        }
    }
    if set("lora_bias") {
        return Err("lora_bias (a bias on lora_B) is not supported".into());
    }
    match obj.get("modules_to_save") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(v) => {
            return Err(format!(
                "modules_to_save ({v}) is not supported: the adapter carries full copies of base modules"
            ))
        }
    }
    for field in ["layer_replication", "use_qalora", "trainable_token_indices"] {
        if set(field) {
            return Err(format!("{field} is not supported"));
        }
    }
    Ok(())
}

/// Named target modules must be ones the supported architectures have
/// (a regular expression or `all-linear` is checked tensor by tensor).
fn check_targets(targets: Option<&Value>) -> Result<(), String> {
    let Some(Value::Array(list)) = targets else {
        return Ok(());
    };
    for t in list {
        let Some(name) = t.as_str() else {
            return Err(format!("target_modules holds {t}, not a module name"));
        };
        let last = name.rsplit('.').next().unwrap_or(name);
        if Projection::from_module(last).is_none() {
            return Err(format!(
                "target module {name:?} is not supported: LoRA applies to {}",
                Projection::NAMES.join(", ")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scaling_follows_patterns_and_rslora() {
        let c = PeftConfig::parse(
            r#"{"peft_type":"LORA","r":8,"lora_alpha":16,"target_modules":["q_proj","v_proj"],
                "rank_pattern":{"model.layers.1.self_attn.q_proj":4,"v_proj":2},
                "alpha_pattern":{"layers.1.self_attn.q_proj":2}}"#,
        )
        .unwrap();
        assert_eq!(c.rank("model.layers.0.self_attn.q_proj"), 8);
        assert_eq!(c.scaling("model.layers.0.self_attn.q_proj"), 2.0);
        assert_eq!(c.rank("model.layers.1.self_attn.q_proj"), 4);
        assert_eq!(c.scaling("model.layers.1.self_attn.q_proj"), 0.5);
        assert_eq!(c.rank("model.layers.0.self_attn.v_proj"), 2);
        assert_eq!(c.scaling("model.layers.0.self_attn.v_proj"), 8.0);
        // A key matches whole dotted components only.
        assert_eq!(c.rank("model.layers.0.self_attn.xv_proj"), 8);
        let rs = PeftConfig::parse(r#"{"r":16,"lora_alpha":8,"use_rslora":true}"#).unwrap();
        assert_eq!(rs.scaling("model.layers.0.mlp.down_proj"), 2.0);
    }

    #[test]
    fn unsupported_features_are_refused_with_the_reason() {
        let cases = [
            (r#"{"use_dora":true}"#, "DoRA"),
            (r#"{"bias":"all"}"#, "bias \"all\""),
            (r#"{"bias":"lora_only"}"#, "bias"),
            (r#"{"modules_to_save":["lm_head"]}"#, "modules_to_save"),
            (r#"{"target_modules":["q_proj","lm_head"]}"#, "\"lm_head\""),
            (r#"{"target_modules":["embed_tokens"]}"#, "embed_tokens"),
            (r#"{"peft_type":"IA3"}"#, "IA3"),
            (r#"{"r":0}"#, "r must be"),
            (r#"{"r":"8"}"#, "r must be"),
            (r#"{"lora_alpha":-1}"#, "lora_alpha"),
            (r#"{"rank_pattern":{"(":4}}"#, "rank_pattern"),
            (r#"{"rank_pattern":{"q_proj":2.5}}"#, "not an integer"),
            (r#"[1]"#, "not a JSON object"),
            (r#"{"r":"#, "adapter_config.json"),
        ];
        for (text, needle) in cases {
            let e = PeftConfig::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
        // What a fresh PEFT LoraConfig writes is accepted.
        PeftConfig::parse(
            r#"{"peft_type":"LORA","bias":"none","use_dora":false,"modules_to_save":null,
                "target_modules":["model.layers.0.self_attn.q_proj","down_proj"],"lora_bias":false,
                "layer_replication":null,"fan_in_fan_out":false}"#,
        )
        .unwrap();
        PeftConfig::parse(r#"{"target_modules":"all-linear"}"#).unwrap();
    }
}
