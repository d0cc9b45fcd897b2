//! What the `dsb-sql` shell does with text: split it into statements, run them in a
//! session, print the answers as plain tables.

use crate::{is_retryable, SqlStorage};
use gluesql_core::prelude::{Glue, Payload, PayloadVariable, Value};
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// Splits SQL text into statements at `;` outside quotes and comments. Returns the
/// complete statements (without the `;`, trimmed, empty ones dropped) and the text
/// after the last `;` (an unfinished statement, or only whitespace and comments).
pub fn split_statements(text: &str) -> (Vec<String>, String) {
    #[derive(PartialEq)]
    enum In {
        Code,
        Single,
        Double,
        Line,
        Block,
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut state = In::Code;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match state {
            In::Code => match c {
                ';' => {
                    let s = cur.trim();
                    if !s.is_empty() && !only_comments(s) {
                        out.push(s.to_string());
                    }
                    cur.clear();
                    continue;
                }
                '\'' => state = In::Single,
                '"' => state = In::Double,
                '-' if chars.peek() == Some(&'-') => state = In::Line,
                '/' if chars.peek() == Some(&'*') => state = In::Block,
                _ => {}
            },
            In::Single if c == '\'' => state = In::Code,
            In::Double if c == '"' => state = In::Code,
            In::Line if c == '\n' => state = In::Code,
            In::Block if c == '*' && chars.peek() == Some(&'/') => {
                cur.push(c);
                cur.push(chars.next().expect("peeked"));
                state = In::Code;
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    (out, cur)
}

/// Whether `s` holds nothing but comments and whitespace.
fn only_comments(s: &str) -> bool {
    let mut rest = s.trim_start();
    loop {
        if rest.is_empty() {
            return true;
        }
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else {
            return false;
        }
    }
}

fn cell(v: &Value) -> String {
    String::from(v)
}

/// A plain text table: a header, a rule, one line per row, and the row count.
pub fn table(labels: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = labels.iter().map(|l| l.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, w) in widths.iter().enumerate() {
            let c = cells.get(i).map_or("", String::as_str);
            if i > 0 {
                s.push_str(" | ");
            }
            let _ = write!(s, "{c:<w$}");
        }
        s.trim_end().to_string()
    };
    let mut out = line(labels);
    out.push('\n');
    out.push_str(
        &widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-"),
    );
    out.push('\n');
    for r in rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    let _ = write!(
        out,
        "({} row{})",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
    out
}

/// How the shell prints an answer.
pub fn format_payload(p: &Payload) -> String {
    match p {
        Payload::Select { labels, rows } => table(
            labels,
            &rows
                .iter()
                .map(|r| r.iter().map(cell).collect())
                .collect::<Vec<_>>(),
        ),
        Payload::SelectMap(rows) => {
            let labels: Vec<String> = rows
                .iter()
                .flat_map(|r| r.keys().cloned())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let rows: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    labels
                        .iter()
                        .map(|l| r.get(l).map_or_else(String::new, cell))
                        .collect()
                })
                .collect();
            table(&labels, &rows)
        }
        Payload::ShowColumns(cols) => table(
            &["Field".to_string(), "Type".to_string()],
            &cols
                .iter()
                .map(|(n, t)| vec![n.clone(), t.to_string()])
                .collect::<Vec<_>>(),
        ),
        Payload::ShowVariable(PayloadVariable::Tables(names))
        | Payload::ShowVariable(PayloadVariable::Functions(names)) => table(
            &["name".to_string()],
            &names.iter().map(|n| vec![n.clone()]).collect::<Vec<_>>(),
        ),
        Payload::ShowVariable(PayloadVariable::Version(v)) => v.clone(),
        Payload::Create => "CREATE TABLE".into(),
        Payload::Insert(n) => format!("INSERT {n}"),
        Payload::Delete(n) => format!("DELETE {n}"),
        Payload::Update(n) => format!("UPDATE {n}"),
        Payload::DropTable(n) => format!("DROP TABLE {n}"),
        Payload::DropFunction => "DROP FUNCTION".into(),
        Payload::AlterTable => "ALTER TABLE".into(),
        Payload::CreateIndex => "CREATE INDEX".into(),
        Payload::DropIndex => "DROP INDEX".into(),
        Payload::StartTransaction => "BEGIN".into(),
        Payload::Commit => "COMMIT".into(),
        Payload::Rollback => "ROLLBACK".into(),
    }
}

/// A session and how it runs statements.
pub struct Session {
    pub glue: Glue<SqlStorage>,
    /// A statement outside `BEGIN` that loses a race is run again this many times.
    pub autocommit_retries: u32,
}

impl Session {
    pub fn new(storage: SqlStorage) -> Session {
        Session {
            glue: Glue::new(storage),
            autocommit_retries: 20,
        }
    }

    /// Runs one statement; the answer as the shell prints it, or the error. A
    /// statement outside `BEGIN` that lost a race was rolled back as a whole, so it is
    /// run again (a few times); inside `BEGIN` the error goes to the user, whose
    /// transaction is over (`ROLLBACK`, then retry).
    pub fn run(&mut self, statement: &str) -> Result<String, String> {
        let node = self.glue.storage.node().clone();
        if let Some(why) = node.broken() {
            // Lease lost or a service restarted: join again, as the compute-node
            // service's watchdog does.
            node.rejoin(&why)
                .map_err(|e| format!("this node must rejoin the cluster ({why}): {e}"))?;
        }
        let mut tries = 0;
        loop {
            let explicit = self.glue.storage.in_transaction();
            match self.glue.execute(statement) {
                Ok(payloads) => {
                    return Ok(payloads
                        .iter()
                        .map(format_payload)
                        .collect::<Vec<_>>()
                        .join("\n"));
                }
                Err(e) if is_retryable(&e) && !explicit && tries < self.autocommit_retries => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(2 * u64::from(tries)));
                }
                Err(e) => return Err(error_text(&e)),
            }
        }
    }
}

/// An error as the shell prints it.
pub fn error_text(e: &gluesql_core::prelude::Error) -> String {
    match e {
        gluesql_core::prelude::Error::StorageMsg(m) => format!("ERROR: {m}"),
        e => format!("ERROR: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_at_semicolons_outside_quotes_and_comments() {
        let (s, rest) = split_statements(
            "SELECT 'a;b' ; -- x; y\nINSERT INTO t VALUES (\"c;\"); /* ; */ ;\n  SELECT 1",
        );
        assert_eq!(
            s,
            vec!["SELECT 'a;b'", "-- x; y\nINSERT INTO t VALUES (\"c;\")"]
        );
        assert_eq!(rest.trim(), "SELECT 1");
        let (s, rest) = split_statements("-- only a comment\n");
        assert!(s.is_empty());
        assert!(only_comments(&rest));
    }

    #[test]
    fn tables_are_aligned() {
        let t = table(
            &["id".into(), "name".into()],
            &[
                vec!["1".into(), "alice".into()],
                vec!["22".into(), "b".into()],
            ],
        );
        assert_eq!(t, "id | name\n---+------\n1  | alice\n22 | b\n(2 rows)");
    }
}
