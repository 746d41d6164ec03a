//! A raw HTTP/1.1 client for the adversarial tests (`security_wire*.rs`):
//! it sends exactly the bytes it is given, at the pace it is told, which no
//! well-behaved client library does. Every wait is bounded.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// How long any one answer is waited for.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// An answer as read off the socket.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A GET request head that asks the server to close after answering.
pub fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
}

/// Sends `head` and `body` on a new connection while reading the answer
/// (a server may answer before it has read everything); `None` when the
/// connection ends without a complete answer or none comes within
/// [`ANSWER_WITHIN`].
pub async fn request(port: u16, head: &str, body: &[u8]) -> Option<Reply> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let (mut read, mut write) = stream.into_split();
    let mut bytes = head.as_bytes().to_vec();
    bytes.extend_from_slice(body);
    let writer = tokio::spawn(async move {
        // A refusal may close the connection mid-write: that is an answer
        // too, read below.
        let _ = write.write_all(&bytes).await;
        write
    });
    let mut buf = Vec::new();
    let reply = timeout(ANSWER_WITHIN, async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => return parse(&buf, true),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if let Some(reply) = parse(&buf, false) {
                return Some(reply);
            }
        }
    })
    .await
    .ok()
    .flatten();
    writer.abort();
    reply
}

/// Waits until the server closes `stream` (end of stream or reset),
/// discarding what it sends meanwhile; how long that took, or `None` if
/// it is still open after `within`.
pub async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut sink = vec![0u8; 16 * 1024];
    let closed = timeout(within, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    closed.ok().map(|()| start.elapsed())
}

/// Sends `body` one byte every `gap` while reading, until an answer
/// arrives, the connection ends or `give_up` passes; the answer and how
/// many bytes went out.
pub async fn trickle_until_reply(
    stream: &mut TcpStream,
    body: &[u8],
    gap: Duration,
    give_up: Duration,
) -> (Option<Reply>, usize) {
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut sent = 0;
    while start.elapsed() < give_up {
        tokio::select! {
            read = stream.read(&mut chunk) => match read {
                Ok(0) | Err(_) => return (parse(&buf, true), sent),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(reply) = parse(&buf, false) {
                        return (Some(reply), sent);
                    }
                }
            },
            () = tokio::time::sleep(gap) => {
                if sent < body.len() {
                    if stream.write_all(&body[sent..=sent]).await.is_err() {
                        continue;
                    }
                    sent += 1;
                }
            }
        }
    }
    (None, sent)
}

/// A complete answer in `buf`, if there is one; `eof`: nothing more will
/// come (a body without a length then ends here).
pub fn parse(buf: &[u8], eof: bool) -> Option<Reply> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &buf[end + 4..];
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let body = if let Some(len) = find("content-length") {
        let len: usize = len.parse().ok()?;
        rest.get(..len)?.to_vec()
    } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        dechunk(rest)?
    } else if eof {
        rest.to_vec()
    } else {
        return None;
    };
    Some(Reply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}
