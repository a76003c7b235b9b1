//! Matrix errors for what hyper refuses itself, before any handler runs: a
//! request line or header it cannot parse (400), a URI longer than 64 KiB
//! (414), headers beyond its buffer (431). hyper answers these with an
//! empty body and offers no hook to change them, so each connection's
//! writes pass through [`MatrixErrors`], which turns such an answer (a 4xx
//! or 5xx head with `content-length: 0` and nothing after it, which no
//! handler of weft writes: their errors all carry a body) into the same
//! answer with a JSON body (`errcode`, `error`).
//!
//! To see each answer whole, the stream says it cannot write vectored, so
//! hyper writes head and body from one buffer (its `Flatten` strategy).

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An acceptor that wraps each connection of `A` in [`MatrixErrors`].
#[derive(Clone)]
pub struct MatrixErrorsAcceptor<A>(pub A);

impl<A, I, S> axum_server::accept::Accept<I, S> for MatrixErrorsAcceptor<A>
where
    A: axum_server::accept::Accept<I, S>,
    A::Future: Send + 'static,
{
    type Stream = MatrixErrors<A::Stream>;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let accepted = self.0.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = accepted.await?;
            Ok((MatrixErrors::new(stream), service))
        })
    }
}

/// A connection whose bodiless error answers get a Matrix error body.
pub struct MatrixErrors<S> {
    inner: S,
    /// A rewritten answer still to be written, from `written` on.
    pending: Vec<u8>,
    written: usize,
}

impl<S> MatrixErrors<S> {
    pub fn new(inner: S) -> Self {
        MatrixErrors {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> MatrixErrors<S> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for MatrixErrors<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MatrixErrors<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if let Some(answer) = with_matrix_body(buf) {
            this.pending = answer;
            // What cannot be written now is on the next write or flush.
            if let Poll::Ready(Err(e)) = this.poll_pending(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// `head` with a Matrix error body, if it is a whole bodiless 4xx/5xx
/// answer; `None` for anything else.
fn with_matrix_body(head: &[u8]) -> Option<Vec<u8>> {
    if !head.starts_with(b"HTTP/1.") || !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.strip_suffix("\r\n\r\n")?.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    if !(400..600).contains(&status) {
        return None;
    }
    let headers: Vec<&str> = lines.collect();
    let is_length = |h: &str| h.to_ascii_lowercase().starts_with("content-length:");
    let lengths: Vec<&str> = headers.iter().copied().filter(|h| is_length(h)).collect();
    if lengths.is_empty() || lengths.iter().any(|h| h["content-length:".len()..].trim() != "0") {
        return None;
    }
    let (errcode, error) = match status {
        414 => ("M_TOO_LARGE", "The request's URI is too long"),
        431 => ("M_TOO_LARGE", "The request's headers are too large"),
        400 => ("M_UNRECOGNIZED", "The request is not valid HTTP"),
        _ => ("M_UNKNOWN", "The request could not be served"),
    };
    let body = serde_json::json!({ "errcode": errcode, "error": error }).to_string();
    let mut answer = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for header in headers.iter().filter(|h| !is_length(h)) {
        answer.push_str(header);
        answer.push_str("\r\n");
    }
    answer.push_str("\r\n");
    answer.push_str(&body);
    Some(answer.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bodiless_error_gets_a_matrix_body() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sun, 06 Dec 2026 08:00:00 GMT\r\n\r\n";
        let answer = String::from_utf8(with_matrix_body(head).unwrap()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("\r\nconnection: close"));
        assert!(head.contains("\r\ndate: Sun"));
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["errcode"], "M_TOO_LARGE");
    }

    #[test]
    fn other_answers_pass_unchanged() {
        for head in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 57\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n",
            b"{\"errcode\":\"HTTP/1.1 400 \"}\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
        ] {
            assert_eq!(with_matrix_body(head), None, "{}", String::from_utf8_lossy(head));
        }
    }
}
