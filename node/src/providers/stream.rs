//! Turns an upstream SSE body into a [`ChunkStream`], one event at a time: a
//! provider-specific mapper converts each event as it arrives, so nothing is
//! buffered beyond the event being decoded.

use std::collections::VecDeque;

use futures_util::StreamExt;

use super::{Chunk, ChunkStream};
use crate::error::{Error, Result};
use crate::sse::{SseDecoder, SseEvent};
use crate::upstream::BodyStream;

/// What a mapper makes of one event.
pub enum Mapped {
    Chunks(Vec<Chunk>),
    /// The provider said the stream is over (`[DONE]`, `message_stop`); these are
    /// the last chunks.
    End(Vec<Chunk>),
}

struct State<F> {
    body: BodyStream,
    decoder: SseDecoder,
    pending: VecDeque<Chunk>,
    map: F,
    deployment: String,
    finished: bool,
}

pub fn sse_chunks<F>(body: BodyStream, deployment: String, map: F) -> ChunkStream
where
    F: FnMut(SseEvent) -> Result<Mapped> + Send + 'static,
{
    let state = State {
        body,
        decoder: SseDecoder::default(),
        pending: VecDeque::new(),
        map,
        deployment,
        finished: false,
    };
    Box::pin(futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(chunk) = s.pending.pop_front() {
                return Some((Ok(chunk), s));
            }
            if s.finished {
                return None;
            }
            let events = match s.body.next().await {
                Some(Ok(bytes)) => s.decoder.push(&bytes),
                Some(Err(reason)) => {
                    s.finished = true;
                    return Some((
                        Err(Error::UpstreamUnreachable {
                            deployment: s.deployment.clone(),
                            reason,
                        }),
                        s,
                    ));
                }
                None => {
                    s.finished = true;
                    s.decoder.finish().map(|e| e.into_iter().collect())
                }
            };
            let events = match events {
                Ok(events) => events,
                Err(reason) => {
                    s.finished = true;
                    return Some((Err(Error::protocol(&s.deployment, reason)), s));
                }
            };
            for event in events {
                match (s.map)(event) {
                    Ok(Mapped::Chunks(chunks)) => s.pending.extend(chunks),
                    Ok(Mapped::End(chunks)) => {
                        s.pending.extend(chunks);
                        s.finished = true;
                        break;
                    }
                    Err(e) => {
                        s.finished = true;
                        s.pending.clear();
                        return Some((Err(e), s));
                    }
                }
            }
        }
    }))
}
