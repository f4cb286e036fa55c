//! The stamp every publication of the harness carries as its data
//! (`{"s":<publisher>,"q":<seq>,"t":<unix µs>,"p":"xxx…"}`): writing it, and reading it
//! back from a publication push without a JSON parser, and the bound on its size
//! (`--payload`). The fanout (and so chat) and soak scenarios both use it.

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::bail;
use serde::Deserialize;

/// Largest `--payload`: the gateway's default inbound limit is 64 KiB per message,
/// and the publish command wraps the data.
const MAX_PAYLOAD_BYTES: usize = 60_000;

/// What every publication's data carries (`p`, the padding, is skipped).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub(crate) struct Stamp {
    /// Publisher id.
    pub s: u32,
    /// Sequence number of this publisher in this room, from 1.
    pub q: u64,
    /// Send time, unix microseconds.
    pub t: u64,
}

/// Wall-clock time in unix microseconds: publishers stamp it, receivers subtract it.
pub(crate) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// `--payload` fits the gateway's default message limit.
pub(crate) fn validate_payload(payload: usize) -> anyhow::Result<()> {
    if payload > MAX_PAYLOAD_BYTES {
        bail!("--payload must be at most {MAX_PAYLOAD_BYTES} bytes (the gateway's message limit is 64 KiB by default)");
    }
    Ok(())
}

/// Publication data: `{"s":<publisher>,"q":<seq>,"t":<unix µs>,"p":"xxx…"}`, padded so
/// the whole is `payload` bytes (or its fields alone, when those are longer).
pub(crate) fn write_stamp(buf: &mut Vec<u8>, s: u32, q: u64, t: u64, payload: usize) {
    let start = buf.len();
    write!(buf, "{{\"s\":{s},\"q\":{q},\"t\":{t},\"p\":\"").expect("bug: Vec write");
    let used = buf.len() - start + 2;
    buf.resize(buf.len() + payload.saturating_sub(used), b'x');
    buf.extend_from_slice(b"\"}");
}

/// A publication of this harness, decoded without a JSON parser.
#[derive(Debug, PartialEq)]
pub(crate) struct FastPublication<'a> {
    pub channel: &'a [u8],
    pub stamp: Stamp,
    pub offset: u64,
}

/// Decode a push in exactly the shape the gateway writes for a publication of this
/// harness: `{"push":{"channel":"C","pub":{"data":{"s":S,"q":Q,"t":T,"p":"P"}` then
/// optionally `,"info":{"user":"U","client":"I"}`, optionally `,"offset":N`, then
/// `}}}`, with no escapes in the strings. Anything else returns `None` and goes
/// through serde_json. Parsing every delivery with serde_json cost about 1 µs of
/// harness CPU each, the bulk of the harness's time at 1M deliveries/s.
pub(crate) fn fast_publication(msg: &[u8]) -> Option<FastPublication<'_>> {
    let rest = msg.strip_prefix(b"{\"push\":{\"channel\":\"")?;
    let (channel, rest) = plain_string(rest)?;
    let rest = rest.strip_prefix(b",\"pub\":{\"data\":{\"s\":")?;
    let (s, rest) = number(rest)?;
    let rest = rest.strip_prefix(b",\"q\":")?;
    let (q, rest) = number(rest)?;
    let rest = rest.strip_prefix(b",\"t\":")?;
    let (t, rest) = number(rest)?;
    let rest = rest.strip_prefix(b",\"p\":\"")?;
    let (_, rest) = plain_string(rest)?;
    let mut rest = rest.strip_prefix(b"}")?;
    if let Some(r) = rest.strip_prefix(b",\"info\":{\"user\":\"") {
        let (_, r) = plain_string(r)?;
        let r = r.strip_prefix(b",\"client\":\"")?;
        let (_, r) = plain_string(r)?;
        rest = r.strip_prefix(b"}")?;
    }
    let mut offset = 0;
    if let Some(r) = rest.strip_prefix(b",\"offset\":") {
        let (o, r) = number(r)?;
        offset = o;
        rest = r;
    }
    (rest == b"}}}").then_some(FastPublication {
        channel,
        stamp: Stamp {
            s: u32::try_from(s).ok()?,
            q,
            t,
        },
        offset,
    })
}

/// The body of a JSON string up to its closing quote (consumed), if it has no escapes.
fn plain_string(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = memchr::memchr2(b'"', b'\\', b)?;
    (b[end] == b'"').then(|| (&b[..end], &b[end + 1..]))
}

/// A JSON unsigned integer without sign, fraction or exponent, and what follows it.
fn number(b: &[u8]) -> Option<(u64, &[u8])> {
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || (digits > 1 && b[0] == b'0') {
        return None;
    }
    let mut v: u64 = 0;
    for &c in &b[..digits] {
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    match b.get(digits) {
        Some(b'.' | b'e' | b'E') => None,
        _ => Some((v, &b[digits..])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Reply;
    use shared::protocol::{encode_publication_push, raw_from_slice, ClientInfo, Publication};

    fn push(data: &str, info: Option<ClientInfo>, offset: u64) -> Vec<u8> {
        encode_publication_push(
            "loadtest-abc-0",
            &Publication {
                data: raw_from_slice(data.as_bytes()).unwrap(),
                info,
                offset,
                tags: Default::default(),
            },
        )
    }

    fn info(user: &str, conn_info: Option<&str>) -> Option<ClientInfo> {
        Some(ClientInfo {
            user: user.into(),
            client: "7f8e2c1a-0000-4000-8000-000000000001".into(),
            conn_info: conn_info.map(|c| raw_from_slice(c.as_bytes()).unwrap()),
            chan_info: None,
        })
    }

    /// What the serde_json path makes of a message, for comparison.
    fn slow(msg: &[u8]) -> Option<FastPublication<'_>> {
        let push = Reply::parse(msg).ok()?.push?;
        let p = push.publication?;
        let stamp = serde_json::from_str::<Stamp>(p.data?.get()).ok()?;
        let channel = match push.channel {
            std::borrow::Cow::Borrowed(c) => c.as_bytes(),
            std::borrow::Cow::Owned(_) => return None,
        };
        Some(FastPublication {
            channel,
            stamp,
            offset: p.offset,
        })
    }

    #[test]
    fn fast_path_agrees_with_serde_on_the_gateway_encoding() {
        let data = r#"{"s":3,"q":17,"t":1700000000000001,"p":"xxxx"}"#;
        let cases = [
            push(data, info("loadtest-5", None), 42),
            push(data, info("loadtest-5", None), 0),
            push(data, None, 9),
            push(data, None, 0),
        ];
        for msg in &cases {
            let fast = fast_publication(msg);
            assert!(fast.is_some(), "{}", String::from_utf8_lossy(msg));
            assert_eq!(fast, slow(msg), "{}", String::from_utf8_lossy(msg));
        }
        assert_eq!(fast_publication(&cases[0]).unwrap().offset, 42);
    }

    #[test]
    fn fast_path_declines_other_shapes() {
        let data = r#"{"s":3,"q":17,"t":1,"p":"xx"}"#;
        for msg in [
            // conn_info in the publisher's info
            push(data, info("u", Some(r#"{"name":"a"}"#)), 1),
            // an escape in a string
            push(data, info(r#"u"q"#, None), 1),
            // other data
            push(r#"{"text":"hi"}"#, None, 1),
            push(r#"{"s":3,"q":1.5,"t":1,"p":""}"#, None, 1),
            push(r#"{"s":3,"q":-1,"t":1,"p":""}"#, None, 1),
            push(r#"{"s":99999999999,"q":1,"t":1,"p":""}"#, None, 1),
        ] {
            assert_eq!(
                fast_publication(&msg),
                None,
                "{}",
                String::from_utf8_lossy(&msg)
            );
        }
        assert_eq!(fast_publication(b"{}"), None);
        assert_eq!(fast_publication(br#"{"id":1,"publish":{}}"#), None);
    }

    #[test]
    fn stamp_has_the_payload_size() {
        let mut buf = Vec::new();
        write_stamp(&mut buf, 3, 17, 1_700_000_000_000_000, 64);
        assert_eq!(buf.len(), 64);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!((v["s"].as_u64(), v["q"].as_u64()), (Some(3), Some(17)));
        buf.clear();
        write_stamp(&mut buf, 3, 17, 1, 1);
        assert_eq!(buf, b"{\"s\":3,\"q\":17,\"t\":1,\"p\":\"\"}");
    }
}
