//! [`SqlStorage`]: GlueSQL's storage traits over one compute node's transactions.

use crate::codec::{self, chunk_count, chunk_key, join_chunks, key_bytes, prefix_end, split};
use compute_node::node::ComputeNode;
use compute_node::txn::{Table, Txn, TxnError};
use gluesql_core::ast::{ColumnDef, IndexOperator, OrderByExpr};
use gluesql_core::chrono::{NaiveDateTime, Utc};
use gluesql_core::data::SchemaIndexOrd;
use gluesql_core::data::{CustomFunction as StructCustomFunction, Key, Schema, SchemaIndex, Value};
use gluesql_core::error::{AlterTableError, Error, IndexError, Result};
use gluesql_core::executor::{evaluate_stateless, RowContext};
use gluesql_core::plan::{plan_scalar_expr, ExprPlan, StatementPlan};
use gluesql_core::planner::{
    fetch_schema_map, plan_aggregate, plan_hash_join, plan_index, plan_primary_key,
    plan_schemaless, validate,
};
use gluesql_core::store::{
    AlterTable, CustomFunction, CustomFunctionMut, Index, IndexMut, MetaIter, Metadata, Planner,
    RowIter, Store, StoreMut, Transaction,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

/// Every error message for a transaction that was rolled back because of a retryable
/// engine conflict starts with this (see [`is_retryable`]).
pub const RETRYABLE: &str = "retryable conflict";

/// Whether `e` says the transaction was rolled back by a conflict and can be run again.
pub fn is_retryable(e: &Error) -> bool {
    matches!(e, Error::StorageMsg(m) if m.starts_with(RETRYABLE))
}

/// A schema entry (engine table `sql.schemas`, key = the SQL table name).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    schema: Schema,
    created: NaiveDateTime,
    /// The engine table (B-link tree) holding the rows.
    tree: String,
    /// Index name -> the engine table holding its entries.
    index_trees: BTreeMap<String, String>,
}

/// An open engine transaction and what this session knows in it.
struct Open {
    txn: Txn,
    autocommit: bool,
    /// Names handed out in this transaction (row ids of `append_data`, tree names).
    seq: u64,
    /// Schema entries read or written in this transaction (its snapshot does not move).
    entries: HashMap<String, Option<Arc<Entry>>>,
}

enum State {
    Idle,
    Open(Box<Open>),
    /// An explicit transaction that failed at the engine: it is aborted there already;
    /// `COMMIT` or `ROLLBACK` ends it here.
    Failed(String),
}

/// What went wrong inside a transaction: the engine's error (the transaction is aborted
/// unless the error was a refused request) or GlueSQL's.
enum Fail {
    Engine(TxnError),
    Sql(Error),
}

impl From<TxnError> for Fail {
    fn from(e: TxnError) -> Self {
        Fail::Engine(e)
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Sql(e)
    }
}

type R<T> = std::result::Result<T, Fail>;

fn msg(m: impl Into<String>) -> Fail {
    Fail::Sql(Error::StorageMsg(m.into()))
}

fn ser<T: Serialize>(v: &T) -> R<Vec<u8>> {
    bincode::serialize(v).map_err(|e| msg(format!("encoding: {e}")))
}

fn de<'a, T: Deserialize<'a>>(b: &'a [u8], what: &str) -> R<T> {
    bincode::deserialize(b).map_err(|e| msg(format!("corrupt {what}: {e}")))
}

/// The message of an engine error that ended the transaction.
fn ended(e: &TxnError) -> String {
    if e.is_retryable() {
        let why = e.to_string();
        let why = why.strip_prefix("retryable conflict: ").unwrap_or(&why);
        format!("{RETRYABLE}: the transaction was rolled back ({why}); it can be retried")
    } else if e.is_unknown() {
        format!("commit outcome unknown: {e}")
    } else {
        format!("engine error, the transaction was rolled back: {e}")
    }
}

/// A session's storage: GlueSQL's storage traits over one compute node. Each session
/// (each `Glue`) has its own; any number of sessions on any number of compute nodes
/// share the tables. See the crate docs for what maps to what.
pub struct SqlStorage {
    node: Arc<ComputeNode>,
    /// Engine table names start with this (`sql.`, or `<namespace>/sql.`).
    prefix: String,
    schemas: Table,
    functions_table: Table,
    state: Mutex<State>,
    /// Custom functions, as of the start of the current statement.
    functions: HashMap<String, StructCustomFunction>,
}

impl SqlStorage {
    /// A session on `node` in the default namespace.
    pub fn new(node: Arc<ComputeNode>) -> std::result::Result<SqlStorage, TxnError> {
        SqlStorage::with_namespace(node, "")
    }

    /// A session whose tables live apart from other namespaces' (a prefix of every
    /// engine table name): the test suite gives each test its own.
    pub fn with_namespace(
        node: Arc<ComputeNode>,
        namespace: &str,
    ) -> std::result::Result<SqlStorage, TxnError> {
        let prefix = if namespace.is_empty() {
            "sql.".to_string()
        } else {
            format!("{namespace}/sql.")
        };
        let schemas = node.ensure_table(&format!("{prefix}schemas"))?;
        let functions_table = node.ensure_table(&format!("{prefix}functions"))?;
        Ok(SqlStorage {
            node,
            prefix,
            schemas,
            functions_table,
            state: Mutex::new(State::Idle),
            functions: HashMap::new(),
        })
    }

    pub fn node(&self) -> &Arc<ComputeNode> {
        &self.node
    }

    /// Whether an explicit transaction (`BEGIN` …) is open.
    pub fn in_transaction(&self) -> bool {
        match &*self.state.lock() {
            State::Open(o) => !o.autocommit,
            State::Failed(_) => true,
            State::Idle => false,
        }
    }

    fn begin_open(&self, autocommit: bool) -> Result<Box<Open>> {
        let txn = self
            .node
            .begin()
            .map_err(|e| Error::StorageMsg(ended(&e)))?;
        Ok(Box::new(Open {
            txn,
            autocommit,
            seq: 0,
            entries: HashMap::new(),
        }))
    }

    /// Runs `f` in the open transaction, or in one of its own when none is open (a
    /// read by the planner, or a storage call outside `Glue`). An engine error that
    /// ends the transaction aborts it: an explicit transaction is then `Failed` until
    /// `COMMIT` or `ROLLBACK`.
    fn run<T>(&self, f: impl FnOnce(&Self, &mut Open) -> R<T>) -> Result<T> {
        let mut state = self.state.lock();
        match &mut *state {
            State::Failed(why) => Err(Error::StorageMsg(format!(
                "{why}; end the transaction (ROLLBACK) first"
            ))),
            State::Open(open) => match f(self, open) {
                Ok(v) => Ok(v),
                Err(Fail::Sql(e)) => Err(e),
                Err(Fail::Engine(e)) if refused(&e) => Err(Error::StorageMsg(e.to_string())),
                Err(Fail::Engine(e)) => {
                    let why = ended(&e);
                    let State::Open(open) = std::mem::replace(&mut *state, State::Idle) else {
                        unreachable!()
                    };
                    let _ = open.txn.abort();
                    if !open.autocommit {
                        *state = State::Failed(why.clone());
                    }
                    Err(Error::StorageMsg(why))
                }
            },
            State::Idle => {
                drop(state);
                let mut open = self.begin_open(true)?;
                match f(self, &mut open) {
                    Ok(v) => {
                        open.txn
                            .commit()
                            .map_err(|e| Error::StorageMsg(ended(&e)))?;
                        Ok(v)
                    }
                    Err(fail) => {
                        let _ = open.txn.abort();
                        Err(match fail {
                            Fail::Sql(e) => e,
                            Fail::Engine(e) => Error::StorageMsg(ended(&e)),
                        })
                    }
                }
            }
        }
    }

    fn table(&self, name: &str) -> R<Table> {
        Ok(self.node.table(name)?)
    }

    /// The schema entry of `table` in this transaction.
    fn entry(&self, o: &mut Open, table: &str) -> R<Option<Arc<Entry>>> {
        if let Some(e) = o.entries.get(table) {
            return Ok(e.clone());
        }
        let e = match Self::read_record(o, &self.schemas, &name_key(table))? {
            Some((raw, _)) => Some(Arc::new(de::<Entry>(&raw, "schema entry")?)),
            None => None,
        };
        o.entries.insert(table.to_string(), e.clone());
        Ok(e)
    }

    fn must_entry(&self, o: &mut Open, table: &str) -> R<Arc<Entry>> {
        self.entry(o, table)?
            .ok_or_else(|| msg(format!("table {table:?} does not exist")))
    }

    fn put_entry(&self, o: &mut Open, name: &str, e: Option<Entry>) -> R<()> {
        let key = name_key(name);
        Self::check_key(&key)?;
        let old = Self::old_chunks(o, &self.schemas, &key)?;
        let raw = e.as_ref().map(ser).transpose()?;
        Self::write_record(o, &self.schemas, &key, old, raw.as_deref())?;
        o.entries.insert(name.to_string(), e.map(Arc::new));
        Ok(())
    }

    fn all_entries(&self, o: &mut Open) -> R<Vec<Arc<Entry>>> {
        let rows = o.txn.scan(
            &self.schemas,
            (Bound::Unbounded, Bound::Unbounded),
            false,
            None,
        )?;
        let rows = join_chunks(rows).map_err(|e| msg(format!("corrupt schema entry: {e}")))?;
        let mut out = Vec::with_capacity(rows.len());
        for (_, v) in rows {
            let e = Arc::new(de::<Entry>(&v, "schema entry")?);
            o.entries
                .insert(e.schema.table_name.clone(), Some(e.clone()));
            out.push(e);
        }
        Ok(out)
    }

    /// A fresh engine table name, unique in the cluster: the transaction id (the GTM
    /// hands each out once) and a counter within the transaction.
    fn fresh_tree(&self, o: &mut Open, kind: &str) -> R<Table> {
        o.seq += 1;
        let name = format!("{}{kind}.{}.{}", self.prefix, o.txn.id().0, o.seq);
        Ok(self.node.create_table(&name)?)
    }

    /// The record stored under `key` (its chunks, reassembled) and its chunk count.
    fn read_record(o: &mut Open, tree: &Table, key: &[u8]) -> R<Option<(Vec<u8>, u16)>> {
        let first = chunk_key(key, 0);
        let Some(chunk0) = o.txn.get(tree, &first)? else {
            return Ok(None);
        };
        let n = chunk_count(&chunk0).ok_or_else(|| msg("corrupt row: short chunk"))?;
        let mut record = chunk0[2..].to_vec();
        if n > 1 {
            let last = chunk_key(key, n - 1);
            let rest = o.txn.scan(
                tree,
                (Bound::Excluded(&first[..]), Bound::Included(&last[..])),
                false,
                None,
            )?;
            if rest.len() + 1 != n as usize {
                return Err(msg(format!(
                    "corrupt row: {} of {n} chunks",
                    rest.len() + 1
                )));
            }
            for (_, c) in rest {
                record.extend_from_slice(&c);
            }
        }
        Ok(Some((record, n)))
    }

    /// How many chunks the record under `key` has (0: none).
    fn old_chunks(o: &mut Open, tree: &Table, key: &[u8]) -> R<u16> {
        match o.txn.get(tree, &chunk_key(key, 0))? {
            Some(c) => chunk_count(&c).ok_or_else(|| msg("corrupt row: short chunk")),
            None => Ok(0),
        }
    }

    /// Writes (or with `None` deletes) the record under `key`, which had `old` chunks.
    fn write_record(
        o: &mut Open,
        tree: &Table,
        key: &[u8],
        old: u16,
        record: Option<&[u8]>,
    ) -> R<()> {
        let chunks = match record {
            Some(r) => split(r).map_err(msg)?,
            None => Vec::new(),
        };
        for (i, c) in chunks.iter().enumerate() {
            o.txn.put(tree, &chunk_key(key, i as u16), c)?;
        }
        for i in chunks.len() as u16..old {
            o.txn.delete(tree, &chunk_key(key, i))?;
        }
        Ok(())
    }

    fn scan_rows(o: &mut Open, tree: &Table) -> R<Vec<(Key, Vec<Value>)>> {
        let entries = o
            .txn
            .scan(tree, (Bound::Unbounded, Bound::Unbounded), false, None)?;
        join_chunks(entries)
            .map_err(|e| msg(format!("corrupt row: {e}")))?
            .into_iter()
            .map(|(_, r)| de(&r, "row"))
            .collect()
    }

    fn check_key(k: &[u8]) -> R<()> {
        if k.len() > codec::MAX_KEY {
            return Err(msg(format!(
                "key of {} bytes is too long (at most {})",
                k.len(),
                codec::MAX_KEY
            )));
        }
        Ok(())
    }

    /// Writes rows (`Some`) or deletes them (`None`), keeping the table's indexes in
    /// step (`maintain`). Every key and record is encoded and checked before anything
    /// is written, so a refused row leaves the statement without effect.
    fn write_rows(
        &self,
        o: &mut Open,
        table: &str,
        rows: Vec<(Key, Option<Vec<Value>>)>,
        maintain: bool,
    ) -> R<()> {
        let entry = self.must_entry(o, table)?;
        let tree = self.table(&entry.tree)?;
        let indexes = if maintain {
            self.planned_indexes(&entry)?
        } else {
            Vec::new()
        };
        let columns = columns_of(&entry.schema);
        let mut encoded = Vec::with_capacity(rows.len());
        for (key, values) in rows {
            let k = key_bytes(&key);
            Self::check_key(&k)?;
            let rec = match &values {
                Some(v) => Some(ser(&(&key, v))?),
                None => None,
            };
            encoded.push((k, rec, values));
        }
        for (k, rec, values) in encoded {
            let old_chunks = if indexes.is_empty() {
                Self::old_chunks(o, &tree, &k)?
            } else {
                let old = Self::read_record(o, &tree, &k)?;
                if let Some((old_rec, _)) = &old {
                    let (_, old_values): (Key, Vec<Value>) = de(old_rec, "row")?;
                    for (itree, expr) in &indexes {
                        let ik = index_key(expr, &columns, &old_values, &k)?;
                        o.txn.delete(itree, &ik)?;
                    }
                }
                if let Some(values) = &values {
                    for (itree, expr) in &indexes {
                        let ik = index_key(expr, &columns, values, &k)?;
                        o.txn.put(itree, &ik, &k)?;
                    }
                }
                old.map_or(0, |(_, n)| n)
            };
            Self::write_record(o, &tree, &k, old_chunks, rec.as_deref())?;
        }
        Ok(())
    }

    fn planned_indexes(&self, entry: &Entry) -> R<Vec<(Table, ExprPlan)>> {
        let mut out = Vec::new();
        for SchemaIndex { name, expr, .. } in &entry.schema.indexes {
            let tree = entry
                .index_trees
                .get(name)
                .ok_or_else(|| msg(format!("index {name:?} has no tree")))?;
            out.push((self.table(tree)?, plan_scalar_expr(expr.clone())));
        }
        Ok(out)
    }

    /// Stores `schema` as the entry of its table: a new table gets a fresh row tree; an
    /// index the schema names without a tree gets one, filled from the rows; trees of
    /// indexes it no longer names are left (the engine has no tree drop).
    fn store_schema(&self, o: &mut Open, schema: &Schema) -> R<()> {
        let name = &schema.table_name;
        let mut entry = match self.entry(o, name)? {
            Some(e) => Entry {
                schema: schema.clone(),
                ..(*e).clone()
            },
            None => Entry {
                schema: schema.clone(),
                created: Utc::now().naive_utc(),
                tree: self.fresh_tree(o, "t")?.name,
                index_trees: BTreeMap::new(),
            },
        };
        entry
            .index_trees
            .retain(|n, _| schema.indexes.iter().any(|i| &i.name == n));
        let new: Vec<SchemaIndex> = schema
            .indexes
            .iter()
            .filter(|i| !entry.index_trees.contains_key(&i.name))
            .cloned()
            .collect();
        if !new.is_empty() {
            let tree = self.table(&entry.tree)?;
            let rows = Self::scan_rows(o, &tree)?;
            let columns = columns_of(schema);
            for index in new {
                let itree = self.fresh_tree(o, "i")?;
                let expr = plan_scalar_expr(index.expr.clone());
                for (key, values) in &rows {
                    let k = key_bytes(key);
                    let ik = index_key(&expr, &columns, values, &k)?;
                    o.txn.put(&itree, &ik, &k)?;
                }
                entry.index_trees.insert(index.name.clone(), itree.name);
            }
        }
        self.put_entry(o, name, Some(entry))
    }

    fn refresh_functions(&mut self) -> Result<()> {
        let table = self.functions_table.clone();
        let rows = self.run(|_, o| {
            Ok(o.txn
                .scan(&table, (Bound::Unbounded, Bound::Unbounded), false, None)?)
        })?;
        let mut functions = HashMap::with_capacity(rows.len());
        for (k, v) in rows {
            let f: StructCustomFunction = de(&v, "function").map_err(into_error)?;
            functions.insert(String::from_utf8_lossy(&k).into_owned(), f);
        }
        self.functions = functions;
        Ok(())
    }
}

/// Whether an engine error refused one request and left the transaction usable.
fn refused(e: &TxnError) -> bool {
    matches!(e, TxnError::BadRequest(m) if !m.contains("must be aborted"))
        || matches!(e, TxnError::NoSuchTable(_))
}

fn into_error(f: Fail) -> Error {
    match f {
        Fail::Sql(e) => e,
        Fail::Engine(e) => Error::StorageMsg(ended(&e)),
    }
}

/// The key of a schema entry: the table name, prefix-free (names may contain zeros).
fn name_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 2);
    compute_node::btree::key::encode_str(&mut k, name);
    k
}

fn columns_of(schema: &Schema) -> Vec<String> {
    schema
        .column_defs
        .as_ref()
        .map(|defs| defs.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default()
}

/// The index entry of a row: the index value's key encoding, then the row key's.
fn index_key(expr: &ExprPlan, columns: &[String], values: &[Value], row_key: &[u8]) -> R<Vec<u8>> {
    let context = Some(RowContext::RefVecData { columns, values });
    let value: Value = evaluate_stateless(context, expr)?.try_into()?;
    let key = Key::try_from(value)?;
    let mut k = key_bytes(&key);
    k.extend_from_slice(row_key);
    if k.len() > compute_node::btree::MAX_KEY_LEN {
        return Err(msg(format!(
            "index entry of {} bytes is too long (at most {})",
            k.len(),
            compute_node::btree::MAX_KEY_LEN
        )));
    }
    Ok(k)
}

impl Store for SqlStorage {
    fn fetch_schema(&self, table_name: &str) -> Result<Option<Schema>> {
        self.run(|s, o| Ok(s.entry(o, table_name)?.map(|e| e.schema.clone())))
    }

    fn fetch_all_schemas(&self) -> Result<Vec<Schema>> {
        self.run(|s, o| {
            Ok(s.all_entries(o)?
                .into_iter()
                .map(|e| e.schema.clone())
                .collect())
        })
    }

    fn fetch_data(&self, table_name: &str, key: &Key) -> Result<Option<Vec<Value>>> {
        self.run(|s, o| {
            let Some(entry) = s.entry(o, table_name)? else {
                return Ok(None);
            };
            let tree = s.table(&entry.tree)?;
            let k = key_bytes(key);
            if k.len() > codec::MAX_KEY {
                return Ok(None);
            }
            match Self::read_record(o, &tree, &k)? {
                Some((rec, _)) => {
                    let (_, values): (Key, Vec<Value>) = de(&rec, "row")?;
                    Ok(Some(values))
                }
                None => Ok(None),
            }
        })
    }

    fn scan_data<'a>(&'a self, table_name: &str) -> Result<RowIter<'a>> {
        let rows = self.run(|s, o| match s.entry(o, table_name)? {
            Some(entry) => {
                let tree = s.table(&entry.tree)?;
                Self::scan_rows(o, &tree)
            }
            None => Ok(Vec::new()),
        })?;
        Ok(Box::new(rows.into_iter().map(Ok)))
    }
}

impl StoreMut for SqlStorage {
    fn insert_schema(&mut self, schema: &Schema) -> Result<()> {
        self.run(|s, o| s.store_schema(o, schema))
    }

    /// Drops the table: its schema entry goes (transactionally: a rollback brings the
    /// table back with its rows). The row tree is left as it is, unreachable: the
    /// engine has no tree drop, and deleting the rows one by one would only add
    /// tombstone versions to pages no one changes again.
    fn delete_schema(&mut self, table_name: &str) -> Result<()> {
        self.run(|s, o| {
            if s.entry(o, table_name)?.is_some() {
                s.put_entry(o, table_name, None)?;
            }
            Ok(())
        })
    }

    /// Rows without a primary key get the key `U128(transaction id << 64 | n)`: the
    /// GTM hands every transaction id out once (across nodes and restarts) and `n`
    /// counts within the transaction, so ids are unique without a shared counter row
    /// that every insert on every node would write; rows also keep their insertion
    /// order (transaction ids grow).
    fn append_data(&mut self, table_name: &str, rows: Vec<Vec<Value>>) -> Result<()> {
        self.run(|s, o| {
            let base = u128::from(o.txn.id().0) << 64;
            let keyed = rows
                .into_iter()
                .map(|r| {
                    o.seq += 1;
                    (Key::U128(base | u128::from(o.seq)), Some(r))
                })
                .collect();
            s.write_rows(o, table_name, keyed, true)
        })
    }

    fn insert_data(&mut self, table_name: &str, rows: Vec<(Key, Vec<Value>)>) -> Result<()> {
        self.run(|s, o| {
            let rows = rows.into_iter().map(|(k, v)| (k, Some(v))).collect();
            s.write_rows(o, table_name, rows, true)
        })
    }

    fn delete_data(&mut self, table_name: &str, keys: Vec<Key>) -> Result<()> {
        self.run(|s, o| {
            let rows = keys.into_iter().map(|k| (k, None)).collect();
            s.write_rows(o, table_name, rows, true)
        })
    }
}

impl Transaction for SqlStorage {
    /// `BEGIN` (`autocommit == false`) opens an engine transaction that the next
    /// `COMMIT` / `ROLLBACK` ends; a statement outside one (`autocommit == true`) gets
    /// its own, which GlueSQL commits after it (the answer `true` says so).
    fn begin(&mut self, autocommit: bool) -> Result<bool> {
        let answer = {
            let mut state = self.state.lock();
            match (&*state, autocommit) {
                (State::Failed(why), _) => {
                    return Err(Error::StorageMsg(format!(
                        "{why}; end the transaction (ROLLBACK) first"
                    )));
                }
                (State::Open(o), false) if !o.autocommit => {
                    return Err(Error::StorageMsg(
                        "nested transaction is not supported".to_owned(),
                    ));
                }
                (State::Open(o), true) if !o.autocommit => false,
                (State::Open(_), _) => {
                    // An autocommit transaction left open (a statement that did not
                    // reach its commit): end it.
                    if let State::Open(o) = std::mem::replace(&mut *state, State::Idle) {
                        let _ = o.txn.abort();
                    }
                    drop(state);
                    return self.begin(autocommit);
                }
                (State::Idle, _) => {
                    drop(state);
                    let open = self.begin_open(autocommit)?;
                    *self.state.lock() = State::Open(open);
                    autocommit
                }
            }
        };
        self.refresh_functions()?;
        Ok(answer)
    }

    fn rollback(&mut self) -> Result<()> {
        let state = std::mem::replace(&mut *self.state.lock(), State::Idle);
        if let State::Open(o) = state {
            o.txn
                .abort()
                .map_err(|e| Error::StorageMsg(e.to_string()))?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        let state = std::mem::replace(&mut *self.state.lock(), State::Idle);
        match state {
            State::Open(o) => {
                o.txn.commit().map_err(|e| Error::StorageMsg(ended(&e)))?;
                Ok(())
            }
            State::Failed(why) => Err(Error::StorageMsg(why)),
            State::Idle => Ok(()),
        }
    }
}

impl AlterTable for SqlStorage {
    /// Moves the schema entry; the rows stay in their tree (no copy).
    fn rename_schema(&mut self, table_name: &str, new_table_name: &str) -> Result<()> {
        self.run(|s, o| {
            let entry = s.entry(o, table_name)?.ok_or_else(|| {
                Fail::Sql(AlterTableError::TableNotFound(table_name.to_owned()).into())
            })?;
            if s.entry(o, new_table_name)?.is_some() {
                return Err(msg(format!("table {new_table_name:?} already exists")));
            }
            let mut moved = (*entry).clone();
            new_table_name.clone_into(&mut moved.schema.table_name);
            s.put_entry(o, table_name, None)?;
            s.put_entry(o, new_table_name, Some(moved))
        })
    }

    fn rename_column(
        &mut self,
        table_name: &str,
        old_column_name: &str,
        new_column_name: &str,
    ) -> Result<()> {
        self.run(|s, o| {
            let entry = s.entry(o, table_name)?.ok_or_else(|| {
                Fail::Sql(AlterTableError::TableNotFound(table_name.to_owned()).into())
            })?;
            let mut schema = entry.schema.clone();
            let defs = schema.column_defs.as_mut().ok_or_else(|| {
                Fail::Sql(AlterTableError::SchemalessTableFound(table_name.to_owned()).into())
            })?;
            if defs.iter().any(|c| c.name == new_column_name) {
                return Err(Fail::Sql(
                    AlterTableError::AlreadyExistingColumn(new_column_name.to_owned()).into(),
                ));
            }
            new_column_name.clone_into(
                &mut defs
                    .iter_mut()
                    .find(|c| c.name == old_column_name)
                    .ok_or(Fail::Sql(AlterTableError::RenamingColumnNotFound.into()))?
                    .name,
            );
            // Rows hold values by position: renaming a column rewrites no row.
            s.store_schema(o, &schema)
        })
    }

    fn add_column(&mut self, table_name: &str, column_def: &ColumnDef) -> Result<()> {
        let default = match (column_def.default.as_ref(), column_def.nullable) {
            (Some(default), _) => {
                let default = plan_scalar_expr(default.clone());
                evaluate_stateless(None, &default)?.try_into()?
            }
            (None, true) => Value::Null,
            (None, false) => {
                return Err(AlterTableError::DefaultValueRequired(column_def.clone()).into());
            }
        };
        self.run(|s, o| {
            let entry = s.entry(o, table_name)?.ok_or_else(|| {
                Fail::Sql(AlterTableError::TableNotFound(table_name.to_owned()).into())
            })?;
            let mut schema = entry.schema.clone();
            let defs = schema.column_defs.as_mut().ok_or_else(|| {
                Fail::Sql(AlterTableError::SchemalessTableFound(table_name.to_owned()).into())
            })?;
            if defs.iter().any(|c| c.name == column_def.name) {
                return Err(Fail::Sql(
                    AlterTableError::AlreadyExistingColumn(column_def.name.clone()).into(),
                ));
            }
            defs.push(column_def.clone());
            let tree = s.table(&entry.tree)?;
            let rows = Self::scan_rows(o, &tree)?
                .into_iter()
                .map(|(k, mut v)| {
                    v.push(default.clone());
                    (k, Some(v))
                })
                .collect();
            s.store_schema(o, &schema)?;
            // Index values do not change (no index names the new column yet).
            s.write_rows(o, table_name, rows, false)
        })
    }

    fn drop_column(&mut self, table_name: &str, column_name: &str, if_exists: bool) -> Result<()> {
        self.run(|s, o| {
            let entry = s.entry(o, table_name)?.ok_or_else(|| {
                Fail::Sql(AlterTableError::TableNotFound(table_name.to_owned()).into())
            })?;
            let mut schema = entry.schema.clone();
            let defs = schema.column_defs.as_mut().ok_or_else(|| {
                Fail::Sql(AlterTableError::SchemalessTableFound(table_name.to_owned()).into())
            })?;
            let Some(i) = defs.iter().position(|c| c.name == column_name) else {
                if if_exists {
                    return Ok(());
                }
                return Err(Fail::Sql(
                    AlterTableError::DroppingColumnNotFound(column_name.to_owned()).into(),
                ));
            };
            defs.remove(i);
            let tree = s.table(&entry.tree)?;
            let rows = Self::scan_rows(o, &tree)?
                .into_iter()
                .map(|(k, mut v)| {
                    if i < v.len() {
                        v.remove(i);
                    }
                    (k, Some(v))
                })
                .collect();
            s.store_schema(o, &schema)?;
            // GlueSQL dropped the indexes that name the column first; the others keep
            // their values.
            s.write_rows(o, table_name, rows, false)
        })
    }
}

impl Index for SqlStorage {
    fn scan_indexed_data<'a>(
        &'a self,
        table_name: &str,
        index_name: &str,
        asc: Option<bool>,
        cmp_value: Option<(&IndexOperator, Value)>,
    ) -> Result<RowIter<'a>> {
        let bound = match cmp_value {
            Some((op, v)) => Some((op.clone(), key_bytes(&Key::try_from(v)?))),
            None => None,
        };
        let rows = self.run(|s, o| {
            let entry = s.entry(o, table_name)?.ok_or_else(|| {
                Fail::Sql(IndexError::TableNotFound(table_name.to_owned()).into())
            })?;
            let itree = entry.index_trees.get(index_name).ok_or_else(|| {
                Fail::Sql(IndexError::IndexNameDoesNotExist(index_name.to_owned()).into())
            })?;
            let itree = s.table(itree)?;
            let tree = s.table(&entry.tree)?;
            let end = bound.as_ref().and_then(|(_, p)| prefix_end(p));
            let range: (Bound<&[u8]>, Bound<&[u8]>) = match &bound {
                None => (Bound::Unbounded, Bound::Unbounded),
                Some((op, p)) => {
                    let upper_end = || match &end {
                        Some(e) => Bound::Excluded(&e[..]),
                        None => Bound::Unbounded,
                    };
                    match op {
                        IndexOperator::Eq => (Bound::Included(&p[..]), upper_end()),
                        IndexOperator::Gt => (
                            match &end {
                                Some(e) => Bound::Included(&e[..]),
                                None => Bound::Excluded(&p[..]),
                            },
                            Bound::Unbounded,
                        ),
                        IndexOperator::GtEq => (Bound::Included(&p[..]), Bound::Unbounded),
                        IndexOperator::Lt => (Bound::Unbounded, Bound::Excluded(&p[..])),
                        IndexOperator::LtEq => (Bound::Unbounded, upper_end()),
                    }
                }
            };
            let reverse = asc == Some(false);
            let entries = o.txn.scan(&itree, range, reverse, None)?;
            let mut rows = Vec::with_capacity(entries.len());
            for (_, row_key) in entries {
                if let Some((rec, _)) = Self::read_record(o, &tree, &row_key)? {
                    rows.push(de::<(Key, Vec<Value>)>(&rec, "row")?);
                }
            }
            Ok(rows)
        })?;
        Ok(Box::new(rows.into_iter().map(Ok)))
    }
}

impl IndexMut for SqlStorage {
    fn create_index(
        &mut self,
        table_name: &str,
        index_name: &str,
        column: &OrderByExpr,
    ) -> Result<()> {
        self.run(|s, o| {
            let entry = s.entry(o, table_name)?.ok_or_else(|| {
                Fail::Sql(IndexError::TableNotFound(table_name.to_owned()).into())
            })?;
            if entry.schema.indexes.iter().any(|i| i.name == index_name) {
                return Err(Fail::Sql(
                    IndexError::IndexNameAlreadyExists(index_name.to_owned()).into(),
                ));
            }
            let mut schema = entry.schema.clone();
            schema.indexes.push(SchemaIndex {
                name: index_name.to_owned(),
                expr: column.expr.clone(),
                order: match column.asc {
                    Some(true) => SchemaIndexOrd::Asc,
                    Some(false) => SchemaIndexOrd::Desc,
                    None => SchemaIndexOrd::Both,
                },
                created: Utc::now().naive_utc(),
            });
            s.store_schema(o, &schema)
        })
    }

    fn drop_index(&mut self, table_name: &str, index_name: &str) -> Result<()> {
        self.run(|s, o| {
            let entry = s.entry(o, table_name)?.ok_or_else(|| {
                Fail::Sql(IndexError::TableNotFound(table_name.to_owned()).into())
            })?;
            if !entry.schema.indexes.iter().any(|i| i.name == index_name) {
                return Err(Fail::Sql(
                    IndexError::IndexNameDoesNotExist(index_name.to_owned()).into(),
                ));
            }
            let mut schema = entry.schema.clone();
            schema.indexes.retain(|i| i.name != index_name);
            s.store_schema(o, &schema)
        })
    }
}

impl Metadata for SqlStorage {
    fn scan_table_meta(&self) -> Result<MetaIter> {
        let metas = self.run(|s, o| {
            Ok(s.all_entries(o)?
                .into_iter()
                .map(|e| {
                    let meta =
                        BTreeMap::from([("CREATED".to_owned(), Value::Timestamp(e.created))]);
                    (e.schema.table_name.clone(), meta)
                })
                .collect::<Vec<_>>())
        })?;
        Ok(Box::new(metas.into_iter().map(Ok)))
    }
}

impl CustomFunction for SqlStorage {
    fn fetch_function<'a>(&'a self, func_name: &str) -> Result<Option<&'a StructCustomFunction>> {
        Ok(self.functions.get(&func_name.to_uppercase()))
    }

    fn fetch_all_functions(&self) -> Result<Vec<&StructCustomFunction>> {
        let mut all: Vec<_> = self.functions.iter().collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        Ok(all.into_iter().map(|(_, f)| f).collect())
    }
}

impl CustomFunctionMut for SqlStorage {
    fn insert_function(&mut self, func: StructCustomFunction) -> Result<()> {
        let name = func.func_name.to_uppercase();
        let table = self.functions_table.clone();
        self.run(|_, o| {
            let raw = ser(&func)?;
            o.txn.put(&table, name.as_bytes(), &raw)?;
            Ok(())
        })?;
        self.functions.insert(name, func);
        Ok(())
    }

    fn delete_function(&mut self, func_name: &str) -> Result<()> {
        let name = func_name.to_uppercase();
        let table = self.functions_table.clone();
        self.run(|_, o| {
            o.txn.delete(&table, name.as_bytes())?;
            Ok(())
        })?;
        self.functions.remove(&name);
        Ok(())
    }
}

impl Planner for SqlStorage {
    /// GlueSQL's planner with index planning; outside a transaction its schema reads
    /// share one engine transaction (instead of one each).
    fn plan(&self, statement: StatementPlan) -> Result<StatementPlan> {
        if matches!(
            statement,
            StatementPlan::StartTransaction | StatementPlan::Commit | StatementPlan::Rollback
        ) {
            return Ok(statement); // nothing to plan, no schema to read
        }
        let temporary = {
            let mut state = self.state.lock();
            if matches!(*state, State::Idle) {
                *state = State::Open(self.begin_open(true)?);
                true
            } else {
                false
            }
        };
        let planned = (|| {
            let schema_map = fetch_schema_map(self, &statement)?;
            validate(&schema_map, &statement)?;
            let statement = plan_schemaless(&schema_map, statement)?;
            let statement = plan_primary_key(&schema_map, statement);
            let statement = plan_index(&schema_map, statement);
            let statement = plan_hash_join(&schema_map, statement);
            Ok(plan_aggregate(statement))
        })();
        if temporary {
            if let State::Open(o) = std::mem::replace(&mut *self.state.lock(), State::Idle) {
                o.txn.commit().map_err(|e| Error::StorageMsg(ended(&e)))?;
            }
        }
        planned
    }
}
