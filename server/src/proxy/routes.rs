//! The proxy's route table: application route prefixes to their routers,
//! matched longest prefix first (`/a/b` before `/a` before `/`), a prefix
//! matching only at a path-segment boundary (`/a` takes `/a` and `/a/x`,
//! not `/ab`).

use llm_serve_router as router;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

#[derive(Clone)]
pub struct Route {
    pub app: String,
    pub prefix: String,
    pub router: Arc<router::App>,
    /// The router's HTTP service.
    pub service: axum::Router,
}

#[derive(Default)]
pub struct Routes {
    table: RwLock<Vec<Route>>,
}

impl Routes {
    /// Serves application `app` at `prefix` through `router` (replacing
    /// its earlier route).
    pub fn set(&self, app: &str, prefix: &str, router: Arc<router::App>) {
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        if t.iter()
            .any(|r| r.app == app && r.prefix == prefix && Arc::ptr_eq(&r.router, &router))
        {
            return;
        }
        t.retain(|r| r.app != app);
        t.push(Route {
            app: app.to_string(),
            prefix: prefix.to_string(),
            service: llm_serve_router::router(router.clone()),
            router,
        });
        t.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    }

    pub fn remove(&self, app: &str) {
        self.table
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|r| r.app != app);
    }

    /// The route serving `path` and the path below its prefix.
    pub fn lookup(&self, path: &str) -> Option<(Route, String)> {
        let t = self.table.read().unwrap_or_else(|p| p.into_inner());
        t.iter().find_map(|r| {
            let rest = strip(path, &r.prefix)?;
            Some((r.clone(), rest))
        })
    }

    /// `/-/routes`: prefix → application.
    pub fn table(&self) -> BTreeMap<String, String> {
        self.table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|r| (r.prefix.clone(), r.app.clone()))
            .collect()
    }

    /// Every model deployment of every routed application.
    pub fn deployments(&self) -> Vec<Arc<router::Deployment>> {
        self.table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flat_map(|r| r.router.models.all())
            .collect()
    }
}

/// `path` below `prefix`, when the prefix matches at a segment boundary.
fn strip(path: &str, prefix: &str) -> Option<String> {
    if prefix == "/" {
        return Some(path.to_string());
    }
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() {
        Some("/".into())
    } else if rest.starts_with('/') {
        Some(rest.to_string())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> Arc<router::App> {
        let metrics = Arc::new(router::Metrics::new().unwrap_or_else(|e| panic!("{e}")));
        router::App::new(router::RouterConfig::default(), metrics)
    }

    #[test]
    fn longest_prefix_at_segment_boundaries() {
        let routes = Routes::default();
        routes.set("root", "/", app());
        routes.set("a", "/a", app());
        routes.set("ab", "/a/b", app());
        let hit = |p: &str| routes.lookup(p).map(|(r, rest)| (r.app, rest));
        assert_eq!(
            hit("/a/b/v1/models"),
            Some(("ab".into(), "/v1/models".into()))
        );
        assert_eq!(hit("/a/v1/models"), Some(("a".into(), "/v1/models".into())));
        assert_eq!(hit("/a"), Some(("a".into(), "/".into())));
        assert_eq!(hit("/ab"), Some(("root".into(), "/ab".into())));
        assert_eq!(
            hit("/v1/models"),
            Some(("root".into(), "/v1/models".into()))
        );
        routes.remove("root");
        assert_eq!(hit("/x"), None);
        assert_eq!(
            routes.table().into_iter().collect::<Vec<_>>(),
            [
                ("/a".to_string(), "a".to_string()),
                ("/a/b".into(), "ab".into())
            ]
        );
    }
}
