//! From a client library's error to one failure reason, by walking its source chain down to the
//! io, TLS, HTTP/1 or HTTP/2 error that caused it.

use std::error::Error as StdError;
use std::io;

use super::Failure;
use crate::reason::Reason;

/// The reason for `err`, or `fallback` when nothing in its chain says; the message is the
/// innermost two errors of the chain (the outer ones repeat the URL or the call).
pub fn chain(err: &(dyn StdError + 'static), fallback: Reason) -> Failure {
    let mut reason = None;
    let mut texts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        // A connect whose failure surfaced on the first write is the connect's failure.
        if let Some(failed) = e.downcast_ref::<super::tcp::ConnectFailed>() {
            return connect(&failed.addr.to_string(), &failed.source);
        }
        let text = e.to_string();
        if !texts.iter().any(|seen| seen.contains(&text)) {
            texts.push(text);
        }
        if reason.is_none() {
            reason = one(e);
        }
        // io::Error::source() skips the error it wraps (tokio-rustls wraps TLS errors, and
        // connectors wrap those again): descend into it explicitly.
        next = match e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    let start = texts.len().saturating_sub(2);
    Failure::new(reason.unwrap_or(fallback), texts[start..].join(": "))
}

fn one(e: &(dyn StdError + 'static)) -> Option<Reason> {
    if let Some(io) = e.downcast_ref::<io::Error>() {
        return io_reason(io);
    }
    if e.is::<rustls::Error>() {
        return Some(Reason::Tls);
    }
    if let Some(h) = e.downcast_ref::<hyper::Error>() {
        if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() {
            return Some(Reason::InvalidResponse);
        }
        if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
            return Some(Reason::Reset);
        }
    }
    if let Some(h2) = e.downcast_ref::<h2::Error>() {
        if h2.is_io() {
            return h2.get_io().and_then(io_reason);
        }
        // A peer that is not speaking HTTP/2 (an HTTP/1 server, garbage) breaks the framing; one
        // that refuses or cancels the stream dropped a request it understood.
        return Some(match h2.reason() {
            Some(h2::Reason::REFUSED_STREAM | h2::Reason::CANCEL) => Reason::Reset,
            _ => Reason::InvalidResponse,
        });
    }
    // hyper-util's connector says "dns error" for a failed name lookup and exposes no type for it.
    if e.to_string().starts_with("dns error") {
        return Some(Reason::Dns);
    }
    None
}

pub fn io_reason(e: &io::Error) -> Option<Reason> {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => Some(Reason::Refused),
        // A Unix socket whose server is gone: the file stays, or goes with it.
        NotFound => Some(Reason::Refused),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected => {
            Some(Reason::Reset)
        }
        TimedOut => Some(Reason::Timeout),
        _ => None,
    }
}

/// A failed connect: its reason, or `refused` when the error is of no known kind.
pub fn connect(what: &str, e: &io::Error) -> Failure {
    Failure::new(
        io_reason(e).unwrap_or(Reason::Refused),
        format!("{what}: {e}"),
    )
}
