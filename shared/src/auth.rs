//! Connection and subscription JWTs (docs/protocol.md §5).
//!
//! HS256/384/512 with a shared secret (plus an optional previous secret during
//! rotation), RS*/PS* with an RSA public key and ES256/384 with an ECDSA public key,
//! all PEM. Expiry is checked without leeway: an expired token is reported as
//! [`TokenError::Expired`] (the protocol's 109), anything else wrong as
//! [`TokenError::Invalid`].

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::protocol::Raw;

/// Keys and checks configured for token verification (the `[token]` section of the
/// gateway's configuration). With none, the gateway generates a development secret.
/// `Debug` shows whether the HMAC secrets are set, never their values.
#[derive(Default, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyConfig {
    /// HMAC secret for HS* tokens.
    pub hmac_secret: Option<String>,
    /// A previous HMAC secret still accepted while clients rotate to the new one.
    pub hmac_previous_secret: Option<String>,
    /// RSA public key (PEM) for RS*/PS* tokens.
    pub rsa_public_key: Option<String>,
    /// ECDSA public key (PEM) for ES* tokens.
    pub ecdsa_public_key: Option<String>,
    /// When set, the `aud` claim must contain it.
    pub audience: Option<String>,
    /// When set, the `iss` claim must equal it.
    pub issuer: Option<String>,
}

impl std::fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::redact::redacted;
        // Destructured, so a new field cannot be left out unnoticed.
        let KeyConfig {
            hmac_secret,
            hmac_previous_secret,
            rsa_public_key,
            ecdsa_public_key,
            audience,
            issuer,
        } = self;
        f.debug_struct("KeyConfig")
            .field("hmac_secret", &redacted(hmac_secret))
            .field("hmac_previous_secret", &redacted(hmac_previous_secret))
            .field("rsa_public_key", rsa_public_key)
            .field("ecdsa_public_key", ecdsa_public_key)
            .field("audience", audience)
            .field("issuer", issuer)
            .finish()
    }
}

impl KeyConfig {
    /// Whether any verification key is configured.
    pub fn has_key(&self) -> bool {
        self.hmac_secret.is_some()
            || self.rsa_public_key.is_some()
            || self.ecdsa_public_key.is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("rsa_public_key: {0}")]
    Rsa(jsonwebtoken::errors::Error),
    #[error("ecdsa_public_key: {0}")]
    Ecdsa(jsonwebtoken::errors::Error),
    #[error("hmac_secret must not be empty")]
    EmptySecret,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Verifies tokens against the configured keys.
pub struct Verifier {
    hmac: Vec<DecodingKey>,
    rsa: Option<DecodingKey>,
    ecdsa: Option<DecodingKey>,
    audience: Option<String>,
    issuer: Option<String>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hmac_keys", &self.hmac.len())
            .field("rsa", &self.rsa.is_some())
            .field("ecdsa", &self.ecdsa.is_some())
            .finish()
    }
}

/// What a valid connection token grants.
#[derive(Debug, Clone, Default)]
pub struct ConnectToken {
    /// User id (`sub`); empty for anonymous.
    pub user: String,
    /// Unix seconds after which the connection must be refreshed; `None` never.
    pub expire_at: Option<u64>,
    /// `info` claim: becomes `conn_info` in client info.
    pub info: Option<Raw>,
    /// `channels` claim: server-side subscriptions made at connect.
    pub channels: Vec<String>,
}

/// What a valid subscription token grants.
#[derive(Debug, Clone, Default)]
pub struct SubscribeToken {
    pub user: String,
    pub channel: String,
    /// When set, only this connection id may use the token.
    pub client: Option<String>,
    pub expire_at: Option<u64>,
    /// `info` claim: becomes `chan_info`.
    pub info: Option<Raw>,
    /// `data` claim: returned in the subscribe result.
    pub data: Option<Raw>,
}

#[derive(Deserialize)]
struct ConnectClaims {
    #[serde(default)]
    sub: String,
    exp: Option<u64>,
    expire_at: Option<u64>,
    info: Option<Raw>,
    #[serde(default)]
    channels: Vec<String>,
    /// Must be absent: a token with `channel` is a subscription token.
    channel: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct SubscribeClaims {
    #[serde(default)]
    sub: String,
    channel: Option<String>,
    client: Option<String>,
    exp: Option<u64>,
    expire_at: Option<u64>,
    info: Option<Raw>,
    data: Option<Raw>,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `expire_at` overrides `exp`; `expire_at: 0` means never.
fn expiry(exp: Option<u64>, expire_at: Option<u64>) -> Option<u64> {
    match expire_at {
        Some(0) => None,
        Some(t) => Some(t),
        None => exp,
    }
}

impl Verifier {
    pub fn new(cfg: &KeyConfig) -> Result<Self, KeyError> {
        let mut hmac = Vec::new();
        for secret in [&cfg.hmac_secret, &cfg.hmac_previous_secret]
            .into_iter()
            .flatten()
        {
            if secret.is_empty() {
                return Err(KeyError::EmptySecret);
            }
            hmac.push(DecodingKey::from_secret(secret.as_bytes()));
        }
        let rsa = cfg
            .rsa_public_key
            .as_deref()
            .map(|pem| DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(KeyError::Rsa))
            .transpose()?;
        let ecdsa = cfg
            .ecdsa_public_key
            .as_deref()
            .map(|pem| DecodingKey::from_ec_pem(pem.as_bytes()).map_err(KeyError::Ecdsa))
            .transpose()?;
        Ok(Verifier {
            hmac,
            rsa,
            ecdsa,
            audience: cfg.audience.clone(),
            issuer: cfg.issuer.clone(),
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let keys: &[DecodingKey] = match header.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => &self.hmac,
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => self.rsa.as_slice(),
            Algorithm::ES256 | Algorithm::ES384 => self.ecdsa.as_slice(),
            other => {
                return Err(TokenError::Invalid(format!(
                    "algorithm {other:?} not accepted"
                )))
            }
        };
        if keys.is_empty() {
            return Err(TokenError::Invalid(format!(
                "no key configured for {:?}",
                header.alg
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = 0;
        validation.required_spec_claims = HashSet::new();
        validation.validate_nbf = true;
        // jsonwebtoken checks aud/iss only when present: a configured one is required.
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        let mut last = TokenError::Invalid("no key".into());
        for key in keys {
            match jsonwebtoken::decode::<T>(token, key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    last = match e.kind() {
                        jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                        _ => TokenError::Invalid(e.to_string()),
                    };
                    // An expired token with a valid signature is final.
                    if last == TokenError::Expired {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    pub fn verify_connect(&self, token: &str) -> Result<ConnectToken, TokenError> {
        let c: ConnectClaims = self.decode(token)?;
        if c.channel.is_some() {
            return Err(TokenError::Invalid(
                "connection token must not have a channel claim".into(),
            ));
        }
        Ok(ConnectToken {
            user: c.sub,
            expire_at: expiry(c.exp, c.expire_at),
            info: c.info,
            channels: c.channels,
        })
    }

    pub fn verify_subscribe(&self, token: &str) -> Result<SubscribeToken, TokenError> {
        let c: SubscribeClaims = self.decode(token)?;
        let channel = c
            .channel
            .filter(|ch| !ch.is_empty())
            .ok_or_else(|| TokenError::Invalid("subscription token has no channel claim".into()))?;
        Ok(SubscribeToken {
            user: c.sub,
            channel,
            client: c.client,
            expire_at: expiry(c.exp, c.expire_at),
            info: c.info,
            data: c.data,
        })
    }
}

/// Claims for minting a token (the `gateway token` command, tests, the load harness).
#[derive(Debug, Default, Clone, Serialize)]
pub struct MintClaims {
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<Raw>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Set for a subscription token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expire_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Raw>,
}

/// Sign claims with HS256.
pub fn mint_hs256(secret: &str, claims: &MintClaims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("bug: HS256 signing of serializable claims cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::raw_from_slice;

    fn verifier(secret: &str) -> Verifier {
        Verifier::new(&KeyConfig {
            hmac_secret: Some(secret.into()),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn connect_token_round_trip() {
        let v = verifier("s3cret");
        let t = mint_hs256(
            "s3cret",
            &MintClaims {
                sub: "42".into(),
                exp: Some(unix_now() + 60),
                info: Some(raw_from_slice(br#"{"name":"Ann"}"#).unwrap()),
                channels: vec!["#42".into()],
                ..Default::default()
            },
        );
        let c = v.verify_connect(&t).unwrap();
        assert_eq!(c.user, "42");
        assert_eq!(c.info.unwrap().get(), r#"{"name":"Ann"}"#);
        assert_eq!(c.channels, vec!["#42".to_string()]);
        assert!(c.expire_at.unwrap() > unix_now());
    }

    #[test]
    fn expired_wrong_key_and_channel_claim() {
        let v = verifier("k");
        let expired = mint_hs256(
            "k",
            &MintClaims {
                sub: "1".into(),
                exp: Some(unix_now() - 5),
                ..Default::default()
            },
        );
        assert_eq!(v.verify_connect(&expired).unwrap_err(), TokenError::Expired);
        let other = mint_hs256("other", &MintClaims::default());
        assert!(matches!(
            v.verify_connect(&other),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            v.verify_connect("garbage"),
            Err(TokenError::Invalid(_))
        ));
        let sub_token = mint_hs256(
            "k",
            &MintClaims {
                channel: Some("x".into()),
                ..Default::default()
            },
        );
        assert!(matches!(
            v.verify_connect(&sub_token),
            Err(TokenError::Invalid(_))
        ));
        assert_eq!(v.verify_subscribe(&sub_token).unwrap().channel, "x");
        let no_channel = mint_hs256("k", &MintClaims::default());
        assert!(v.verify_subscribe(&no_channel).is_err());
    }

    #[test]
    fn previous_secret_still_verifies() {
        let v = Verifier::new(&KeyConfig {
            hmac_secret: Some("new".into()),
            hmac_previous_secret: Some("old".into()),
            ..Default::default()
        })
        .unwrap();
        let t = mint_hs256(
            "old",
            &MintClaims {
                sub: "9".into(),
                ..Default::default()
            },
        );
        assert_eq!(v.verify_connect(&t).unwrap().user, "9");
    }

    #[test]
    fn expire_at_overrides_exp() {
        assert_eq!(expiry(Some(10), Some(0)), None);
        assert_eq!(expiry(Some(10), Some(20)), Some(20));
        assert_eq!(expiry(Some(10), None), Some(10));
    }
}
