//! One reply inbox per replica for command outcomes: a single wildcard subscription
//! instead of one subscription per API call. Each call registers a token and gets the
//! outcome published to `<prefix>.<token>` by whichever replica processed its command.

use berth_messages::codec;
use berth_messages::command::Outcome;
use dashmap::DashMap;
use futures::StreamExt;
use std::sync::Arc;
use tokio::sync::oneshot;

pub struct Replies {
    prefix: String,
    pending: DashMap<String, oneshot::Sender<Delivered>>,
}

/// An outcome for a waiting API call, with its response body already encoded as named
/// MessagePack when this replica's processor encoded it (for a MessagePack reply).
pub struct Delivered {
    pub outcome: Outcome,
    pub msgpack_body: Option<Vec<u8>>,
}

/// A registered wait; dropping it forgets the token.
pub struct Waiter {
    replies: Arc<Replies>,
    token: String,
    pub subject: String,
    pub outcome: oneshot::Receiver<Delivered>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.replies.pending.remove(&self.token);
    }
}

impl Replies {
    pub async fn start(
        client: &async_nats::Client,
    ) -> Result<Arc<Replies>, async_nats::SubscribeError> {
        let prefix = client.new_inbox();
        let mut sub = client.subscribe(format!("{prefix}.*")).await?;
        let replies = Arc::new(Replies {
            prefix,
            pending: DashMap::new(),
        });
        let weak = Arc::downgrade(&replies);
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(replies) = weak.upgrade() else { break };
                let Some(token) = msg.subject.rsplit('.').next() else {
                    continue;
                };
                let Some((_, tx)) = replies.pending.remove(token) else {
                    continue;
                };
                match codec::decode_record::<Outcome>(&msg.payload) {
                    Ok(outcome) => {
                        let _ = tx.send(Delivered {
                            outcome,
                            msgpack_body: None,
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "undecodable outcome on reply inbox"),
                }
            }
        });
        Ok(replies)
    }

    /// Hands `delivered` to the call waiting on `subject` if that subject is this inbox's;
    /// false when it belongs to another replica (or client).
    pub fn deliver_local(&self, subject: &str, delivered: Delivered) -> bool {
        let Some(token) = subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
        else {
            return false;
        };
        if let Some((_, tx)) = self.pending.remove(token) {
            let _ = tx.send(delivered);
        }
        true
    }

    pub fn register(self: &Arc<Self>) -> Waiter {
        let token = crate::ids::fresh_command_id();
        let (tx, rx) = oneshot::channel();
        self.pending.insert(token.clone(), tx);
        Waiter {
            replies: self.clone(),
            subject: format!("{}.{token}", self.prefix),
            token,
            outcome: rx,
        }
    }
}
