//! The generated OpenAPI document against the running service: schemathesis
//! (its default checks, `openapi/schemathesis.toml`) sends what the
//! document allows and what it forbids to `ourkv dev` with a token, over a
//! bounded number of cases, and must find nothing. `./test.sh` installs
//! schemathesis in a virtualenv (`target/schemathesis`); `OURKV_SCHEMATHESIS`
//! names another `st`.

use std::path::PathBuf;
use std::process::Command;

mod common;
use common::*;

fn schemathesis() -> PathBuf {
    if let Some(st) = std::env::var_os("OURKV_SCHEMATHESIS") {
        return st.into();
    }
    let st = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/schemathesis/bin/st");
    assert!(
        st.exists(),
        "schemathesis is not installed: run ./test.sh (it makes {}), or set OURKV_SCHEMATHESIS",
        st.display()
    );
    st
}

#[test]
fn schemathesis_finds_nothing() {
    let st = schemathesis();
    let dir = tempfile::tempdir().unwrap();
    let (_dev, http) = start_dev(&dir.path().join("data"), &["--api-token", "st-token"]);
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openapi/schemathesis.toml");
    let out = Command::new(&st)
        .current_dir(dir.path())
        .arg("--config-file")
        .arg(&config)
        .args([
            "run",
            &format!("http://{http}/openapi.json"),
            "-H",
            "Authorization: Bearer st-token",
            "--max-examples",
            "30",
            "--seed",
            "1",
            "--request-timeout",
            "10",
            "--no-color",
            // An endless event stream: its cases would only time out
            // (watch has tests of its own).
            "--exclude-path",
            "/v1/watch",
        ])
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It ran every operation but the watch, with cases.
    assert!(stdout.contains("Tested: 22"), "{stdout}");
}
