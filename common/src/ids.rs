//! Newtypes for the domain values that cross function and process boundaries.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident($inner:ty)) => {
        $(#[$m])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// A registered memory region on one server.
    RegionId(u32)
);
id_type!(
    /// A page of the shared page space (8 KiB each).
    PageId(u64)
);
id_type!(
    /// Per-page version, bumped by one on every change (invariant 1 of docs/design.md).
    PageVersion(u64)
);
id_type!(
    /// Log sequence number within one node's redo stream.
    Lsn(u64)
);
id_type!(
    /// A compute, storage or GTM node.
    NodeId(u32)
);
id_type!(
    /// Incarnation of a node: a restarted node gets a new, larger epoch.
    Epoch(u32)
);
id_type!(
    /// A transaction.
    TxnId(u64)
);
id_type!(
    /// A GTM timestamp (snapshot or commit), strictly increasing across restarts.
    Timestamp(u64)
);
