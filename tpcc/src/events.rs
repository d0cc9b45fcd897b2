//! `--events FILE`: the run as JSON lines while it goes, each flushed when written, so
//! a soak test (`scripts/soak-test.sh`) can line the harness's view up with its own
//! samples of disk and memory by wall-clock time, and still has them if the run dies.
//!
//! Every line has `event` and `unix_s` (seconds since the epoch, fractions):
//!
//! * `second` — once a second from the driver: `phase` (`warmup` or `run`),
//!   `elapsed_s` (into that phase), `new_orders`, `txns`, `aborts` (in that second),
//!   `tpmC` (New-Orders of that second x 60);
//! * `fault` — `state` `struck` when a fault is injected, `back` when its service is
//!   ready again (then also `out_s`, `restart_s` and the service's new `pid`), with
//!   `fault` as given to `--fault`;
//! * `pool` — every 5 s per reachable compute node: `node_id`, `resident` (frames
//!   holding a page), `epoch` (the incarnation), `capacity`, `page_bytes` (so `resident x page_bytes` is the
//!   memory its pool's images take, bounded by its configuration).

use anyhow::{Context, Result};
use parking_lot::Mutex;
use std::io::Write;
use std::path::Path;

pub struct EventLog {
    file: Mutex<std::fs::File>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventLog")
    }
}

impl EventLog {
    /// Creates (truncates) `path`.
    pub fn create(path: &Path) -> Result<EventLog> {
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(EventLog {
            file: Mutex::new(file),
        })
    }

    /// Writes `fields` (a JSON object) as one line with `event` and `unix_s` added. A
    /// failed write is reported once per line on stderr and does not stop the run.
    pub fn write(&self, event: &str, fields: serde_json::Value) {
        let unix_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut line = serde_json::json!({ "event": event, "unix_s": unix_s });
        if let (Some(l), serde_json::Value::Object(extra)) = (line.as_object_mut(), fields) {
            l.extend(extra);
        }
        let mut text = line.to_string();
        text.push('\n');
        if let Err(e) = self.file.lock().write_all(text.as_bytes()) {
            eprintln!("--events: writing a line failed: {e}");
        }
    }
}
