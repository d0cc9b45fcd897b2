//! End to end through the binary: an embedded cluster, a spec-shaped database (10
//! districts, 3,000 customers and orders per district) with a REDUCED item count
//! (`--scale-items`, labelled non-spec in the report), a short run, and the twelve
//! consistency checks after load and after the run.

use std::process::Command;

#[test]
fn short_embedded_run_passes_every_check() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_tpcc"))
        .args([
            "--warehouses",
            "1",
            "--scale-items",
            "2000",
            "--duration",
            "6",
            "--warmup",
            "1",
            "--check",
            "--quiet",
            "--seed",
            "42",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tpcc failed\n{stdout}\n{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(
        r["spec_compliant"], false,
        "a reduced item count is not spec"
    );
    assert_eq!(r["warehouses"], 1);
    assert!(r["tpmC"].as_f64().unwrap() > 0.0);
    for name in [
        "new_order",
        "payment",
        "order_status",
        "delivery",
        "stock_level",
    ] {
        let t = &r["transactions"][name];
        assert!(t["count"].as_u64().unwrap() > 0, "no {name} completed");
        for f in [
            "aborts", "retries", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms",
        ] {
            assert!(!t[f].is_null(), "{name}.{f} missing");
        }
        assert_eq!(t["distribution"]["counts"].as_array().unwrap().len(), 20);
    }
    let after_load = r["checks_after_load"].as_array().unwrap();
    assert_eq!(after_load.len(), 12);
    assert!(
        after_load.iter().all(|c| c["passed"] == true),
        "{after_load:?}"
    );
    let after_run = r["checks"].as_array().unwrap();
    assert_eq!(after_run.len(), 12);
    for c in after_run {
        if c["id"] == 11 {
            // Deliveries ran, so orders - new orders = 2100 no longer has to hold.
            assert_eq!(c["passed"], "not_applicable", "{c}");
        } else {
            assert_eq!(c["passed"], true, "{c}");
        }
    }
}

#[test]
fn bad_options_are_clear_errors() {
    for (args, says) in [
        (
            &["--fault", "nuke:gtm@1+1"][..],
            "--fault needs --cluster spawn",
        ),
        (
            &["--cluster", "spawn", "--fault", "nuke:gtm@1+1"][..],
            "unknown action",
        ),
        (
            &["--cluster", "spawn", "--fault", "kill:compute-3@1+1"][..],
            "unknown service",
        ),
        (&["--skip-load"][..], "--skip-load needs"),
        (&["--warehouses", "0"][..], "must be at least 1"),
        (
            &["--cluster", "spawn", "--connect", "127.0.0.1:1"][..],
            "exclude each other",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tpcc"))
            .args(args)
            .env_remove("CARGO")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

// `--cluster spawn` with kill -9 and SIGSTOP faults is the quick soak
// (`scripts/soak-test.sh --quick`, run by scripts/check.sh after these tests): the same
// binary and options, every service kind faulted, lost orders and checks judged.
