//! Feeds connection and subscription token verification (`shared/src/auth.rs`,
//! `Verifier::verify_connect` and `Verifier::verify_subscribe`) arbitrary tokens.
//! Two verifiers: one with an HMAC secret, an RSA and an ECDSA public key; one with
//! a current and a previous HMAC secret and a required audience and issuer.
//!
//! Input: if the low bit of byte 0 is clear, the rest (as UTF-8, lossy) is the
//! token. If it is set, the rest is the claims JSON (or, with bit 3 set, a header
//! JSON, `\n`, then the claims JSON), signed with HS256/384/512 (bits 1-2) and the
//! current or previous secret (bit 4), so the claim parsing behind a valid
//! signature is reached too.
//!
//! Must hold: nothing panics; a subscription token that verifies names a
//! non-empty channel; embedded JSON claims (`info`, `data`) are valid JSON.

#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use shared::auth::{KeyConfig, Verifier};
use shared::protocol::Raw;
use std::sync::OnceLock;

const SECRET: &str = "fuzz-secret";
const PREVIOUS_SECRET: &str = "fuzz-previous-secret";

const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAotyjnLRxNxXrSQSdUSnG
cRvTb9jAWuRZ0dOZf2czi8LfbgSx170GEIRBB1fjeNRsXGlgMuvRd7kZ5thIhsa7
cA0ZaniTOpQpL6MI3AZgpW13UNn7nDShtfh2J73jnMlm77FHBW6/6643DG//IwDi
b456a22PnudSRWjOOPzDlrf+qR1vVylqdlsgHuIKtxtJ1d4jsCqCGB1qM7VSLs0J
hibNOS9rwS0pbLPV5kRoQZjtrS9NVf5me/cf01mpFMOtQHjFC5zSN5MEndknhoQk
NOevIlADbRZ24A8pVRCy0J+mXcyZo1u56U/AphyKHeCpEjsUkkAprv40fmZptNmK
vwIDAQAB
-----END PUBLIC KEY-----
";

const ECDSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE1wWkTjIWddBTRdefpe3c1q2idqsR
PPfdkktuexOmsb8sbCEu99WJtrm5vqP6kv3PK+r9vOTh55681WG+v1c2Fw==
-----END PUBLIC KEY-----
";

fn verifiers() -> &'static [Verifier; 2] {
    static VERIFIERS: OnceLock<[Verifier; 2]> = OnceLock::new();
    VERIFIERS.get_or_init(|| {
        let keys = Verifier::new(&KeyConfig {
            hmac_secret: Some(SECRET.into()),
            rsa_public_key: Some(RSA_PUBLIC.into()),
            ecdsa_public_key: Some(ECDSA_PUBLIC.into()),
            ..Default::default()
        })
        .expect("keys load");
        let rotating = Verifier::new(&KeyConfig {
            hmac_secret: Some(SECRET.into()),
            hmac_previous_secret: Some(PREVIOUS_SECRET.into()),
            audience: Some("fuzz-aud".into()),
            issuer: Some("fuzz-iss".into()),
            ..Default::default()
        })
        .expect("secrets load");
        [keys, rotating]
    })
}

fn check_raw(raw: &Option<Raw>) {
    if let Some(raw) = raw {
        assert!(serde_json::from_str::<IgnoredAny>(raw.get()).is_ok());
    }
}

/// `header.claims.signature` with an HMAC signature over the given JSON texts.
fn sign(header: &[u8], claims: &[u8], alg: Algorithm, secret: &str) -> String {
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(claims));
    let signature = jsonwebtoken::crypto::sign(
        token.as_bytes(),
        &EncodingKey::from_secret(secret.as_bytes()),
        alg,
    )
    .expect("HMAC signing");
    token.push('.');
    token.push_str(&signature);
    token
}

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else { return };
    let token = if mode & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let alg = match (mode >> 1) & 3 {
            0 | 3 => Algorithm::HS256,
            1 => Algorithm::HS384,
            _ => Algorithm::HS512,
        };
        let secret = if mode & 0x10 == 0 {
            SECRET
        } else {
            PREVIOUS_SECRET
        };
        let default_header = format!(r#"{{"alg":"{alg:?}","typ":"JWT"}}"#);
        let (header, claims) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) if mode & 0x08 != 0 => (&rest[..i], &rest[i + 1..]),
            _ => (default_header.as_bytes(), rest),
        };
        sign(header, claims, alg, secret)
    };

    for verifier in verifiers() {
        if let Ok(t) = verifier.verify_connect(&token) {
            check_raw(&t.info);
        }
        if let Ok(t) = verifier.verify_subscribe(&token) {
            assert!(
                !t.channel.is_empty(),
                "subscription token without a channel"
            );
            check_raw(&t.info);
            check_raw(&t.data);
        }
    }
});
