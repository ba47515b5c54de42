//! Server-sent events as OpenAI streams them: `data: {json}\n\n` per
//! chunk, an error after the first byte as one `data: {"error": ...}`
//! event, and `data: [DONE]\n\n` at the end.

use crate::error::ApiError;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::BoxStream;
use futures::StreamExt;
use llm_serve_proto::generate_event::Event as GenerationEvent;
use serde::Serialize;
use std::convert::Infallible;

/// Chunks to send; the stream stops after an error.
pub type SseEvents<T> = BoxStream<'static, Result<T, ApiError>>;

/// A generation's events as chunks, `on_event` making the chunks of each
/// event; an error event becomes the stream's error.
pub fn chunks<T: Send + 'static>(
    events: BoxStream<'static, Result<GenerationEvent, ApiError>>,
    mut on_event: impl FnMut(GenerationEvent) -> Vec<T> + Send + 'static,
) -> SseEvents<T> {
    events
        .flat_map(move |e| {
            let out: Vec<Result<T, ApiError>> = match e {
                Ok(GenerationEvent::Error(m)) => {
                    vec![Err(ApiError::internal(format!("generation failed: {m}")))]
                }
                Ok(e) => on_event(e).into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(out)
        })
        .boxed()
}

pub fn sse_response<T: Serialize + Send + 'static>(chunks: SseEvents<T>) -> Response {
    let mut failed = false;
    let body = chunks
        .map(|c| c.and_then(|v| serde_json::to_string(&v).map_err(ApiError::internal)))
        .take_while(move |c| {
            let go = !failed;
            failed |= c.is_err();
            futures::future::ready(go)
        })
        .map(|c| {
            let data = match c {
                Ok(text) => text,
                Err(e) => e.body_text(),
            };
            Ok::<_, Infallible>(Event::default().data(data))
        })
        .chain(futures::stream::once(async {
            Ok(Event::default().data("[DONE]"))
        }));
    Sse::new(body).into_response()
}
