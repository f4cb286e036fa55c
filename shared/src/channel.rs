//! Channel names: `[$][namespace:]room[#user1,user2]`.
//!
//! - `$` (private prefix): subscribing needs a subscription token.
//! - `namespace:` selects the namespace whose options the channel takes; a name
//!   without `:` takes the top-level options.
//! - `#42,43` (user boundary): only users 42 and 43 may subscribe, without a token;
//!   `#42` alone is user 42's personal channel.

/// Separators of the channel name grammar.
pub const PRIVATE_PREFIX: char = '$';
pub const NAMESPACE_SEPARATOR: char = ':';
pub const USER_BOUNDARY: char = '#';
pub const USER_SEPARATOR: char = ',';

/// A parsed channel name. Borrowed from the request; parsing never fails (length
/// and emptiness are checked by the caller against its configured limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelName<'a> {
    pub full: &'a str,
    /// Starts with `$`.
    pub private: bool,
    /// The namespace name, `None` for the top level.
    pub namespace: Option<&'a str>,
    /// Users after `#`, if the channel is user-limited.
    users: Option<&'a str>,
}

impl<'a> ChannelName<'a> {
    pub fn parse(full: &'a str) -> Self {
        let private = full.starts_with(PRIVATE_PREFIX);
        let body = full.strip_prefix(PRIVATE_PREFIX).unwrap_or(full);
        let namespace = body.split_once(NAMESPACE_SEPARATOR).map(|(ns, _)| ns);
        let users = full.rsplit_once(USER_BOUNDARY).map(|(_, u)| u);
        ChannelName {
            full,
            private,
            namespace,
            users,
        }
    }

    /// Whether the channel names its allowed users after `#`.
    pub fn is_user_limited(&self) -> bool {
        self.users.is_some()
    }

    /// Whether `user` is one of the channel's allowed users. Anonymous users (empty
    /// id) never are.
    pub fn allows_user(&self, user: &str) -> bool {
        !user.is_empty()
            && self
                .users
                .is_some_and(|u| u.split(USER_SEPARATOR).any(|x| x == user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        let c = ChannelName::parse("chat");
        assert_eq!(
            (c.private, c.namespace, c.is_user_limited()),
            (false, None, false)
        );
        let c = ChannelName::parse("news:sport");
        assert_eq!(c.namespace, Some("news"));
        let c = ChannelName::parse("$secret:room");
        assert_eq!((c.private, c.namespace), (true, Some("secret")));
        let c = ChannelName::parse("dialog#42,43");
        assert!(c.allows_user("42") && c.allows_user("43") && !c.allows_user("4"));
        let c = ChannelName::parse("#42");
        assert!(c.allows_user("42") && !c.allows_user(""));
        let c = ChannelName::parse("ns:#7");
        assert_eq!(c.namespace, Some("ns"));
        assert!(c.allows_user("7"));
    }
}
