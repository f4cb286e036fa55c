//! Feeds the client command decoder (`shared/src/protocol.rs`) arbitrary frames, as
//! the gateway does with each text message: `split_frame`, then `Command::parse`
//! and `request()` on every line, and the channel names of the requests through
//! `ChannelName::parse`. Also feeds the whole input to `raw_from_slice`.
//!
//! Must hold: nothing panics; `split_frame` refuses exactly the frames that are
//! empty or have an empty line and otherwise yields lines without `\n`; embedded
//! JSON (`Raw`) holds no `\n` and is valid JSON.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use shared::channel::ChannelName;
use shared::protocol::{raw_from_slice, split_frame, Command, Raw, Request};

fn check_raw(raw: &Option<Raw>) {
    if let Some(raw) = raw {
        let json = raw.get();
        assert!(!json.contains('\n'), "newline in embedded JSON");
        assert!(
            serde_json::from_str::<IgnoredAny>(json).is_ok(),
            "embedded JSON does not parse again"
        );
    }
}

fn check_channel(channel: &str) {
    let name = ChannelName::parse(channel);
    assert_eq!(name.full, channel);
    assert_eq!(name.private, channel.starts_with('$'));
    if let Some(ns) = name.namespace {
        assert!(channel.contains(ns));
    }
    let _ = name.is_user_limited();
    let _ = name.allows_user("42");
    let _ = name.allows_user("");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = raw_from_slice(data) {
        check_raw(&Some(raw));
    }

    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let framing_ok = !body.is_empty() && !body.split(|&b| b == b'\n').any(|l| l.is_empty());
    let Some(lines) = split_frame(data) else {
        assert!(!framing_ok, "valid framing refused");
        return;
    };
    assert!(framing_ok, "invalid framing accepted");
    for line in lines {
        assert!(
            !line.is_empty() && !line.contains(&b'\n'),
            "bad line {line:?}"
        );
        let Ok(command) = Command::parse(line) else {
            continue;
        };
        let _ = command.id;
        let Some(request) = command.request() else {
            continue;
        };
        match &request {
            Request::Connect(r) => {
                check_raw(&r.data);
                for (channel, sub) in &r.subs {
                    check_channel(channel);
                    check_raw(&sub.data);
                }
            }
            Request::Subscribe(r) => {
                check_channel(&r.channel);
                check_raw(&r.data);
            }
            Request::Unsubscribe(r) | Request::Presence(r) | Request::PresenceStats(r) => {
                check_channel(&r.channel)
            }
            Request::Publish(r) => {
                check_channel(&r.channel);
                check_raw(&r.data);
            }
            Request::History(r) => check_channel(&r.channel),
            Request::Ping | Request::Refresh(_) => {}
            Request::Send(r) => check_raw(&r.data),
            Request::Rpc(r) => check_raw(&r.data),
            Request::SubRefresh(r) => check_channel(&r.channel),
        }
        let _ = format!("{request:?}");
    }
});
