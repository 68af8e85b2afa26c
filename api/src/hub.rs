//! In-process fan-out of conversation events to open sockets, and the
//! registry of open sockets that a revocation closes.
//!
//! Each conversation with a listener has a [`Topic`]: a bounded broadcast
//! ring (a socket that falls [`EVENT_BUFFER`] events behind is told it
//! lagged and is closed with 1013) and a lock that makes "append to the store,
//! then broadcast" one step, so sockets receive events in sequence order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{Notify, broadcast};

/// Events a socket may fall behind before it is closed with 1013.
pub const EVENT_BUFFER: usize = 256;

/// One event, rendered once as its server frame.
#[derive(Debug, Clone)]
pub struct Event {
    /// Its sequence number in the conversation.
    pub seq: i64,
    /// `{"type":"event","seq":N,"data":…}`.
    pub frame: Utf8Bytes,
}

/// The broadcast point of one conversation.
#[derive(Debug)]
pub struct Topic {
    tx: broadcast::Sender<Event>,
    /// Held across "append, then send" so the order on sockets is the
    /// sequence order.
    pub write: tokio::sync::Mutex<()>,
}

impl Topic {
    /// Send to every current subscriber (none is fine).
    pub fn send(&self, ev: Event) {
        let _ = self.tx.send(ev);
    }
}

/// Every topic with a subscriber or a writer.
#[derive(Debug, Default)]
pub struct Hub {
    topics: Mutex<HashMap<String, Arc<Topic>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain maps behind; keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Hub {
    /// The topic of `conversation`, created if needed.
    pub fn topic(&self, conversation: &str) -> Arc<Topic> {
        let mut map = lock(&self.topics);
        map.entry(conversation.to_owned())
            .or_insert_with(|| {
                let (tx, _) = broadcast::channel(EVENT_BUFFER);
                Arc::new(Topic {
                    tx,
                    write: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    }

    /// Subscribe to `conversation`'s events.
    pub fn subscribe(&self, conversation: &str) -> broadcast::Receiver<Event> {
        self.topic(conversation).tx.subscribe()
    }

    /// Forget `conversation`'s topic if nobody listens or writes (call after
    /// dropping a receiver).
    pub fn release(&self, conversation: &str) {
        let mut map = lock(&self.topics);
        if let Some(t) = map.get(conversation) {
            // One reference is the map's own.
            if t.tx.receiver_count() == 0 && Arc::strong_count(t) == 1 {
                map.remove(conversation);
            }
        }
    }

    /// How many topics exist (tests).
    pub fn len(&self) -> usize {
        lock(&self.topics).len()
    }

    /// Whether no topic exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Open sockets by identity, so a revocation can close them.
#[derive(Debug, Default)]
pub struct Sessions {
    next: AtomicU64,
    map: Mutex<HashMap<u64, SessionEntry>>,
}

#[derive(Debug)]
struct SessionEntry {
    org: String,
    sub: String,
    revoked: Arc<Notify>,
}

/// A registered socket; unregisters on drop.
#[derive(Debug)]
pub struct SessionGuard<'a> {
    sessions: &'a Sessions,
    id: u64,
    /// Notified when the socket's user or org is revoked.
    pub revoked: Arc<Notify>,
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        lock(&self.sessions.map).remove(&self.id);
    }
}

impl Sessions {
    /// Register a socket of (org, sub).
    pub fn register(&self, org: &str, sub: &str) -> SessionGuard<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let revoked = Arc::new(Notify::new());
        let entry = SessionEntry {
            org: org.to_owned(),
            sub: sub.to_owned(),
            revoked: revoked.clone(),
        };
        lock(&self.map).insert(id, entry);
        SessionGuard {
            sessions: self,
            id,
            revoked,
        }
    }

    /// Close the sockets of (org, sub), or of the whole org when `sub` is
    /// `*`; how many.
    pub fn revoke(&self, org: &str, sub: &str) -> usize {
        let map = lock(&self.map);
        let mut n = 0;
        for e in map.values() {
            if e.org == org && (sub == "*" || e.sub == sub) {
                e.revoked.notify_one();
                n += 1;
            }
        }
        n
    }

    /// How many sockets are open.
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// Whether no socket is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
