//! One application: its deployments (the router in the proxy and one
//! engine deployment per model), its router, its route, and its status
//! summed up from its deployments'.

use super::deployment::DeploymentState;
use super::status::{ApplicationDetails, ApplicationStatus, DeploymentStatus};
use super::Shared;
use crate::config::build::{AppPlan, DeploymentPlan};
use llm_serve_router as router;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

pub struct ApplicationState {
    pub name: String,
    pub route_prefix: Option<String>,
    pub deployed_app_config: Value,
    pub last_deployed_time_s: f64,
    pub deployments: BTreeMap<String, DeploymentState>,
    /// Deployments taken out of the application, stopping.
    retiring: Vec<DeploymentState>,
    /// The OpenAI API of this application (the LLMRouter deployment).
    pub router: Arc<router::App>,
    pub status: ApplicationStatus,
    pub message: String,
    pub deleting: bool,
    recovering: bool,
}

impl ApplicationState {
    pub fn new(
        plan: AppPlan,
        config: Value,
        deployed_s: f64,
        shared: &Shared,
        recovering: bool,
    ) -> Self {
        tracing::info!("Building application '{}'.", plan.name);
        let router = router::App::new(shared.router_config.clone(), shared.metrics.clone());
        let mut app = ApplicationState {
            name: plan.name.clone(),
            route_prefix: plan.route_prefix.clone(),
            deployed_app_config: config,
            last_deployed_time_s: deployed_s,
            deployments: BTreeMap::new(),
            retiring: Vec::new(),
            router,
            status: ApplicationStatus::Deploying,
            message: String::new(),
            deleting: false,
            recovering,
        };
        for d in plan.deployments {
            let state = app.new_deployment(d, shared);
            app.deployments.insert(state.name.clone(), state);
        }
        tracing::info!("Built application '{}' successfully.", app.name);
        app
    }

    /// The router's side of an engine deployment, labelled with where it
    /// is served.
    fn router_deployment(
        &self,
        plan: &DeploymentPlan,
        shared: &Shared,
    ) -> Option<Arc<router::Deployment>> {
        let spec = plan.model()?;
        let d = router::Deployment::new(
            &spec.model_id,
            router::DeploymentLabels {
                application: self.name.clone(),
                deployment: plan.name().to_string(),
                route: self.route_prefix.clone().unwrap_or_default(),
                handle: "proxy".into(),
                actor_id: shared.proxy_actor_id.clone(),
            },
            shared.metrics.clone(),
        );
        self.router.models.insert(d.clone());
        Some(d)
    }

    fn new_deployment(&self, plan: DeploymentPlan, shared: &Shared) -> DeploymentState {
        let router_dep = self.router_deployment(&plan, shared);
        DeploymentState::new(&self.name, plan, router_dep, self.recovering)
    }

    /// Takes a new plan for the application: deployments are added,
    /// updated in place or rolled, and removed.
    pub fn update(&mut self, plan: AppPlan, config: Value, deployed_s: f64, shared: &Shared) {
        self.deleting = false;
        // A deploy that changes the application makes it DEPLOYING at
        // once, until every deployment has reached its new target.
        self.status = ApplicationStatus::Deploying;
        self.message.clear();
        self.deployed_app_config = config;
        self.last_deployed_time_s = deployed_s;
        let moved = self.route_prefix != plan.route_prefix;
        if moved {
            tracing::info!(
                "Application '{}' moves from route {:?} to {:?}.",
                self.name,
                self.route_prefix,
                plan.route_prefix
            );
            self.route_prefix = plan.route_prefix.clone();
        }
        let mut keep = BTreeMap::new();
        for d in plan.deployments {
            let name = d.name().to_string();
            match self.deployments.remove(&name) {
                Some(mut old) if same_model(&old.plan, &d) => {
                    if moved {
                        let relabelled = self.router_deployment(&d, shared);
                        old.set_router(relabelled);
                    }
                    old.update(d);
                    keep.insert(name, old);
                }
                other => {
                    if let Some(old) = other {
                        self.retire(old);
                    }
                    let state = self.new_deployment(d, shared);
                    keep.insert(name, state);
                }
            }
        }
        for (_, old) in std::mem::take(&mut self.deployments) {
            self.retire(old);
        }
        self.deployments = keep;
        // The retiring deployments' models may be served again by a new
        // deployment: make sure the router points at the live ones.
        for d in self.deployments.values() {
            if let Some(r) = &d.router {
                self.router.models.insert(r.clone());
            }
        }
    }

    fn retire(&mut self, mut d: DeploymentState) {
        tracing::info!(
            "Deleting deployment {} of application '{}'.",
            d.name,
            self.name
        );
        if let Some(r) = &d.router {
            if self
                .router
                .models
                .get(&r.model_id)
                .is_some_and(|cur| Arc::ptr_eq(&cur, r))
            {
                self.router.models.remove(&r.model_id);
            }
        }
        d.delete();
        self.retiring.push(d);
    }

    /// Stops everything; the application is gone once its replicas are.
    pub fn delete(&mut self) {
        tracing::info!("Deleting application '{}'.", self.name);
        self.deleting = true;
        for d in self.deployments.values_mut() {
            d.delete();
        }
    }

    pub fn is_gone(&self) -> bool {
        self.deleting
            && self.deployments.values().all(DeploymentState::is_gone)
            && self.retiring.is_empty()
    }

    /// The deployment (live or retiring) called `name` that holds
    /// `replica`.
    pub fn deployment_mut(&mut self, name: &str, replica: &str) -> Option<&mut DeploymentState> {
        let holds =
            |d: &DeploymentState| d.name == name && d.replicas.iter().any(|r| r.id == replica);
        if self.deployments.get(name).is_some_and(holds) {
            return self.deployments.get_mut(name);
        }
        self.retiring.iter_mut().find(|d| holds(d))
    }

    pub fn reconcile(&mut self, shared: &mut Shared) {
        for d in self.deployments.values_mut() {
            d.reconcile(shared);
        }
        for d in self.retiring.iter_mut() {
            d.reconcile(shared);
        }
        self.retiring.retain(|d| !d.is_gone());
        let before = self.status;
        let (status, message) = if self.deleting {
            (ApplicationStatus::Deleting, String::new())
        } else if let Some(d) = self.deployments.values().find(|d| d.blocked()) {
            (
                ApplicationStatus::DeployFailed,
                format!(
                    "Deploying application '{}' failed: deployment '{}': {}",
                    self.name, d.name, d.message
                ),
            )
        } else if self
            .deployments
            .values()
            .all(|d| d.status == DeploymentStatus::Healthy)
        {
            self.recovering = false;
            (ApplicationStatus::Running, String::new())
        } else {
            let problems: Vec<String> = self
                .deployments
                .values()
                .filter(|d| d.status == DeploymentStatus::Unhealthy && !d.message.is_empty())
                .map(|d| format!("Deployment '{}' is UNHEALTHY: {}", d.name, d.message))
                .collect();
            (ApplicationStatus::Deploying, problems.join(" "))
        };
        if status != before {
            match status {
                ApplicationStatus::Running => {
                    tracing::info!("Application '{}' is RUNNING.", self.name)
                }
                ApplicationStatus::DeployFailed => tracing::error!("{message}"),
                _ => tracing::info!("Application '{}' is {status}.", self.name),
            }
        }
        self.status = status;
        self.message = message;
    }

    pub fn details(&self, shared: &Shared) -> ApplicationDetails {
        ApplicationDetails {
            name: self.name.clone(),
            route_prefix: self.route_prefix.clone(),
            docs_path: None,
            status: self.status,
            message: self.message.clone(),
            last_deployed_time_s: self.last_deployed_time_s,
            deployed_app_config: Some(self.deployed_app_config.clone()),
            deployments: self
                .deployments
                .iter()
                .filter(|(_, d)| !d.is_gone())
                .map(|(name, d)| (name.clone(), d.details(shared)))
                .collect(),
        }
    }

    /// Every replica process, for the checkpoint.
    pub fn replica_pids(&self) -> Vec<(String, u32)> {
        self.deployments
            .values()
            .chain(self.retiring.iter())
            .flat_map(|d| d.replicas.iter())
            .filter_map(|r| r.pid.map(|p| (r.id.clone(), p)))
            .collect()
    }
}

/// Whether a new plan of a deployment serves the same model id (else the
/// router's deployment is replaced).
fn same_model(old: &DeploymentPlan, new: &DeploymentPlan) -> bool {
    old.model().map(|m| &m.model_id) == new.model().map(|m| &m.model_id)
}
