//! The fabric RPC service: decodes each request of a batch and hands it to the engine.

use crate::store::Store;
use common::fabric::{PeerInfo, Request, RpcService};
use common::storage::msg::{encode_response, Envelope};
use std::sync::Arc;

pub struct StorageService {
    pub store: Arc<Store>,
}

impl RpcService for StorageService {
    fn handle_batch(&self, peer: &PeerInfo, batch: Vec<Request>) {
        for req in batch {
            match Envelope::decode(&req.payload) {
                Ok(env) => self.store.handle(peer.conn_id, env, req.replier),
                Err(e) => {
                    tracing::debug!(peer = %peer, error = %e, "malformed storage request");
                    req.replier.reply(Ok(encode_response(&Err(e))));
                }
            }
        }
    }

    fn disconnected(&self, peer: &PeerInfo) {
        self.store.disconnected(peer.conn_id);
    }
}
