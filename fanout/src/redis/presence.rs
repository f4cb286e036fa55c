//! Presence: entries in Redis that expire unless refreshed, and this node's own
//! table of the entries it added, which it re-puts periodically (in batches, several
//! in flight) so that a crashed node's entries go away by themselves.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use shared::envelope::EnvelopeClientInfo;

use super::command::{args, Commands};
use crate::broker::{BrokerError, ClientInfo};

/// Entries per refresh call: one script call per room and chunk keeps Redis's
/// single thread from running one long script for a huge room.
const PRESENCE_REFRESH_BATCH: usize = 256;

/// Refresh calls in flight at once, pipelined on the multiplexed connection.
const PRESENCE_REFRESH_CONCURRENCY: usize = 16;

/// A room's presence entries held by this node: client id and encoded info.
type PresenceEntries = Vec<(String, Vec<u8>)>;

pub(super) struct Presence {
    commands: Arc<Commands>,
    ttl: Duration,
    /// Presence entries this node added, refreshed periodically: room -> client -> info.
    local: Mutex<HashMap<String, HashMap<String, Vec<u8>>>>,
}

impl Presence {
    pub(super) fn new(commands: Arc<Commands>, ttl: Duration) -> Self {
        Presence {
            commands,
            ttl,
            local: Mutex::new(HashMap::new()),
        }
    }

    /// Record that `info.client` is in `room`, and keep refreshing it.
    pub(super) async fn add_entry(&self, room: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        let bytes = rmp_encode_info(info)?;
        // Recorded here first, so that a refresh running meanwhile does not take
        // the entry for a removed one and delete it again.
        self.local
            .lock()
            .entry(room.to_owned())
            .or_default()
            .insert(info.client.clone(), bytes.clone());
        let res = self.put(room, &[(info.client.clone(), bytes)]).await;
        if res.is_err() {
            self.forget_local(room, &info.client);
        }
        res
    }

    /// Remove one entry, and stop refreshing it.
    pub(super) async fn remove_entry(&self, room: &str, client: &str) -> Result<(), BrokerError> {
        self.forget_local(room, client);
        self.delete(room, client).await
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
        let batches: Vec<(String, PresenceEntries)> = {
            let presence = self.local.lock();
            presence
                .iter()
                .flat_map(|(room, members)| {
                    let entries: PresenceEntries = members
                        .iter()
                        .map(|(c, i)| (c.clone(), i.clone()))
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
    }

    /// A member who left while its entry was being refreshed may have been put back
    /// after its removal reached Redis: remove it again.
    async fn forget_removed(&self, room: &str, refreshed: &[(String, Vec<u8>)]) {
        let gone: Vec<&str> = {
            let presence = self.local.lock();
            let members = presence.get(room);
            refreshed
                .iter()
                .filter(|(c, _)| !members.is_some_and(|m| m.contains_key(c)))
                .map(|(c, _)| c.as_str())
                .collect()
        };
        for client in gone {
            if let Err(e) = self.delete(room, client).await {
                tracing::debug!(%room, error = %e, "presence removal after refresh failed");
            }
        }
    }

    /// Put presence entries (client id, encoded info) of one room.
    async fn put(&self, room: &str, entries: &[(String, Vec<u8>)]) -> Result<(), BrokerError> {
        let c = &self.commands;
        let keys = c.keys.presence_keys(room);
        let mut args = Vec::with_capacity(1 + 2 * entries.len());
        args.push(self.ttl.as_secs().max(1).to_string().into_bytes());
        for (client, info) in entries {
            args.push(client.as_bytes().to_vec());
            args.push(info.clone());
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
    async fn delete(&self, room: &str, client: &str) -> Result<(), BrokerError> {
        let c = &self.commands;
        let keys = c.keys.presence_keys(room);
        c.eval::<i64>(&c.scripts.presence_remove, &keys, &args![client], true)
            .await
            .map(|_| ())
    }
}

fn rmp_encode_info(info: &ClientInfo) -> Result<Vec<u8>, BrokerError> {
    rmp_serde::to_vec(&EnvelopeClientInfo::from(info))
        .map_err(|e| BrokerError::Internal(e.to_string()))
}
