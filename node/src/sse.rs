//! Server-sent events: an incremental decoder for upstream streams, and the frame
//! encoder for ours. The decoder never waits for a whole stream; it yields each
//! event as soon as its blank-line terminator arrives.

use bytes::{Bytes, BytesMut};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if any (Anthropic names every event; OpenAI none).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Largest single event we buffer before declaring the stream broken.
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Default)]
pub struct SseDecoder {
    buf: BytesMut,
}

impl SseDecoder {
    /// Feeds bytes; returns every event completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some((end, sep)) = find_event_end(&self.buf) {
            let raw = self.buf.split_to(end + sep);
            if let Some(ev) = parse_event(&raw[..end])? {
                events.push(ev);
            }
        }
        if self.buf.len() > MAX_EVENT_BYTES {
            return Err("server-sent event larger than 16 MiB".into());
        }
        Ok(events)
    }

    /// Called at end of stream: a last event without its terminator still counts.
    pub fn finish(&mut self) -> Result<Option<SseEvent>, String> {
        let rest = std::mem::take(&mut self.buf);
        if rest.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(None);
        }
        parse_event(&rest)
    }
}

/// Position of the first blank line (`\n\n`, `\r\n\r\n` or `\r\r`) and its length.
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i + 1 < buf.len() {
        match (buf[i], buf[i + 1]) {
            (b'\n', b'\n') | (b'\r', b'\r') => return Some((i, 2)),
            (b'\r', b'\n') if buf.get(i + 2..i + 4) == Some(b"\r\n") => return Some((i, 4)),
            _ => i += 1,
        }
    }
    None
}

fn parse_event(raw: &[u8]) -> Result<Option<SseEvent>, String> {
    let text =
        std::str::from_utf8(raw).map_err(|_| "server-sent event is not UTF-8".to_string())?;
    let mut event = None;
    let mut data: Option<String> = None;
    for line in text.lines() {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => event = Some(value.to_owned()),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
    Ok(data.map(|data| SseEvent { event, data }))
}

/// `data: <json>\n\n`
pub fn data_frame(json: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(json.len() + 8);
    data_lines(&mut out, json);
    out.freeze()
}

/// `event: <name>\ndata: <json>\n\n` (Anthropic's framing).
pub fn named_frame(event: &str, json: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(json.len() + event.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\n");
    data_lines(&mut out, json);
    out.freeze()
}

/// The `data:` lines of one event, then its blank line. Data relayed from
/// an upstream may span lines (SSE joins them with `\n`); each goes out as
/// its own `data:` line so the client decodes the same data.
fn data_lines(out: &mut BytesMut, data: &[u8]) {
    for line in data.split(|&b| b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"\n");
}

pub const DONE_FRAME: &[u8] = b"data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads() {
        let mut d = SseDecoder::default();
        assert!(d.push(b"event: ping\nda").unwrap().is_empty());
        let evs = d
            .push(b"ta: {\"a\":1}\n\ndata: x\r\n\r\n: comment\n\n")
            .unwrap();
        assert_eq!(
            evs,
            vec![
                SseEvent {
                    event: Some("ping".into()),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: None,
                    data: "x".into()
                },
            ]
        );
        assert_eq!(d.finish().unwrap(), None);
    }

    #[test]
    fn multi_line_data_and_unterminated_tail() {
        let mut d = SseDecoder::default();
        assert_eq!(
            d.push(b"data: a\ndata: b\n\ndata: tail").unwrap()[0].data,
            "a\nb"
        );
        assert_eq!(d.finish().unwrap().unwrap().data, "tail");
    }

    #[test]
    fn frames() {
        assert_eq!(&data_frame(b"{}")[..], b"data: {}\n\n");
        assert_eq!(
            &named_frame("ping", b"{}")[..],
            b"event: ping\ndata: {}\n\n"
        );
    }
}
