//! Decoders fed random and mutated input never panic (cargo-fuzz needs a nightly
//! toolchain; this runs everywhere, on a fixed seed so failures reproduce).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shared::envelope::{ChannelMessage, Envelope};
use shared::protocol::{split_frame, Command};

const SAMPLES: &[&[u8]] = &[
    br#"{"connect":{"token":"t","data":{"a":[1,2,{"b":null}]},"name":"js","subs":{"x":{"recover":true,"offset":3,"epoch":"e"}}},"id":1}"#,
    br#"{"subscribe":{"channel":"chat","recoverable":true,"join_leave":true,"flag":1,"recover":true,"offset":7,"epoch":"e1"},"id":2}"#,
    br#"{"publish":{"channel":"c","data":{"text":"h\u00e9llo \"q\""}},"id":3}"#,
    br#"{"history":{"channel":"c","limit":-1,"since":{"offset":5,"epoch":"e"},"reverse":true},"id":4}"#,
    br#"{}"#,
];

/// Random edits of a valid input: flip, insert, delete, truncate.
fn mutate(rng: &mut StdRng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.random_range(1..8) {
        match rng.random_range(0..4) {
            0 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v[i] = rng.random();
            }
            1 => {
                let i = rng.random_range(0..=v.len());
                v.insert(i, rng.random());
            }
            2 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v.remove(i);
            }
            _ => v.truncate(rng.random_range(0..=v.len())),
        }
    }
    v
}

fn decode_all(bytes: &[u8]) {
    if let Some(lines) = split_frame(bytes) {
        for line in lines {
            if let Ok(cmd) = Command::parse(line) {
                let _ = cmd.request();
            }
        }
    }
    if let Ok(m) = ChannelMessage::parse(bytes) {
        if let Ok(env) = Envelope::decode(m.body) {
            let _ = env.to_publication(m.offset);
        }
    }
    let _ = Envelope::decode(bytes);
}

#[test]
fn random_and_mutated_input_never_panics() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    for _ in 0..20_000 {
        let len = rng.random_range(0..256);
        let random: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        decode_all(&random);
        let sample = SAMPLES[rng.random_range(0..SAMPLES.len())];
        decode_all(&mutate(&mut rng, sample));
    }
    // Mutated envelopes, behind a valid header.
    let env = Envelope::decode(&{
        let p = shared::protocol::Publication {
            data: shared::protocol::raw_from_slice(SAMPLES[2]).unwrap(),
            info: None,
            offset: 0,
            tags: Default::default(),
        };
        Envelope::publication(&p).encode().unwrap()
    })
    .unwrap()
    .encode()
    .unwrap();
    for _ in 0..20_000 {
        let mut msg = b"12:epoch:".to_vec();
        msg.extend(mutate(&mut rng, &env));
        decode_all(&msg);
    }
}
