//! HTTP/2 frame by frame (RFC 9113) for the adversarial tests
//! (`security_wire_h2.rs`): enough HPACK to send requests and read a
//! response's status, and a reader that records what the server did with
//! each stream. A client built on this can break every rule a real client
//! library enforces on itself. Every read is bounded by its caller.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const CONTINUATION: u8 = 9;
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
pub const CANCEL: u32 = 0x8;
pub const REFUSED_STREAM: u32 = 0x7;
/// The largest frame payload a peer must accept without asking.
pub const MAX_FRAME: usize = 16_384;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// A header block as HEADERS and CONTINUATION frames of at most
/// `MAX_FRAME` bytes each.
pub fn header_frames(stream: u32, block: &[u8], end_stream: bool) -> Vec<u8> {
    let chunks: Vec<&[u8]> = block.chunks(MAX_FRAME).collect();
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let mut flags = if last { END_HEADERS } else { 0 };
        let kind = if i == 0 {
            if end_stream {
                flags |= END_STREAM;
            }
            HEADERS
        } else {
            CONTINUATION
        };
        out.extend(frame(kind, flags, stream, chunk));
    }
    out
}

/// An HPACK integer with an `prefix_bits` prefix (RFC 7541 §5.1).
fn int(out: &mut Vec<u8>, prefix_bits: u32, first: u8, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    int(out, 7, 0, s.len());
    out.extend(s);
}

/// A header field without indexing, with a new name.
pub fn literal(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(0);
    string(out, name.as_bytes());
    string(out, value);
}

/// `GET path` as a header block: `:method GET` and `:scheme http` from
/// the static table, `:path` and `:authority` as literals.
pub fn get(path: &str) -> Vec<u8> {
    let mut out = vec![0x82, 0x86];
    int(&mut out, 4, 0, 4);
    string(&mut out, path.as_bytes());
    int(&mut out, 4, 0, 1);
    string(&mut out, b"127.0.0.1");
    out
}

/// The `:status` of a response header block, which servers send first:
/// a static-table entry, or a literal with the `:status` name.
pub fn status(block: &[u8]) -> Option<u16> {
    let first = *block.first()?;
    let indexed = [(0x88, 200), (0x89, 204), (0x8a, 206), (0x8b, 304)]
        .into_iter()
        .chain([(0x8c, 400), (0x8d, 404), (0x8e, 500)])
        .find(|(b, _)| *b == first);
    if let Some((_, status)) = indexed {
        return Some(status);
    }
    if ![0x48, 0x08, 0x18].contains(&first) {
        return None;
    }
    let len_byte = *block.get(1)?;
    let raw = block.get(2..2 + usize::from(len_byte & 0x7f))?;
    let text = if len_byte & 0x80 != 0 {
        huffman_digits(raw)?
    } else {
        String::from_utf8(raw.to_vec()).ok()?
    };
    text.parse().ok()
}

/// Decodes a Huffman-coded string of digits (RFC 7541 Appendix B: `0`
/// to `2` are 5-bit codes 0..=2, `3` to `9` 6-bit codes 25..=31).
fn huffman_digits(raw: &[u8]) -> Option<String> {
    let total = raw.len() * 8;
    let bits = |pos: usize, n: usize| -> u32 {
        (pos..pos + n).fold(0, |acc, i| {
            (acc << 1) | u32::from(raw[i / 8] >> (7 - i % 8) & 1)
        })
    };
    let mut out = String::new();
    let mut pos = 0;
    while pos + 5 <= total {
        let five = bits(pos, 5);
        if five <= 2 {
            out.push(char::from(b'0' + five as u8));
            pos += 5;
        } else if pos + 6 <= total && (25..=31).contains(&bits(pos, 6)) {
            out.push(char::from(b'3' + (bits(pos, 6) - 25) as u8));
            pos += 6;
        } else {
            break; // the all-ones padding
        }
    }
    (!out.is_empty()).then_some(out)
}

pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// The next frame; `None` when the connection ends.
pub async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> Option<Frame> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await.ok()?;
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.ok()?;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream,
        payload,
    })
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A connection after the preface exchange, and the server's settings.
pub async fn open(port: u16) -> (TcpStream, BTreeMap<u16, u32>) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    c.write_all(&hello).await.unwrap();
    let settings = timeout(Duration::from_secs(5), async {
        loop {
            let f = read_frame(&mut c).await.expect("the server's settings");
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                return f
                    .payload
                    .chunks(6)
                    .map(|s| (u16::from_be_bytes([s[0], s[1]]), u32_at(s, 2)))
                    .collect::<BTreeMap<_, _>>();
            }
        }
    })
    .await
    .expect("settings within 5 s");
    c.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
    (c, settings)
}

/// What the server did with a connection's streams.
#[derive(Default, Debug)]
pub struct Seen {
    pub statuses: BTreeMap<u32, Option<u16>>,
    pub resets: BTreeMap<u32, u32>,
    /// Last stream id and error code.
    pub goaway: Option<(u32, u32)>,
    pub closed: bool,
}

/// Reads (answering pings and settings) until `done` says enough, the
/// server sends GOAWAY or closes, or `within` passes.
pub async fn watch(c: &mut TcpStream, within: Duration, done: impl Fn(&Seen) -> bool) -> Seen {
    let mut seen = Seen::default();
    let deadline = Instant::now() + within;
    while !done(&seen) {
        let Ok(next) = tokio::time::timeout_at(deadline, read_frame(c)).await else {
            break;
        };
        let Some(f) = next else {
            seen.closed = true;
            break;
        };
        match f.kind {
            HEADERS => {
                seen.statuses.insert(f.stream, status(&f.payload));
            }
            RST_STREAM => {
                seen.resets.insert(f.stream, u32_at(&f.payload, 0));
            }
            GOAWAY => {
                seen.goaway = Some((u32_at(&f.payload, 0) & 0x7fff_ffff, u32_at(&f.payload, 4)));
                break;
            }
            PING if f.flags & ACK == 0 => {
                let _ = c.write_all(&frame(PING, ACK, 0, &f.payload)).await;
            }
            _ => {}
        }
    }
    seen
}
