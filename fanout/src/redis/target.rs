//! Where the engine connects, parsed from the URL: one Redis (`redis://`), a
//! Redis Cluster (`redis+cluster://` seed nodes), or the primary that Redis
//! Sentinel names (`redis+sentinel://` sentinels and a master name), asked again
//! at every (re)connect so that the engine follows a failover.

use std::sync::Arc;
use std::time::Duration;

use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::ConnectionAddr;

use crate::broker::BrokerError;

#[derive(Clone)]
pub(super) enum Target {
    Single(redis::Client),
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        /// Seed nodes, for the pub/sub clients (each has its own push callback).
        nodes: Vec<String>,
    },
    Sentinel(Arc<Sentinel>),
}

/// The sentinels of one master name. Connections go to the primary they name
/// (checked with ROLE by the client), looked up anew for every connection.
pub(super) struct Sentinel {
    client: tokio::sync::Mutex<SentinelClient>,
    timeout: Duration,
}

impl Sentinel {
    /// A client for the current primary, or an error when no sentinel names a
    /// reachable one within the timeout.
    pub(super) async fn primary(&self) -> Result<redis::Client, BrokerError> {
        let mut sentinel = self.client.lock().await;
        tokio::time::timeout(self.timeout, sentinel.async_get_client())
            .await
            .map_err(|_| BrokerError::Unavailable("sentinel lookup timed out".into()))?
            .map_err(|e| BrokerError::Unavailable(e.to_string()))
    }
}

impl Target {
    /// Parse `url`:
    /// - `redis://[[user]:password@]host:port[/db]`;
    /// - `redis+cluster://[[user]:password@]h1:p1,h2:p2` (seed nodes);
    /// - `redis+sentinel://[[user]:password@]s1:p1,s2:p2/master-name[/db]`: the
    ///   sentinels, the master name they monitor, and the database; the
    ///   credentials are the primary's (the sentinels are asked without).
    pub(super) fn parse(url: &str, timeout: Duration) -> Result<Target, BrokerError> {
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            let nodes: Vec<String> = rest
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|n| format!("redis://{n}"))
                .collect();
            if nodes.is_empty() {
                return Err(BrokerError::Internal(
                    "redis+cluster:// needs at least one host:port".into(),
                ));
            }
            let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .build()
                .map_err(|e| BrokerError::Internal(format!("cluster url: {e}")))?;
            Ok(Target::Cluster {
                client: Box::new(client),
                nodes,
            })
        } else if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            let client = sentinel_client(rest)
                .map_err(|e| BrokerError::Internal(format!("sentinel url: {e}")))?;
            Ok(Target::Sentinel(Arc::new(Sentinel {
                client: tokio::sync::Mutex::new(client),
                timeout,
            })))
        } else {
            let client = redis::Client::open(url)
                .map_err(|e| BrokerError::Internal(format!("redis url: {e}")))?;
            Ok(Target::Single(client))
        }
    }

    /// A client for one server (not a cluster): the URL's, or the primary the
    /// sentinels name now.
    pub(super) async fn single(&self) -> Result<redis::Client, BrokerError> {
        match self {
            Target::Single(c) => Ok(c.clone()),
            Target::Sentinel(s) => s.primary().await,
            Target::Cluster { .. } => {
                Err(BrokerError::Internal("a cluster is not one server".into()))
            }
        }
    }
}

/// The parts of `[[user]:password@]s1:p1,s2:p2/master-name[/db]`.
#[derive(Debug, PartialEq, Eq)]
struct SentinelUrl<'a> {
    user: Option<&'a str>,
    password: Option<&'a str>,
    sentinels: Vec<(&'a str, u16)>,
    master: &'a str,
    db: i64,
}

fn parse_sentinel_url(rest: &str) -> Result<SentinelUrl<'_>, String> {
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((a, r)) => (Some(a), r),
        None => (None, rest),
    };
    let (user, password) = match auth.map(|a| a.split_once(':').unwrap_or((a, ""))) {
        Some((u, p)) => (
            Some(u).filter(|u| !u.is_empty()),
            Some(p).filter(|p| !p.is_empty()),
        ),
        None => (None, None),
    };
    let (hosts, path) = rest
        .split_once('/')
        .ok_or("the master name is missing: redis+sentinel://host:port,.../master-name")?;
    let (master, db) = match path.split_once('/') {
        Some((m, d)) => (m, d.parse().map_err(|_| format!("bad database {d:?}"))?),
        None => (path, 0),
    };
    if master.is_empty() {
        return Err("the master name is empty".into());
    }
    let sentinels = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| {
            let (host, port) = h
                .rsplit_once(':')
                .ok_or_else(|| format!("sentinel {h:?} has no port"))?;
            let port = port.parse().map_err(|_| format!("bad port in {h:?}"))?;
            Ok((host.trim_start_matches('[').trim_end_matches(']'), port))
        })
        .collect::<Result<Vec<_>, String>>()?;
    if sentinels.is_empty() {
        return Err("no sentinel host:port".into());
    }
    Ok(SentinelUrl {
        user,
        password,
        sentinels,
        master,
        db,
    })
}

fn sentinel_client(rest: &str) -> Result<SentinelClient, String> {
    let url = parse_sentinel_url(rest)?;
    let addrs = url
        .sentinels
        .iter()
        .map(|(h, p)| ConnectionAddr::Tcp((*h).to_owned(), *p));
    let mut b = SentinelClientBuilder::new(addrs, url.master, SentinelServerType::Master)
        .map_err(|e| e.to_string())?
        .set_client_to_redis_db(url.db);
    if let Some(u) = url.user {
        b = b.set_client_to_redis_username(u);
    }
    if let Some(p) = url.password {
        b = b.set_client_to_redis_password(p);
    }
    b.build().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls() {
        let u = parse_sentinel_url("10.0.0.1:26379, 10.0.0.2:26380/mymaster").unwrap();
        assert_eq!(
            u,
            SentinelUrl {
                user: None,
                password: None,
                sentinels: vec![("10.0.0.1", 26379), ("10.0.0.2", 26380)],
                master: "mymaster",
                db: 0,
            }
        );
        let u = parse_sentinel_url(":s3cret@s:1/m/2").unwrap();
        assert_eq!((u.user, u.password, u.db), (None, Some("s3cret"), 2));
        let u = parse_sentinel_url("app:pw@[::1]:26379/m").unwrap();
        assert_eq!((u.user, u.password), (Some("app"), Some("pw")));
        assert_eq!(u.sentinels, vec![("::1", 26379)]);
        for bad in ["s:1", "s:1/", "/m", "s/m", "s:x/m", "s:1/m/x"] {
            assert!(parse_sentinel_url(bad).is_err(), "{bad}");
        }
    }
}
