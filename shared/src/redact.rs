//! Keeping secrets out of logs: the marker `Debug` output shows instead of a
//! secret, and Redis URLs with their passwords replaced by it.

use std::borrow::Cow;

/// What `Debug` output shows in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// `Some(REDACTED)` for a set secret, for `Debug` impls: whether it is set still shows.
pub fn redacted<T>(secret: &Option<T>) -> Option<&'static str> {
    secret.as_ref().map(|_| REDACTED)
}

/// The URL with the password of every host replaced by [`REDACTED`]:
/// `redis://user:pw@host` becomes `redis://user:<redacted>@host`, and each entry of
/// a comma-separated `redis+cluster://` list is treated alike. Userinfo without a
/// `:` is redacted whole, as some write the password there.
pub fn redact_url(url: &str) -> Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Cow::Borrowed(url);
    };
    if !rest.contains('@') {
        return Cow::Borrowed(url);
    }
    let hosts: Vec<String> = rest.split(',').map(redact_authority).collect();
    Cow::Owned(format!("{scheme}://{}", hosts.join(",")))
}

/// One `[userinfo@]host[:port][/path]` with the password redacted.
fn redact_authority(entry: &str) -> String {
    // The last `@` ends the userinfo: a password may hold an unescaped `@`.
    let Some(at) = entry.rfind('@') else {
        return entry.to_owned();
    };
    let (userinfo, host) = (&entry[..at], &entry[at + 1..]);
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:{REDACTED}@{host}"),
        None => format!("{REDACTED}@{host}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_replaced() {
        let cases = [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("redis://:pw@host:6379", "redis://:<redacted>@host:6379"),
            (
                "rediss://user:p@ss@host/1",
                "rediss://user:<redacted>@host/1",
            ),
            ("redis://token@host", "redis://<redacted>@host"),
            (
                "redis+cluster://:a@h1:1, u:b@h2:2,h3:3",
                "redis+cluster://:<redacted>@h1:1, u:<redacted>@h2:2,h3:3",
            ),
            (
                "redis+sentinel://:pw@s1:26379,s2:26379/mymaster/2",
                "redis+sentinel://:<redacted>@s1:26379,s2:26379/mymaster/2",
            ),
            ("not a url", "not a url"),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn set_secrets_show_only_that_they_are_set() {
        assert_eq!(redacted(&Some("s3cret")), Some(REDACTED));
        assert_eq!(redacted::<String>(&None), None);
    }
}
