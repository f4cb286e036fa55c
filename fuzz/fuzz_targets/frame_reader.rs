//! Feeds the gateway's WebSocket frame reader (`gateway/src/frame.rs`) an arbitrary
//! byte stream, handed over in arbitrary pieces and with reads that are sometimes
//! not ready yet, under a small message limit.
//!
//! Input: byte 0 picks `max_message` (0..=127, or a multiple of 64 up to 8192),
//! byte 1 the number `n` (0..=15) of piece bytes that follow; each piece byte gives
//! a piece length (1..=128, low 7 bits) and whether the read first answers
//! `Pending` (top bit). The rest is the stream, cut into pieces of those lengths in
//! turn (one piece if `n` is 0).
//!
//! Must hold: `next()` never panics and ends in an error (at EOF at the latest)
//! within one call per 6 stream bytes; a text message is valid UTF-8 and at most
//! `max_message` long; a ping payload is at most 125 bytes; the messages and the
//! final error are the same whether the stream arrives in one piece, in the fuzzed
//! pieces, or in the fuzzed pieces with every `next()` call that is not ready
//! dropped and started again (the reader is documented as cancel-safe). After the
//! final error `discard()` returns.

#![no_main]

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use gateway::frame::{FrameReader, Message};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

/// Hands out at most one piece per read; EOF after the last one.
struct Pieces {
    /// (answer `Pending` once before this piece, the bytes not yet read).
    pieces: VecDeque<(bool, Vec<u8>)>,
}

impl AsyncRead for Pieces {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some((stall, piece)) = self.pieces.front_mut() else {
            return Poll::Ready(Ok(()));
        };
        if *stall {
            *stall = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = piece.len().min(buf.remaining());
        buf.put_slice(&piece[..n]);
        piece.drain(..n);
        if piece.is_empty() {
            self.pieces.pop_front();
        }
        Poll::Ready(Ok(()))
    }
}

/// What a run of the reader produced: its messages, then its final error.
type Outcome = Vec<Result<Message, String>>;

/// Poll `next()` to the end of the stream. With `cancel`, a call that is not ready
/// is dropped and a new one started; otherwise the same call is polled again.
fn run<R: AsyncRead + Unpin>(
    io: R,
    max_message: usize,
    stream_len: usize,
    stalls: usize,
    cancel: bool,
) -> Outcome {
    let mut reader = FrameReader::new(io, max_message);
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    let mut pending = 0usize;
    // Every message takes at least a 6-byte header (2 bytes and the mask).
    let max_calls = stream_len / 6 + 1;
    loop {
        assert!(
            out.len() < max_calls,
            "no end after {} calls on {stream_len} bytes",
            out.len()
        );
        let result = {
            let mut next = pin!(reader.next());
            loop {
                match next.as_mut().poll(&mut cx) {
                    Poll::Ready(r) => break Some(r),
                    Poll::Pending => {
                        pending += 1;
                        assert!(pending <= stalls, "pending without a stalled read");
                        if cancel {
                            break None;
                        }
                    }
                }
            }
        };
        let Some(result) = result else { continue };
        match result {
            Ok(message) => {
                match &message {
                    Message::Text(text) => {
                        assert!(std::str::from_utf8(text).is_ok(), "text is not UTF-8");
                        assert!(
                            text.len() <= max_message,
                            "text of {} bytes over the limit {max_message}",
                            text.len()
                        );
                    }
                    Message::Ping(payload) => {
                        assert!(payload.len() <= 125, "ping of {} bytes", payload.len())
                    }
                    Message::Binary | Message::Close(_) => {}
                }
                out.push(Ok(message));
            }
            Err(e) => {
                out.push(Err(e.to_string()));
                break;
            }
        }
    }
    // After an error the connection drains what the client still sends.
    let mut discard = pin!(reader.discard());
    let mut polls = 0usize;
    while discard.as_mut().poll(&mut cx).is_pending() {
        polls += 1;
        assert!(polls <= stalls, "discard pending without a stalled read");
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let [b0, b1, rest @ ..] = data else { return };
    let max_message = match *b0 {
        b @ 0..=127 => usize::from(b),
        b => (usize::from(b) - 127) * 64,
    };
    let n = usize::from(*b1 % 16).min(rest.len());
    let (sizes, stream) = rest.split_at(n);

    let mut pieces = VecDeque::new();
    let mut stalls = 0;
    if sizes.is_empty() {
        if !stream.is_empty() {
            pieces.push_back((false, stream.to_vec()));
        }
    } else {
        let mut at = 0;
        for &s in sizes.iter().cycle() {
            if at == stream.len() {
                break;
            }
            let len = (usize::from(s & 0x7f) + 1).min(stream.len() - at);
            let stall = s & 0x80 != 0;
            stalls += usize::from(stall);
            pieces.push_back((stall, stream[at..at + len].to_vec()));
            at += len;
        }
    }

    let whole = run(stream, max_message, stream.len(), 0, false);
    let split = run(
        Pieces {
            pieces: pieces.clone(),
        },
        max_message,
        stream.len(),
        stalls,
        false,
    );
    assert_eq!(whole, split, "pieces changed the outcome");
    let cancelled = run(Pieces { pieces }, max_message, stream.len(), stalls, true);
    assert_eq!(whole, cancelled, "dropped calls changed the outcome");
});
