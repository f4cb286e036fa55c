//! Presence: entries in Redis that expire unless refreshed, and this node's own
//! table of the entries it added, which it re-puts periodically (in batches, several
//! in flight) so that a crashed node's entries go away by themselves. A per-user
//! count beside the entries makes `presence_stats` two counts, not a full read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::Mutex;
use shared::envelope::EnvelopeClientInfo;

use super::command::{args, Commands};
use crate::broker::{BrokerError, ClientInfo, PresenceStats};

/// Entries per refresh call: one script call per room and chunk keeps Redis's
/// single thread from running one long script for a huge room.
const PRESENCE_REFRESH_BATCH: usize = 256;

/// Refresh calls in flight at once, pipelined on the multiplexed connection.
const PRESENCE_REFRESH_CONCURRENCY: usize = 16;

/// This node's entries of one room: client id -> (user, encoded info).
type RoomEntries = HashMap<String, (String, Vec<u8>)>;

/// One presence entry as Redis holds it: client id, user, encoded info.
#[derive(Clone)]
struct Entry {
    client: String,
    user: String,
    info: Vec<u8>,
}

pub(super) struct Presence {
    commands: Arc<Commands>,
    ttl: Duration,
    /// Presence entries this node added, refreshed periodically:
    /// room -> client -> (user, info).
    local: Mutex<HashMap<String, RoomEntries>>,
    /// Refresh rounds, and the microseconds they took in all.
    refreshes: AtomicU64,
    refresh_micros: AtomicU64,
}

impl Presence {
    pub(super) fn new(commands: Arc<Commands>, ttl: Duration) -> Self {
        Presence {
            commands,
            ttl,
            local: Mutex::new(HashMap::new()),
            refreshes: AtomicU64::new(0),
            refresh_micros: AtomicU64::new(0),
        }
    }

    /// Record that `info.client` is in `room`, and keep refreshing it.
    pub(super) async fn add_entry(&self, room: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        let entry = Entry {
            client: info.client.clone(),
            user: info.user.clone(),
            info: rmp_encode_info(info)?,
        };
        // Recorded here first, so that a refresh running meanwhile does not take
        // the entry for a removed one and delete it again.
        self.local
            .lock()
            .entry(room.to_owned())
            .or_default()
            .insert(
                entry.client.clone(),
                (entry.user.clone(), entry.info.clone()),
            );
        let res = self.put(room, std::slice::from_ref(&entry)).await;
        if res.is_err() {
            self.forget_local(room, &info.client);
        }
        res
    }

    /// Remove one entry, and stop refreshing it.
    pub(super) async fn remove_entry(
        &self,
        room: &str,
        info: &ClientInfo,
    ) -> Result<(), BrokerError> {
        self.forget_local(room, &info.client);
        self.delete(room, &info.client, &info.user).await
    }

    /// The room's live entries and distinct users, counted in Redis.
    pub(super) async fn stats(&self, room: &str) -> Result<PresenceStats, BrokerError> {
        let c = &self.commands;
        let keys = c.keys.presence_keys(room);
        let (clients, users): (u64, u64) =
            c.eval(&c.scripts.presence_stats, &keys, &[], true).await?;
        Ok(PresenceStats {
            num_clients: u32::try_from(clients).unwrap_or(u32::MAX),
            num_users: u32::try_from(users).unwrap_or(u32::MAX),
        })
    }

    /// Every live entry of `room`, by client id.
    pub(super) async fn members(
        &self,
        room: &str,
    ) -> Result<HashMap<String, ClientInfo>, BrokerError> {
        let c = &self.commands;
        let keys = c.keys.presence_keys(room);
        let entries: Vec<(String, Vec<u8>)> =
            c.eval(&c.scripts.presence_get, &keys, &[], true).await?;
        let mut out = HashMap::with_capacity(entries.len());
        for (client, bytes) in entries {
            match rmp_serde::from_slice::<EnvelopeClientInfo>(&bytes).map(|e| e.to_client_info()) {
                Ok(Ok(info)) => {
                    out.insert(client, info);
                }
                _ => tracing::warn!(%room, %client, "undecodable presence entry"),
            }
        }
        Ok(out)
    }

    /// Re-put this node's presence entries before their TTL runs out: one script call
    /// per room (and per chunk of a large room), several in flight. One call per entry,
    /// one after another, took a round trip each: at 1 ms per round trip a node with
    /// 20,000 members needed the whole refresh interval, and entries began to expire.
    pub(super) async fn refresh_entries(&self) {
        let start = Instant::now();
        let batches: Vec<(String, Vec<Entry>)> = {
            let presence = self.local.lock();
            presence
                .iter()
                .flat_map(|(room, members)| {
                    let entries: Vec<Entry> = members
                        .iter()
                        .map(|(c, (u, i))| Entry {
                            client: c.clone(),
                            user: u.clone(),
                            info: i.clone(),
                        })
                        .collect();
                    entries
                        .chunks(PRESENCE_REFRESH_BATCH)
                        .map(|chunk| (room.clone(), chunk.to_vec()))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let failed = futures_util::stream::iter(batches)
            .map(|(room, entries)| async move {
                let res = self.put(&room, &entries).await;
                if res.is_ok() {
                    self.forget_removed(&room, &entries).await;
                }
                res
            })
            .buffer_unordered(PRESENCE_REFRESH_CONCURRENCY)
            .filter_map(|r| async move { r.err() })
            .collect::<Vec<_>>()
            .await;
        if let Some(e) = failed.first() {
            tracing::debug!(failed = failed.len(), error = %e, "presence refresh failed");
        }
        let took = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.refresh_micros.fetch_add(took, Ordering::Relaxed);
        self.refreshes.fetch_add(1, Ordering::Relaxed);
    }

    /// Refresh rounds since start, and the seconds they took in all.
    pub(super) fn refresh_stats(&self) -> (u64, f64) {
        let micros = self.refresh_micros.load(Ordering::Relaxed);
        (self.refreshes.load(Ordering::Relaxed), micros as f64 / 1e6)
    }

    /// A member who left while its entry was being refreshed may have been put back
    /// after its removal reached Redis: remove it again.
    async fn forget_removed(&self, room: &str, refreshed: &[Entry]) {
        let gone: Vec<&Entry> = {
            let presence = self.local.lock();
            let members = presence.get(room);
            refreshed
                .iter()
                .filter(|e| !members.is_some_and(|m| m.contains_key(&e.client)))
                .collect()
        };
        for e in gone {
            if let Err(e) = self.delete(room, &e.client, &e.user).await {
                tracing::debug!(%room, error = %e, "presence removal after refresh failed");
            }
        }
    }

    /// Put presence entries of one room.
    async fn put(&self, room: &str, entries: &[Entry]) -> Result<(), BrokerError> {
        let c = &self.commands;
        let keys = c.keys.presence_keys(room);
        let mut args = Vec::with_capacity(1 + 3 * entries.len());
        args.push(self.ttl.as_secs().max(1).to_string().into_bytes());
        for e in entries {
            args.push(e.client.as_bytes().to_vec());
            args.push(e.user.as_bytes().to_vec());
            args.push(e.info.clone());
        }
        c.eval::<i64>(&c.scripts.presence_add, &keys, &args, true)
            .await
            .map(|_| ())
    }

    /// Stop refreshing one presence entry.
    fn forget_local(&self, room: &str, client: &str) {
        let mut p = self.local.lock();
        if let Some(m) = p.get_mut(room) {
            m.remove(client);
            if m.is_empty() {
                p.remove(room);
            }
        }
    }

    /// Remove one presence entry from Redis.
    async fn delete(&self, room: &str, client: &str, user: &str) -> Result<(), BrokerError> {
        let c = &self.commands;
        let keys = c.keys.presence_keys(room);
        c.eval::<i64>(
            &c.scripts.presence_remove,
            &keys,
            &args![client, user],
            true,
        )
        .await
        .map(|_| ())
    }
}

fn rmp_encode_info(info: &ClientInfo) -> Result<Vec<u8>, BrokerError> {
    rmp_serde::to_vec(&EnvelopeClientInfo::from(info))
        .map_err(|e| BrokerError::Internal(e.to_string()))
}
