//! A model's LoRA adapters as the router sees them: where each comes from
//! (the model's `lora_modules`, an adapter loaded at run time through
//! `/v1/load_lora_adapter`, or a subdirectory of its
//! `dynamic_lora_loading_path`) and which are listed in `/v1/models`.
//! Requests name one as `model: "base:adapter"`, split at the first colon
//! (adapter ids may hold colons), or by a registered adapter's own name as
//! vLLM's clients do.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::RwLock;

/// How a model serves adapters (from its deployment's `lora_config`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoraRoutes {
    /// `dynamic_lora_loading_path`.
    pub loading_path: Option<String>,
    /// `lora_modules`: name to path or URI.
    pub modules: BTreeMap<String, String>,
}

/// The adapters of one model.
#[derive(Debug, Default)]
pub struct Adapters {
    routes: RwLock<Option<LoraRoutes>>,
    /// Loaded at run time: name to path or URI.
    runtime: RwLock<BTreeMap<String, String>>,
}

/// An adapter in `/v1/models`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    /// Its path or URI.
    pub root: String,
}

impl Adapters {
    /// Sets how the model serves adapters (`None`: it serves none).
    pub fn set_routes(&self, routes: Option<LoraRoutes>) {
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = routes;
    }

    fn routes(&self) -> Option<LoraRoutes> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn enabled(&self) -> bool {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// The source the router tells a replica for `name`: a run-time
    /// adapter's path; `None` for the others (the replica knows its
    /// `lora_modules` and loading path).
    pub fn runtime_source(&self, name: &str) -> Option<String> {
        self.runtime
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Whether `name` is known by name (a `lora_modules` entry or a
    /// run-time adapter), so a bare `model: "<name>"` means it.
    pub fn registered(&self, name: &str) -> bool {
        self.runtime_source(name).is_some()
            || self.routes().is_some_and(|r| r.modules.contains_key(name))
    }

    /// Records an adapter loaded at run time; false if one of that name
    /// was already there (it is replaced).
    pub fn register(&self, name: &str, source: &str) -> bool {
        self.runtime
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), source.to_string())
            .is_none()
    }

    /// Forgets a run-time adapter; false if there was none of that name.
    pub fn unregister(&self, name: &str) -> bool {
        self.runtime
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .is_some()
    }

    /// The adapters `/v1/models` lists: `lora_modules`, run-time ones, and
    /// every subdirectory of a local loading path that holds an
    /// `adapter_config.json` (as Ray lists its bucket's folders).
    pub fn listed(&self) -> Vec<Listed> {
        let Some(routes) = self.routes() else {
            return Vec::new();
        };
        let mut out: BTreeMap<String, String> = routes.modules.clone();
        out.extend(
            self.runtime
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(n, s)| (n.clone(), s.clone())),
        );
        if let Some(base) = &routes.loading_path {
            for name in local_adapter_dirs(base) {
                let root = format!("{base}/{name}");
                out.entry(name).or_insert(root);
            }
        }
        out.into_iter()
            .map(|(name, root)| Listed { name, root })
            .collect()
    }
}

/// Subdirectories of a local loading path holding an adapter config;
/// nothing for a remote one or an unreadable directory.
fn local_adapter_dirs(base: &str) -> Vec<String> {
    let path = base.strip_prefix("file://").unwrap_or(base);
    if path.contains("://") {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(Path::new(path)) else {
        tracing::warn!("cannot list LoRA adapters in {base}");
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join("adapter_config.json").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// `base:adapter` split at the first colon.
pub fn split_model(model: &str) -> Option<(&str, &str)> {
    model
        .split_once(':')
        .filter(|(b, a)| !b.is_empty() && !a.is_empty())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_split_at_the_first_colon() {
        assert_eq!(split_model("base:a"), Some(("base", "a")));
        assert_eq!(
            split_model("meta-llama/Llama-3:my_suffix:aBc1"),
            Some(("meta-llama/Llama-3", "my_suffix:aBc1"))
        );
        assert_eq!(split_model("base"), None);
        assert_eq!(split_model(":a"), None);
        assert_eq!(split_model("b:"), None);
    }

    #[test]
    fn listing_covers_modules_runtime_and_the_loading_path() {
        let dir = tempfile::tempdir().unwrap();
        for (name, config) in [("a", true), ("b", true), ("not-an-adapter", false)] {
            let d = dir.path().join(name);
            std::fs::create_dir(&d).unwrap();
            if config {
                std::fs::write(d.join("adapter_config.json"), "{}").unwrap();
            }
        }
        let base = dir.path().to_str().unwrap().to_string();
        let a = Adapters::default();
        assert!(a.listed().is_empty());
        a.set_routes(Some(LoraRoutes {
            loading_path: Some(base.clone()),
            modules: [("m".to_string(), "/m".to_string())].into(),
        }));
        assert!(a.register("r", "/r"));
        assert!(!a.register("r", "/r2"));
        let names: Vec<String> = a.listed().into_iter().map(|l| l.name).collect();
        assert_eq!(names, ["a", "b", "m", "r"]);
        assert_eq!(a.listed()[0].root, format!("{base}/a"));
        assert!(a.registered("m") && a.registered("r") && !a.registered("a"));
        assert_eq!(a.runtime_source("r").as_deref(), Some("/r2"));
        assert!(a.unregister("r"));
        assert!(!a.unregister("r"));
    }
}
