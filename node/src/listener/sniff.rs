//! The first bytes of a connection, read under a deadline: enough to tell
//! HTTP/2 from HTTP/1, handed out again before the rest.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface; anything that departs from it is HTTP/1.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection whose first bytes were read (enough to tell HTTP/2 from
/// HTTP/1) and are handed out again before the rest.
pub struct Sniffed<T> {
    io: T,
    head: Vec<u8>,
    at: usize,
}

impl<T: AsyncRead + Unpin> Sniffed<T> {
    /// Reads until the bytes depart from the HTTP/2 preface or make all of
    /// it (HTTP/1 clients decide at their first byte), or the peer closes.
    pub async fn read(mut io: T) -> std::io::Result<Self> {
        use tokio::io::AsyncReadExt;
        let mut head = Vec::with_capacity(H2_PREFACE.len());
        let mut buf = [0u8; 24];
        while head.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&head) {
            let want = H2_PREFACE.len() - head.len();
            let n = io.read(&mut buf[..want]).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok(Self { io, head, at: 0 })
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Sniffed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.at < this.head.len() {
            let n = (this.head.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.head[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Sniffed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
