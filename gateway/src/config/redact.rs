//! `Debug` for [`Config`]: every field, with the API key, the token secrets (in
//! `KeyConfig`'s own `Debug`) and the Redis password redacted.

use shared::redact::{redact_url, redacted};

use super::Config;

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, so a new field cannot be left out unnoticed.
        let Config {
            listen,
            node_name,
            redis_url,
            api_key,
            log,
            log_format,
            token,
            client,
            channel,
            namespaces,
            heartbeat_interval,
            redis,
            shutdown,
            http,
            api,
            proxy,
            admin,
            demo,
            development,
        } = self;
        f.debug_struct("Config")
            .field("listen", listen)
            .field("node_name", node_name)
            .field("redis_url", &redis_url.as_deref().map(redact_url))
            .field("api_key", &redacted(api_key))
            .field("log", log)
            .field("log_format", log_format)
            .field("token", token)
            .field("client", client)
            .field("channel", channel)
            .field("namespaces", namespaces)
            .field("heartbeat_interval", heartbeat_interval)
            .field("redis", redis)
            .field("shutdown", shutdown)
            .field("http", http)
            .field("api", api)
            .field("proxy", proxy)
            .field("admin", admin)
            .field("demo", demo)
            .field("development", development)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRETS: [&str; 4] = [
        "hmac-now-5ec2e7",
        "hmac-before-1a9f",
        "api-key-77b3c0",
        "redis-pw-0d4e19",
    ];

    fn secret_config(redis_url: String) -> Config {
        let mut c = Config::default();
        c.apply_env(|k| match k {
            "GATEWAY_TOKEN_HMAC_SECRET" => Some(SECRETS[0].into()),
            "GATEWAY_API_KEY" => Some(SECRETS[2].into()),
            "GATEWAY_REDIS_URL" => Some(redis_url.clone()),
            _ => None,
        });
        c.token.hmac_previous_secret = Some(SECRETS[1].into());
        c.validate().unwrap();
        c
    }

    #[test]
    fn config_debug_redacts_every_secret() {
        let pw = SECRETS[3];
        for url in [
            format!("redis://:{pw}@127.0.0.1:6379/0"),
            format!("redis://app:{pw}@redis.internal:6380"),
            format!("redis+cluster://:{pw}@10.0.0.1:7000,app:{pw}@10.0.0.2:7000"),
        ] {
            let c = secret_config(url);
            for out in [format!("{c:?}"), format!("{c:#?}")] {
                for secret in SECRETS {
                    assert!(!out.contains(secret), "{secret} in {out}");
                }
                assert!(
                    out.contains("<redacted>") && out.contains(":<redacted>@"),
                    "{out}"
                );
                // What is not secret still shows.
                assert!(out.contains(&c.node_name), "{out}");
            }
            let out = format!("{c:?}");
            for field in ["hmac_secret", "hmac_previous_secret", "api_key"] {
                let shown = format!("{field}: Some(\"<redacted>\")");
                assert!(out.contains(&shown), "{shown} not in {out}");
            }
            // The engine's settings built from it are as careful.
            let rc = format!("{:?}", c.redis_config().unwrap());
            assert!(!rc.contains(pw) && rc.contains(":<redacted>@"), "{rc}");
        }
    }

    #[test]
    fn unset_secrets_show_as_unset() {
        let out = format!("{:?}", Config::default());
        assert!(out.contains("api_key: None"), "{out}");
        assert!(out.contains("hmac_secret: None"), "{out}");
        assert!(!out.contains("<redacted>"), "{out}");
    }
}
