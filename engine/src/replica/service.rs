//! The gRPC service over one engine, and the replica's lifecycle state
//! (loading, ready, draining, failed).

use super::convert::{constraint, finish, logprobs, sampling_params, status};
use super::defaults::GenerationDefaults;
use super::prompt::{prompt_ids, PromptInput};
use crate::adapters::{AdapterLease, AdapterManager, LoraSettings};
use crate::chat_template::ChatTemplate;
use crate::engine::{Engine, EngineConfig, EngineEvent, EngineRequest, RequestStream};
use crate::error::{invalid, EngineError, Result};
use crate::output::FinishReason;
use crate::tokenizer::Tokenizer;
use crate::ToolCallFormat;
use futures::{Stream, StreamExt};
use llm_serve_models::{Model, ModelFiles};
use llm_serve_proto as pb;
use pb::generate_event::Event;
use pb::health_response::State as HealthState;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

/// A loaded model and what requests need around it.
pub struct LoadedModel {
    pub engine: Engine,
    pub template: Option<ChatTemplate>,
    pub defaults: GenerationDefaults,
    /// The format `tool_choice: "auto"` parses (engine_kwargs, else the
    /// template's); `None` when the template renders no tools.
    pub tool_call_parser: Option<ToolCallFormat>,
    /// The LoRA adapters, when the model serves them.
    pub adapters: Option<AdapterManager>,
}

impl LoadedModel {
    /// Resolves `source`, loads weights and tokenizer, starts the engine;
    /// with `lora`, adapters are served as its settings say.
    pub fn load(source: &str, cfg: EngineConfig, lora: Option<LoraSettings>) -> Result<Self> {
        let files = ModelFiles::resolve(source)?;
        let model = Arc::new(Model::load(&files, cfg.max_model_len)?);
        let tokenizer = Arc::new(Tokenizer::load(&files, model.gguf_metadata())?);
        let template = ChatTemplate::of_tokenizer(&tokenizer)?;
        let defaults = match &files.generation_config {
            Some(p) => GenerationDefaults::from_file(p)?,
            None => GenerationDefaults::default(),
        };
        let tool_call_parser = cfg.tool_call_parser.or_else(|| {
            template
                .as_ref()
                .and_then(|t| ToolCallFormat::of_template(t.source()))
        });
        let adapters = lora.map(|settings| AdapterManager::new(model.clone(), settings));
        let engine = Engine::start(model, tokenizer, cfg)?;
        Ok(LoadedModel {
            engine,
            template,
            defaults,
            tool_call_parser,
            adapters,
        })
    }

    /// Loads the adapters named in `lora_modules` (vLLM loads them at
    /// start-up, and a bad one stops the server).
    pub async fn preload_adapters(&self) -> Result<()> {
        let Some(m) = &self.adapters else {
            return Ok(());
        };
        let names: Vec<String> = m.settings().modules.keys().cloned().collect();
        for name in names.iter().take(m.settings().max_loaded) {
            m.load(name, None, false)
                .await
                .map_err(|e| EngineError::AdapterLoad {
                    name: name.clone(),
                    message: format!("LoRA module '{name}': {e}"),
                })?;
        }
        Ok(())
    }

    /// The adapter manager, or the error for an adapter request to a model
    /// that serves none.
    fn adapters(&self, name: &str) -> Result<&AdapterManager> {
        self.adapters.as_ref().ok_or_else(|| EngineError::AdapterNotFound {
            name: name.to_string(),
            message: format!(
                "The LoRA adapter '{name}' does not exist: this model serves no adapters (its deployment has no lora_config)."
            ),
        })
    }
}

enum Phase {
    Loading,
    Ready(Arc<LoadedModel>),
    Failed(String),
}

/// A replica's state, shared by the service and the process around it.
pub struct ReplicaState {
    model_source: String,
    phase: RwLock<Phase>,
    draining: AtomicBool,
    ongoing: Arc<AtomicU32>,
    user_config: Mutex<Option<serde_json::Value>>,
    access_log: AtomicBool,
}

impl ReplicaState {
    pub fn new(model_source: &str) -> Arc<Self> {
        Arc::new(ReplicaState {
            model_source: model_source.to_string(),
            phase: RwLock::new(Phase::Loading),
            draining: AtomicBool::new(false),
            ongoing: Arc::new(AtomicU32::new(0)),
            user_config: Mutex::new(None),
            access_log: AtomicBool::new(true),
        })
    }

    /// Whether each request writes an access-log line when it ends.
    pub fn set_access_log(&self, on: bool) {
        self.access_log.store(on, Ordering::Relaxed);
    }

    /// Records the outcome of loading the model.
    pub fn set_loaded(&self, loaded: Result<LoadedModel>) {
        let phase = match loaded {
            Ok(m) => Phase::Ready(Arc::new(m)),
            Err(e) => Phase::Failed(e.to_string()),
        };
        *self.phase.write().unwrap_or_else(|p| p.into_inner()) = phase;
    }

    /// Stops taking new requests.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Requests accepted and not yet finished.
    pub fn ongoing(&self) -> u32 {
        self.ongoing.load(Ordering::SeqCst)
    }

    /// The load error, once loading has failed.
    pub fn failure(&self) -> Option<String> {
        match &*self.phase.read().unwrap_or_else(|p| p.into_inner()) {
            Phase::Failed(m) => Some(m.clone()),
            _ => None,
        }
    }

    /// The model, if loaded.
    pub fn loaded(&self) -> Option<Arc<LoadedModel>> {
        match &*self.phase.read().unwrap_or_else(|p| p.into_inner()) {
            Phase::Ready(m) => Some(m.clone()),
            _ => None,
        }
    }

    fn ready(&self) -> std::result::Result<Arc<LoadedModel>, Status> {
        match &*self.phase.read().unwrap_or_else(|p| p.into_inner()) {
            Phase::Loading => Err(Status::unavailable("the model is still loading")),
            Phase::Failed(m) => Err(Status::unavailable(format!(
                "the model failed to load: {m}"
            ))),
            Phase::Ready(m) => Ok(m.clone()),
        }
    }

    fn accepting(&self) -> std::result::Result<Arc<LoadedModel>, Status> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(Status::unavailable("the replica is draining"));
        }
        self.ready()
    }
}

/// Counts a request as ongoing for as long as it lives.
struct OngoingGuard(Arc<AtomicU32>);

impl OngoingGuard {
    fn new(counter: &Arc<AtomicU32>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        OngoingGuard(counter.clone())
    }
}

impl Drop for OngoingGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The replica protocol over one engine.
#[derive(Clone)]
pub struct ReplicaService {
    state: Arc<ReplicaState>,
}

impl ReplicaService {
    pub fn new(state: Arc<ReplicaState>) -> Self {
        ReplicaService { state }
    }

    /// The gRPC service; with a `secret`, calls that do not present it
    /// are refused (UNAUTHENTICATED).
    pub fn into_server(
        self,
        secret: Option<String>,
    ) -> InterceptedService<pb::replica_server::ReplicaServer<Self>, pb::RequireSecret> {
        let server = pb::replica_server::ReplicaServer::new(self)
            .max_decoding_message_size(pb::MAX_REQUEST_MESSAGE_BYTES)
            .max_encoding_message_size(usize::MAX);
        InterceptedService::new(server, pb::RequireSecret::new(secret))
    }
}

type EventStream =
    Pin<Box<dyn Stream<Item = std::result::Result<pb::GenerateEvent, Status>> + Send>>;

/// What the event stream carries between engine events.
struct Pending {
    events: RequestStream,
    tokenizer: Arc<Tokenizer>,
    _ongoing: OngoingGuard,
    /// Keeps the request's adapter loaded until the stream ends.
    _adapter: Option<AdapterLease>,
    access: AccessLine,
}

/// The replica's access-log line of one request, written when its stream
/// ends (`GENERATE OK 812.3ms`, as Ray's replicas log `__CALL__ OK`).
struct AccessLine {
    enabled: bool,
    request_id: String,
    started: std::time::Instant,
    /// `OK` or `ERROR` once the request ended; a stream dropped before
    /// that was cancelled.
    outcome: Option<&'static str>,
}

impl Drop for AccessLine {
    fn drop(&mut self) {
        if self.enabled {
            tracing::info!(
                request_id = %self.request_id,
                "GENERATE {} {:.1}ms",
                self.outcome.unwrap_or("CANCELLED"),
                self.started.elapsed().as_secs_f64() * 1e3
            );
        }
    }
}

/// Serve's multiplex counters and vLLM's adapter activity, as reported.
fn multiplex(m: &AdapterManager, engine: &Engine) -> pb::Multiplex {
    let s = m.stats();
    let activity = engine.adapter_activity();
    let histogram = |name: &str, h: &crate::engine::Histogram| pb::Histogram {
        name: name.to_string(),
        help: String::new(),
        bounds: h.bounds.clone(),
        counts: h.counts.clone(),
        sum: h.sum,
    };
    pb::Multiplex {
        loading_adapters: s.loading,
        loads: s.loads,
        unloads: s.unloads,
        requests: s.requests,
        load_latency_ms: Some(histogram("load_latency_ms", &s.load_latency_ms)),
        unload_latency_ms: Some(histogram("unload_latency_ms", &s.unload_latency_ms)),
        max_adapters: u32::try_from(m.settings().max_loaded).unwrap_or(u32::MAX),
        running_adapters: activity.running,
        waiting_adapters: activity.waiting,
    }
}

fn event(e: Event) -> pb::GenerateEvent {
    pb::GenerateEvent { event: Some(e) }
}

/// One engine event as a protocol event; `true` when it is the last.
fn convert(e: EngineEvent, tokenizer: &Tokenizer) -> (pb::GenerateEvent, bool) {
    match e {
        EngineEvent::Token(d) => {
            let (logprob, top_logprobs) = match &d.logprobs {
                Some(s) => logprobs(tokenizer, s),
                None => (None, Vec::new()),
            };
            let finish = d.finish.as_ref().map(finish);
            (
                event(Event::Token(pb::TokenEvent {
                    index: d.index as u32,
                    token_id: d.token,
                    text: d.text,
                    logprob,
                    top_logprobs,
                    finish,
                })),
                false,
            )
        }
        EngineEvent::SampleFinished {
            index,
            reason,
            text,
        } => (
            event(Event::SampleFinished(pb::SampleFinished {
                index: index as u32,
                finish: Some(finish(&reason)),
                text,
            })),
            false,
        ),
        EngineEvent::Finished { usage, .. } => (
            event(Event::Finished(pb::Finished {
                prompt_tokens: usage.prompt_tokens as u32,
                completion_tokens: usage.completion_tokens as u32,
                cached_prompt_tokens: usage.cached_prompt_tokens as u32,
            })),
            true,
        ),
        EngineEvent::Error(m) => (event(Event::Error(m)), true),
    }
}

#[tonic::async_trait]
impl pb::replica_server::Replica for ReplicaService {
    type GenerateStream = EventStream;

    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> std::result::Result<Response<EventStream>, Status> {
        // Counted before the draining check, so a drain that finds no
        // request ongoing has refused this one.
        let ongoing = OngoingGuard::new(&self.state.ongoing);
        let loaded = self.state.accepting()?;
        let r = request.into_inner();
        let access = AccessLine {
            enabled: self.state.access_log.load(Ordering::Relaxed),
            request_id: r.request_id.clone(),
            started: std::time::Instant::now(),
            outcome: None,
        };
        let tokenizer = loaded.engine.tokenizer().clone();
        let input = PromptInput::of_generate(r.input.as_ref()).map_err(status)?;
        let ids = prompt_ids(&input, &tokenizer, loaded.template.as_ref()).map_err(status)?;
        let params = sampling_params(&r.sampling.unwrap_or_default(), &loaded.defaults);
        let prompt_text = if r.echo_prompt {
            tokenizer.decode(&ids, false).map_err(status)?
        } else {
            String::new()
        };
        let prompt_tokens = ids.len() as u32;
        let grammar = match r
            .constraint
            .as_ref()
            .map(constraint)
            .transpose()
            .map_err(status)?
        {
            None => None,
            // Compiled off the async workers (bounded by llguidance's fuel).
            Some(c) => {
                let model = loaded.clone();
                let compiled =
                    tokio::task::spawn_blocking(move || model.engine.grammars()?.compile(&c))
                        .await
                        .map_err(|e| Status::internal(format!("compiling the constraint: {e}")))?;
                Some(compiled.map_err(status)?)
            }
        };
        // The adapter is loaded (or waits for a place) before the call
        // answers: an unknown or broken one is this call's error.
        let (lease, adapters) = if r.adapter_id.is_empty() {
            (None, Vec::new())
        } else {
            let m = loaded.adapters(&r.adapter_id).map_err(status)?;
            let lease = m
                .acquire(&r.adapter_id, Some(&r.adapter_source))
                .await
                .map_err(status)?;
            (Some(lease), m.names())
        };
        let events = loaded
            .engine
            .submit(EngineRequest {
                prompt: ids,
                params,
                priority: r.priority,
                adapter: lease.as_ref().map(|l| l.adapter().clone()),
                grammar,
            })
            .map_err(status)?;
        tracing::debug!(request_id = %r.request_id, prompt_tokens, "request accepted");
        let started = event(Event::Started(pb::Started {
            prompt_tokens,
            prompt_text,
            adapters,
        }));
        let pending = Pending {
            events,
            tokenizer,
            _ongoing: ongoing,
            _adapter: lease,
            access,
        };
        // Dropping this stream (the client went away) drops the engine's
        // RequestStream, which aborts the request.
        let rest = futures::stream::unfold(Some(pending), |pending| async move {
            let mut p = pending?;
            let e = p.events.next().await?;
            let (e, last) = convert(e, &p.tokenizer);
            if last {
                p.access.outcome = Some(match &e.event {
                    Some(Event::Error(_)) => "ERROR",
                    _ => "OK",
                });
            }
            Some((Ok(e), (!last).then_some(p)))
        });
        Ok(Response::new(Box::pin(
            futures::stream::once(async move { Ok(started) }).chain(rest),
        )))
    }

    async fn tokenize(
        &self,
        request: Request<pb::TokenizeRequest>,
    ) -> std::result::Result<Response<pb::TokenizeResponse>, Status> {
        let loaded = self.state.ready()?;
        let r = request.into_inner();
        let tokenizer = loaded.engine.tokenizer();
        let input = PromptInput::of_tokenize(r.input.as_ref()).map_err(status)?;
        let ids = prompt_ids(&input, tokenizer, loaded.template.as_ref()).map_err(status)?;
        let token_strs = ids.iter().map(|&id| tokenizer.token_text(id)).collect();
        Ok(Response::new(pb::TokenizeResponse {
            ids,
            token_strs,
            max_model_len: loaded.engine.info().max_model_len as u32,
        }))
    }

    async fn detokenize(
        &self,
        request: Request<pb::DetokenizeRequest>,
    ) -> std::result::Result<Response<pb::DetokenizeResponse>, Status> {
        let loaded = self.state.ready()?;
        let ids = request.into_inner().ids;
        let vocab = loaded.engine.info().vocab_size;
        if let Some(&t) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(status(invalid(
                "tokens",
                format!("token id {t} is out of vocabulary (the vocabulary has {vocab} tokens)"),
            )));
        }
        let text = loaded
            .engine
            .tokenizer()
            .decode(&ids, false)
            .map_err(status)?;
        Ok(Response::new(pb::DetokenizeResponse { text }))
    }

    async fn health(
        &self,
        _request: Request<pb::HealthRequest>,
    ) -> std::result::Result<Response<pb::HealthResponse>, Status> {
        let (state, message) = match &*self.state.phase.read().unwrap_or_else(|p| p.into_inner()) {
            Phase::Loading => (HealthState::Loading, String::new()),
            Phase::Failed(m) => (HealthState::Failed, m.clone()),
            Phase::Ready(_) if self.state.draining.load(Ordering::SeqCst) => {
                (HealthState::Draining, String::new())
            }
            Phase::Ready(_) => (HealthState::Ready, String::new()),
        };
        Ok(Response::new(pb::HealthResponse {
            state: state as i32,
            message,
        }))
    }

    async fn stats(
        &self,
        _request: Request<pb::StatsRequest>,
    ) -> std::result::Result<Response<pb::StatsResponse>, Status> {
        let loaded = self.state.ready()?;
        let s = loaded.engine.stats();
        let h = loaded.engine.histograms();
        let histograms = h
            .named()
            .into_iter()
            .map(|(name, help, h)| pb::Histogram {
                name: name.to_string(),
                help: help.to_string(),
                bounds: h.bounds.clone(),
                counts: h.counts.clone(),
                sum: h.sum,
            })
            .collect();
        let request_success = [
            (FinishReason::Eos(0).as_openai(), s.finished_stop),
            (FinishReason::Length.as_openai(), s.finished_length),
            (FinishReason::Abort.as_openai(), s.finished_abort),
            ("error", s.finished_error),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(Response::new(pb::StatsResponse {
            ongoing_requests: self.state.ongoing(),
            num_requests_running: s.running as u32,
            num_requests_waiting: s.waiting as u32,
            kv_blocks_used: s.kv_blocks_used as u64,
            kv_blocks_total: s.kv_blocks_total as u64,
            kv_cache_usage: s.kv_cache_usage(),
            prefix_cache_queries: s.prefix_cache_queries,
            prefix_cache_hits: s.prefix_cache_hits,
            num_preemptions: s.preemptions,
            prompt_tokens: s.prompt_tokens,
            generation_tokens: s.generation_tokens,
            request_success,
            histograms,
            loaded_adapters: loaded
                .adapters
                .as_ref()
                .map(|m| m.stats().loaded)
                .unwrap_or_default(),
            multiplex: loaded
                .adapters
                .as_ref()
                .map(|m| multiplex(m, &loaded.engine)),
        }))
    }

    async fn reconfigure(
        &self,
        request: Request<pb::ReconfigureRequest>,
    ) -> std::result::Result<Response<pb::ReconfigureResponse>, Status> {
        let text = request.into_inner().user_config_json;
        let value = if text.is_empty() {
            None
        } else {
            Some(serde_json::from_str(&text).map_err(|e| {
                pb::invalid_argument("user_config", format!("user_config is not valid JSON: {e}"))
            })?)
        };
        *self
            .state
            .user_config
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = value;
        Ok(Response::new(pb::ReconfigureResponse {}))
    }

    async fn drain(
        &self,
        _request: Request<pb::DrainRequest>,
    ) -> std::result::Result<Response<pb::DrainResponse>, Status> {
        self.state.start_draining();
        Ok(Response::new(pb::DrainResponse {
            ongoing_requests: self.state.ongoing(),
        }))
    }

    async fn load_adapter(
        &self,
        request: Request<pb::LoadAdapterRequest>,
    ) -> std::result::Result<Response<pb::LoadAdapterResponse>, Status> {
        let loaded = self.state.ready()?;
        let r = request.into_inner();
        let m = loaded.adapters(&r.name).map_err(status)?;
        m.load(&r.name, Some(&r.source), r.replace)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::LoadAdapterResponse {
            adapters: m.names(),
        }))
    }

    async fn unload_adapter(
        &self,
        request: Request<pb::UnloadAdapterRequest>,
    ) -> std::result::Result<Response<pb::UnloadAdapterResponse>, Status> {
        let loaded = self.state.ready()?;
        let r = request.into_inner();
        let m = loaded.adapters(&r.name).map_err(status)?;
        let was_loaded = m.unload(&r.name);
        Ok(Response::new(pb::UnloadAdapterResponse {
            was_loaded,
            adapters: m.names(),
        }))
    }

    async fn info(
        &self,
        _request: Request<pb::InfoRequest>,
    ) -> std::result::Result<Response<pb::InfoResponse>, Status> {
        let loaded = self.state.ready()?;
        let i = loaded.engine.info();
        Ok(Response::new(pb::InfoResponse {
            max_model_len: i.max_model_len as u32,
            vocab_size: i.vocab_size as u32,
            num_kv_blocks: i.num_blocks as u32,
            block_size: i.block_size as u32,
            model_source: self.state.model_source.clone(),
            max_num_seqs: i.max_num_seqs as u32,
            tool_call_parser: loaded
                .tool_call_parser
                .map(|f| f.name().to_string())
                .unwrap_or_default(),
        }))
    }
}
