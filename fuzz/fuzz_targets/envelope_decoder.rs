//! Feeds the node-to-node message decoders (`shared/src/envelope.rs`) arbitrary
//! bytes: as a whole channel message (`ChannelMessage::parse`, then
//! `Envelope::decode` of its body) and as a bare envelope body. Every decoded
//! envelope goes through the conversions the gateway applies to it
//! (`to_publication`, `to_client_info`, `info()`, `data()`).
//!
//! Must hold: nothing panics; a decoded envelope encodes and decodes back to an
//! equal value; `ChannelMessage::unpositioned(body)` parses back to offset 0, an
//! empty epoch and the same body; a parsed header is `<offset>:<epoch>:` of the
//! input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::envelope::{ChannelMessage, Control, Envelope};

fn exercise(body: &[u8], offset: u64) {
    let Ok(envelope) = Envelope::decode(body) else {
        return;
    };
    let encoded = envelope.encode().expect("a decoded envelope encodes");
    let back = Envelope::decode(&encoded).expect("an encoded envelope decodes");
    assert_eq!(back, envelope, "round trip changed the envelope");

    match &envelope {
        Envelope::Publication { info, .. } => {
            match envelope.to_publication(offset) {
                Ok(Some(p)) => {
                    assert_eq!(p.offset, offset);
                    assert!(!p.data.get().contains('\n'));
                    let again = Envelope::publication(&p);
                    let _ = again.encode().expect("a publication encodes");
                }
                Ok(None) => panic!("a publication envelope without a publication"),
                Err(_) => {}
            }
            if let Some(info) = info {
                let _ = info.to_client_info();
            }
        }
        Envelope::Join(info) | Envelope::Leave(info) => {
            assert!(matches!(envelope.to_publication(offset), Ok(None)));
            if let Ok(ci) = info.to_client_info() {
                assert_eq!((&ci.user, &ci.client), (&info.user, &info.client));
            }
        }
        Envelope::Control(control) => {
            assert!(matches!(envelope.to_publication(offset), Ok(None)));
            match control {
                Control::Subscribe(cmd) => {
                    let _ = cmd.info();
                    let _ = cmd.data();
                }
                Control::Refresh(cmd) => {
                    let _ = cmd.info();
                }
                Control::Node(_)
                | Control::Disconnect { .. }
                | Control::Unsubscribe { .. }
                | Control::ChannelsQuery { .. }
                | Control::ChannelsReply { .. } => {}
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = ChannelMessage::parse(data) {
        let header = format!("{}:{}:", m.offset, m.epoch);
        // The offset may be written with leading zeros or a `+`; the rest is verbatim.
        let head_len = data.len() - m.body.len();
        assert!(data[..head_len].ends_with(format!(":{}:", m.epoch).as_bytes()));
        assert!(header.len() <= head_len);
        exercise(m.body, m.offset);
    }
    exercise(data, 0);

    let wrapped = ChannelMessage::unpositioned(data);
    let m = ChannelMessage::parse(&wrapped).expect("an unpositioned message parses");
    assert_eq!((m.offset, m.epoch, m.body), (0, "", data));
});
