//! Problems for what the HTTP server refuses before any handler runs.
//!
//! A request the server cannot parse (a header with a NUL or DEL byte, headers or a URI too
//! large, a malformed request line) never reaches the application: the server answers it
//! itself, with an empty body. The connections are wrapped so that such an answer leaves as
//! `application/problem+json` like every other error. The server's own answers are the only ones
//! with a 4xx status, `connection: close`, `content-length: 0` and no content type; the
//! application's errors always have a body.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use poem::{
    listener::Acceptor,
    web::{LocalAddr, RemoteAddr},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An acceptor whose connections answer the server's own refusals with problems.
pub struct ProblemAcceptor<A>(pub A);

impl<A: Acceptor> Acceptor for ProblemAcceptor<A> {
    type Io = ProblemIo<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.0.local_addr()
    }

    async fn accept(
        &mut self,
    ) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, poem::http::uri::Scheme)> {
        let (io, local, remote, scheme) = self.0.accept().await?;
        Ok((
            ProblemIo {
                inner: io,
                pending: Vec::new(),
                written: 0,
                replaces: 0,
            },
            local,
            remote,
            scheme,
        ))
    }
}

/// A connection that rewrites the server's empty refusals into problem responses.
pub struct ProblemIo<T> {
    inner: T,
    /// A rewritten response still being written, and how much of it is out.
    pending: Vec<u8>,
    written: usize,
    /// The length of the original bytes the rewritten response stands for.
    replaces: usize,
}

/// The problem response standing for the server's own empty refusal in `head`, if it is one.
fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    if !text.ends_with("\r\n\r\n") {
        return None;
    }
    let mut lines = text.trim_end().split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line
        .strip_prefix("HTTP/1.1 ")?
        .get(..3)?
        .parse()
        .ok()?;
    if !(400..500).contains(&status) {
        return None;
    }
    let headers: Vec<(String, &str)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim()))
        .collect();
    let has = |name: &str, value: &str| {
        headers
            .iter()
            .any(|(k, v)| k == name && v.eq_ignore_ascii_case(value))
    };
    if !has("content-length", "0")
        || !has("connection", "close")
        || headers.iter().any(|(k, _)| k == "content-type")
    {
        return None;
    }
    let (code, detail) = match status {
        431 => (
            "request_headers_too_large",
            "The request's headers are too large.",
        ),
        414 => ("uri_too_long", "The request's URI is too long."),
        _ => (
            "malformed_request",
            "The request could not be parsed: a malformed request line, or a header with a \
             forbidden character (such as NUL or DEL).",
        ),
    };
    let title = poem::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Bad Request");
    let body = serde_json::json!({
        "type": format!("/problems/{code}"),
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    })
    .to_string();
    let mut out = format!(
        "{status_line}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n",
        crate::error::PROBLEM_JSON,
        body.len()
    );
    for (k, v) in &headers {
        if k == "date" {
            out.push_str(&format!("date: {v}\r\n"));
        }
    }
    out.push_str("\r\n");
    out.push_str(&body);
    Some(out.into_bytes())
}

impl<T: AsyncWrite + Unpin> ProblemIo<T> {
    /// Writes what is pending; ready with the original length once all of it is out.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while self.written < self.pending.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let replaced = self.replaces;
        self.pending.clear();
        self.written = 0;
        self.replaces = 0;
        Poll::Ready(Ok(replaced))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ProblemIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ProblemIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_empty()
            && let Some(replacement) = rewrite(buf)
        {
            this.pending = replacement;
            this.replaces = buf.len();
        }
        if !this.pending.is_empty() {
            return this.drain(cx);
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // The server's refusal is a head alone, in one slice.
        let lone = bufs.iter().filter(|b| !b.is_empty()).count() == 1;
        if this.pending.is_empty()
            && lone
            && let Some(head) = bufs.iter().find(|b| !b.is_empty())
            && let Some(replacement) = rewrite(head)
        {
            this.pending = replacement;
            this.replaces = head.len();
        }
        if !this.pending.is_empty() {
            return this.drain(cx);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.pending.is_empty() {
            match this.drain(cx) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_empty_refusals_become_problems() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n\
                     content-length: 0\r\ndate: Mon, 30 Nov 2026 14:15:29 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite(head).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "));
        assert!(head.contains("content-type: application/problem+json"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("date: Mon, 30 Nov 2026"));
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["status"], 431);
        assert_eq!(problem["code"], "request_headers_too_large");
    }

    #[test]
    fn the_applications_answers_pass_untouched() {
        for head in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\n\
              content-length: 0\r\nconnection: close\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\nconnection: close\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n{}",
        ] {
            assert!(rewrite(head).is_none(), "{}", String::from_utf8_lossy(head));
        }
    }
}
