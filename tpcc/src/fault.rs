//! Faults injected into a spawned cluster during the measurement window
//! (`--fault`, used by `scripts/fault-test.sh`):
//!
//! * `kill:SERVICE@AT+DOWN` — `kill -9` SERVICE AT seconds into the measurement window,
//!   start it again DOWN seconds later (same config, data directory and ports);
//! * `pause:SERVICE@AT+DOWN` — SIGSTOP SERVICE, SIGCONT it DOWN seconds later (a compute
//!   node paused past its lease is fenced and its transactions aborted; it must then
//!   rejoin).
//!
//! SERVICE is `storage-0`, `gtm` or `compute-N` (1-based). Each fault reports when it
//! struck and how long the service took to be ready again.

use crate::spawn::ProcessCluster;
use anyhow::{anyhow, bail, Context, Result};
use std::fmt;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Kill,
    Pause,
}

#[derive(Clone, Debug)]
pub struct Fault {
    pub action: Action,
    pub service: String,
    pub at: Duration,
    pub down: Duration,
}

impl Fault {
    /// Parses `ACTION:SERVICE@AT+DOWN` (seconds, fractions allowed).
    pub fn parse(s: &str, compute_nodes: usize) -> Result<Fault> {
        let bad =
            || anyhow!("--fault {s:?}: expected ACTION:SERVICE@AT+DOWN, e.g. kill:compute-2@10+2");
        let (action, rest) = s.split_once(':').ok_or_else(bad)?;
        let (service, times) = rest.split_once('@').ok_or_else(bad)?;
        let (at, down) = times.split_once('+').ok_or_else(bad)?;
        let action = match action {
            "kill" => Action::Kill,
            "pause" => Action::Pause,
            a => bail!("--fault {s:?}: unknown action {a:?} (kill or pause)"),
        };
        let valid = service == "gtm"
            || service == "storage-0"
            || service
                .strip_prefix("compute-")
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| (1..=compute_nodes).contains(&n));
        if !valid {
            bail!("--fault {s:?}: unknown service {service:?} (storage-0, gtm, compute-1..{compute_nodes})");
        }
        let secs = |v: &str| -> Result<Duration> {
            let f: f64 = v.parse().map_err(|_| bad())?;
            if !(0.0..=3600.0).contains(&f) {
                bail!("--fault {s:?}: {v} s is out of range");
            }
            Ok(Duration::from_secs_f64(f))
        };
        Ok(Fault {
            action,
            service: service.into(),
            at: secs(at)?,
            down: secs(down)?,
        })
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = match self.action {
            Action::Kill => "kill",
            Action::Pause => "pause",
        };
        write!(
            f,
            "{a}:{}@{}+{}",
            self.service,
            self.at.as_secs_f64(),
            self.down.as_secs_f64()
        )
    }
}

/// What happened.
#[derive(Clone, Debug)]
pub struct FaultReport {
    pub fault: Fault,
    /// Seconds into the measurement window when it struck.
    pub struck_s: f64,
    /// Kill: from the restart to the service's READY line.
    pub restart_s: f64,
    /// From the fault to the service being back (READY, or SIGCONT).
    pub out_s: f64,
}

impl FaultReport {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "fault": self.fault.to_string(),
            "struck_s": self.struck_s,
            "restart_s": self.restart_s,
            "out_s": self.out_s,
        })
    }
}

impl fmt::Display for FaultReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} struck at {:.1}s, service back after {:.2}s (restart to READY {:.2}s)",
            self.fault, self.struck_s, self.out_s, self.restart_s
        )
    }
}

/// Injects `faults` in order, timed from `window` (the start of the measurement
/// window).
pub fn inject(
    cluster: &parking_lot::Mutex<ProcessCluster>,
    faults: &[Fault],
    window: Instant,
    events: Option<&crate::events::EventLog>,
) -> Result<Vec<FaultReport>> {
    let mut reports = Vec::new();
    for f in faults {
        let when = window + f.at;
        if let Some(d) = when.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let struck = Instant::now();
        let struck_s = struck.saturating_duration_since(window).as_secs_f64();
        eprintln!("fault: {f} now");
        if let Some(ev) = events {
            ev.write(
                "fault",
                serde_json::json!({ "state": "struck", "fault": f.to_string() }),
            );
        }
        let restart_s = match f.action {
            Action::Kill => {
                cluster.lock().kill(&f.service)?;
                std::thread::sleep(f.down);
                cluster
                    .lock()
                    .start_service(&f.service)
                    .with_context(|| format!("restarting {}", f.service))?
                    .as_secs_f64()
            }
            Action::Pause => {
                use nix::sys::signal::Signal;
                cluster.lock().signal(&f.service, Signal::SIGSTOP)?;
                std::thread::sleep(f.down);
                cluster.lock().signal(&f.service, Signal::SIGCONT)?;
                0.0
            }
        };
        let r = FaultReport {
            fault: f.clone(),
            struck_s,
            restart_s,
            out_s: struck.elapsed().as_secs_f64(),
        };
        eprintln!("fault: {r}");
        if let Some(ev) = events {
            let pid = cluster
                .lock()
                .services()
                .iter()
                .find(|s| s.name == f.service)
                .and_then(|s| s.pid());
            ev.write(
                "fault",
                serde_json::json!({
                    "state": "back",
                    "fault": f.to_string(),
                    "out_s": r.out_s,
                    "restart_s": r.restart_s,
                    "pid": pid,
                }),
            );
        }
        reports.push(r);
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_and_bad_ones_are_refused() {
        let f = Fault::parse("kill:compute-2@10+2.5", 2).unwrap();
        assert_eq!(f.action, Action::Kill);
        assert_eq!(f.service, "compute-2");
        assert_eq!(f.at, Duration::from_secs(10));
        assert_eq!(f.down, Duration::from_millis(2500));
        assert_eq!(f.to_string(), "kill:compute-2@10+2.5");
        assert!(Fault::parse("pause:gtm@1+1", 1).is_ok());
        for bad in [
            "kill:compute-3@1+1",
            "kill:compute-0@1+1",
            "nuke:gtm@1+1",
            "kill:gtm@x+1",
            "kill:gtm@1",
            "kill:gtm@-1+1",
            "kill",
        ] {
            assert!(Fault::parse(bad, 2).is_err(), "{bad}");
        }
    }
}
