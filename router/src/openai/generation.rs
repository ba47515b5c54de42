//! Starting a request on a replica and reading its events back: replica
//! choice (with a retry on another replica when one cannot take it), the
//! first `Started` event before anything is answered, then the rest as a
//! stream whose drop cancels the request on the replica.

use crate::error::ApiError;
use crate::replicas::{Deployment, InFlight};
use futures::stream::BoxStream;
use futures::StreamExt;
use llm_serve_proto as pb;
use pb::generate_event::Event;
use tonic::Code;

/// A request running on a replica.
pub struct Generation {
    pub prompt_tokens: u32,
    pub prompt_text: String,
    /// Events after `Started`; ends after `Finished` or an error.
    pub events: BoxStream<'static, Result<Event, ApiError>>,
}

/// Statuses after which another replica may well succeed, before the
/// request has started there: the replica refused it (draining,
/// loading) or its connection broke (it died; the channel has not
/// noticed yet).
fn retryable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Cancelled | Code::Unknown
    )
}

/// The client's error for a replica failure; a broken connection means
/// the replica died under the request.
fn replica_error(s: &tonic::Status) -> ApiError {
    match s.code() {
        Code::Cancelled | Code::Unknown => ApiError::unavailable(format!(
            "The replica serving this request failed before it finished ({}); retry the request.",
            s.message()
        )),
        _ => ApiError::from_status(s),
    }
}

/// Runs `request` on a replica of `deployment`.
pub async fn start(
    deployment: &Deployment,
    request: pb::GenerateRequest,
) -> Result<Generation, ApiError> {
    let mut tried = Vec::new();
    let adapter = (!request.adapter_id.is_empty()).then_some(request.adapter_id.as_str());
    loop {
        let mut inflight = deployment.pick(&tried, adapter).await?;
        let mut client = inflight.replica.client();
        let first = match client.generate(request.clone()).await {
            Ok(r) => {
                let mut stream = r.into_inner();
                stream.message().await.map(|m| (stream, m))
            }
            Err(s) => Err(s),
        };
        let (stream, started) = match first {
            Ok((
                stream,
                Some(pb::GenerateEvent {
                    event: Some(Event::Started(s)),
                }),
            )) => (stream, s),
            Ok(_) => {
                inflight.mark_failed();
                return Err(ApiError::internal(
                    "the replica's stream did not start with `started`",
                ));
            }
            Err(s) if retryable(&s) => {
                tracing::warn!(
                    replica = %inflight.replica.id,
                    request_id = %request.request_id,
                    "replica cannot take the request ({}); trying another",
                    s.message()
                );
                inflight.mark_failed();
                // No new requests for it until a health check passes.
                inflight.replica.set_suspect(true);
                tried.push(inflight.replica.id.clone());
                continue;
            }
            Err(s) => {
                inflight.mark_failed();
                if let Some(a) = adapter {
                    // Its adapter did not load there (unknown or broken).
                    inflight.replica.note_adapter(a, false);
                }
                return Err(replica_error(&s));
            }
        };
        if adapter.is_some() {
            inflight.replica.set_adapters(started.adapters);
        }
        return Ok(Generation {
            prompt_tokens: started.prompt_tokens,
            prompt_text: started.prompt_text,
            events: events(stream, inflight),
        });
    }
}

fn events(
    stream: tonic::Streaming<pb::GenerateEvent>,
    inflight: InFlight,
) -> BoxStream<'static, Result<Event, ApiError>> {
    futures::stream::unfold(Some((stream, inflight)), |state| async move {
        let (mut stream, mut inflight) = state?;
        let error = match stream.message().await {
            Ok(Some(pb::GenerateEvent { event: Some(e) })) => {
                if matches!(e, Event::Error(_)) {
                    inflight.mark_failed();
                }
                let last = matches!(e, Event::Finished(_) | Event::Error(_));
                return Some((Ok(e), (!last).then_some((stream, inflight))));
            }
            Ok(Some(pb::GenerateEvent { event: None })) => {
                ApiError::internal("the replica sent an empty event")
            }
            Ok(None) => {
                ApiError::internal("the replica's stream ended before the request finished")
            }
            Err(s) => replica_error(&s),
        };
        inflight.mark_failed();
        Some((Err(error), None))
    })
    .boxed()
}

/// Several generations as one stream, with each event's sample index
/// offset by `n` per generation (choice `i * n + index`, as vLLM numbers
/// the choices of a multi-prompt request). The usage of all of them comes
/// as one `Finished` at the end.
pub fn merged(gens: Vec<Generation>, n: u32) -> BoxStream<'static, Result<Event, ApiError>> {
    let count = gens.len();
    let streams = gens.into_iter().enumerate().map(move |(i, g)| {
        let offset = i as u32 * n;
        g.events.map(move |e| e.map(|e| offset_event(e, offset)))
    });
    let mut remaining = count;
    let mut total = pb::Finished::default();
    futures::stream::select_all(streams)
        .filter_map(move |e| {
            let out = match e {
                Ok(Event::Finished(f)) => {
                    total.prompt_tokens += f.prompt_tokens;
                    total.completion_tokens += f.completion_tokens;
                    total.cached_prompt_tokens += f.cached_prompt_tokens;
                    remaining -= 1;
                    (remaining == 0).then_some(Ok(Event::Finished(total)))
                }
                other => Some(other),
            };
            futures::future::ready(out)
        })
        .boxed()
}

fn offset_event(e: Event, offset: u32) -> Event {
    match e {
        Event::Token(mut t) => {
            t.index += offset;
            Event::Token(t)
        }
        Event::SampleFinished(mut s) => {
            s.index += offset;
            Event::SampleFinished(s)
        }
        other => other,
    }
}
