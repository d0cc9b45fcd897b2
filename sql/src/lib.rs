//! # sql
//!
//! SQL over the engine: a [GlueSQL](https://crates.io/crates/gluesql-core) storage
//! backend, so every compute node of a cluster runs SQL over the same tables.
//!
//! What maps to what:
//!
//! | GlueSQL | engine |
//! |---|---|
//! | a session (`Glue<SqlStorage>`) | a [`SqlStorage`] on one [`ComputeNode`](compute_node::node::ComputeNode); any number per node |
//! | `BEGIN` … `COMMIT` / `ROLLBACK` | one engine transaction ([`Txn`](compute_node::txn::Txn)): snapshot isolation, `commit` / `abort` |
//! | a statement outside `BEGIN` | its own engine transaction, committed after the statement |
//! | a retryable conflict (first updater wins, a wound, a lock-wait timeout) | the transaction is aborted; the error says `retryable conflict: … it can be retried` ([`is_retryable`]); inside `BEGIN` later statements fail until `ROLLBACK` |
//! | a table's schema (`Schema`, bincode) | a row of the engine table `sql.schemas` (key: the table name, prefix-free encoded; chunked like rows), with its creation time and the names of its row and index trees |
//! | a table's rows | one engine table (B-link tree) `sql.t.<txn id>.<n>` per `CREATE TABLE`; key = the GlueSQL `Key` encoded order-preservingly ([`codec`]), value = bincode `(Key, Vec<Value>)` in chunks of at most [`codec::CHUNK`] bytes |
//! | a row without a primary key | key `U128(creating transaction id << 64 \| n)`: unique across nodes with no shared counter |
//! | an index (`CREATE INDEX`) | one engine table `sql.i.<txn id>.<n>`: key = the indexed value's encoding + the row key, value = the row key |
//! | `DROP TABLE` / `DROP INDEX` | the schema entry goes (transactionally); the tree stays unreachable (the engine has no tree drop) |
//! | `ALTER TABLE … RENAME TO` | the schema entry moves; rows stay where they are |
//! | custom functions | rows of `sql.functions`, read at the start of each statement |
//! | `GLUE_OBJECTS.CREATED` ([`Metadata`](gluesql_core::store::Metadata)) | the creation time kept in the schema entry |
//!
//! GlueSQL's storage traits are synchronous (since 0.17); the engine's calls block
//! (on the storage nodes, the GTM, row-lock waits) inside them, which suits an
//! embedded storage.
//!
//! DDL is transactional (schema entries are rows) but takes no table lock: a DML
//! transaction concurrent with a `DROP TABLE` or `ALTER TABLE` of its table on another
//! session reads the schema of its snapshot and may write rows the other's new schema
//! does not expect. Run DDL while no other session writes the table.

pub mod codec;
pub mod shell;
mod storage;

pub use storage::{is_retryable, SqlStorage, RETRYABLE};
