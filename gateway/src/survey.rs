//! Channel surveys, for the `channels` API: which rooms every node serves. The
//! asking node publishes a query on the control channel, every node answers with
//! its matching rooms, and the asker gathers answers until each live node has
//! answered or the timeout passes. Queues are bounded; a node too busy to take a
//! query leaves the survey short rather than growing memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::mpsc;

/// Queries waiting for this node's answer.
const QUERY_QUEUE: usize = 64;

/// Answers one open survey may hold before they are read (more than a cluster
/// has nodes).
const ANSWER_QUEUE: usize = 1024;

/// A query this node is to answer.
#[derive(Debug)]
pub(crate) struct Query {
    pub(crate) id: u64,
    pub(crate) from: String,
    pub(crate) pattern: String,
}

/// One node's answer: rooms and their subscriber counts.
pub(crate) type Answer = Vec<(String, u32)>;

pub(crate) struct Surveys {
    /// This node's id: answers addressed to it are ours.
    node_id: String,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, mpsc::Sender<Answer>>>,
    queries: mpsc::Sender<Query>,
}

impl Surveys {
    /// The surveys of node `node_id`, and where the queries it must answer arrive.
    pub(crate) fn new(node_id: String) -> (Self, mpsc::Receiver<Query>) {
        let (tx, rx) = mpsc::channel(QUERY_QUEUE);
        let surveys = Surveys {
            node_id,
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            queries: tx,
        };
        (surveys, rx)
    }

    /// A query arrived (from the broker's delivery path: never blocks).
    pub(crate) fn on_query(&self, query: Query) {
        if self.queries.try_send(query).is_err() {
            tracing::warn!("survey query dropped: too many waiting");
        }
    }

    /// An answer arrived (from the broker's delivery path: never blocks).
    pub(crate) fn on_answer(&self, id: u64, to: &str, answer: Answer) {
        if to != self.node_id {
            return;
        }
        if let Some(tx) = self.pending.lock().get(&id) {
            if tx.try_send(answer).is_err() {
                tracing::warn!(id, "survey answer dropped");
            }
        }
    }

    /// Open a survey: its id and where its answers arrive. Close it with
    /// [`Surveys::close`].
    pub(crate) fn open(&self) -> (u64, mpsc::Receiver<Answer>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(ANSWER_QUEUE);
        self.pending.lock().insert(id, tx);
        (id, rx)
    }

    pub(crate) fn close(&self, id: u64) {
        self.pending.lock().remove(&id);
    }

    pub(crate) fn node_id(&self) -> &str {
        &self.node_id
    }
}

/// Whether `name` matches the glob `pattern`: `*` any run of characters, `?` one
/// character, anything else itself; an empty pattern matches everything.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    if pattern.is_empty() {
        return true;
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matching with one backtrack point (the last `*`): linear in
    // practice, never exponential.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, n, want) in [
            ("", "anything", true),
            ("chat", "chat", true),
            ("chat", "chats", false),
            ("chat:*", "chat:index", true),
            ("chat:*", "news:index", false),
            ("*", "", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*room*", "a room b", true),
            ("*a*b", "xaxb", true),
            ("*a*b", "xaxc", false),
            ("**", "x", true),
            ("é*", "été", true),
        ] {
            assert_eq!(glob_match(p, n), want, "{p:?} {n:?}");
        }
    }

    #[test]
    fn a_long_adversarial_pattern_finishes() {
        let name = "a".repeat(5000);
        let pattern = format!("{}b", "*a".repeat(200));
        assert!(!glob_match(&pattern, &name));
    }

    #[tokio::test]
    async fn answers_reach_only_their_open_survey() {
        let (s, _queries) = Surveys::new("me".into());
        let (id, mut rx) = s.open();
        s.on_answer(id, "someone-else", vec![("x".into(), 1)]);
        s.on_answer(id + 1, "me", vec![("y".into(), 1)]);
        s.on_answer(id, "me", vec![("z".into(), 2)]);
        assert_eq!(rx.recv().await.unwrap(), vec![("z".to_string(), 2)]);
        assert!(rx.try_recv().is_err());
        s.close(id);
        s.on_answer(id, "me", vec![("w".into(), 1)]);
        assert!(rx.recv().await.is_none());
    }
}
