//! The binary's command line: check-config on the shipped files and on a broken one.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_breakwater-processor"))
}

#[test]
fn shipped_configs_pass_check_config() {
    for f in ["config/processor.toml", "deploy/processor.toml"] {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/").to_owned() + f;
        let out = bin()
            .args(["check-config", "--config", &path])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn check_config_reports_every_error_with_its_key_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[kafka]\nbrokers = 1\nassign = \"0\"\n[state]\ncheckpoint_records = 0\n[anomaly]\nz_threshold = \"high\"\n",
    )
    .unwrap();
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&path)
        .env_remove("BREAKWATER_PROCESSOR_ASSIGN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "kafka.brokers",
        "kafka.assign",
        "state.checkpoint_records",
        "anomaly.z_threshold",
    ] {
        assert!(err.contains(key), "{key} not reported:\n{err}");
    }
    assert!(err.contains("4 error(s)"), "{err}");
    // `run` refuses it too, before touching Kafka.
    let out = bin().args(["run", "--config"]).arg(&path).output().unwrap();
    assert!(!out.status.success());
    // An environment override is validated as well.
    let ok = dir.path().join("ok.toml");
    std::fs::write(&ok, "").unwrap();
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&ok)
        .env("BREAKWATER_PROCESSOR_ASSIGN", "0,x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("BREAKWATER_PROCESSOR_ASSIGN"));
}
