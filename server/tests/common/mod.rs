//! Helpers shared by the process-level tests: start `ourkv` processes on
//! free loopback ports, and talk to them with curl.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ourkv ARGS` and waits for its "listening" line.
pub fn start(args: &[&str]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ourkv"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening"), "did not start: {line:?}");
    Proc(child)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `ourkv dev` with its data in `data`, on a free loopback port, with more
/// arguments; the process and its HTTP address.
pub fn start_dev(data: &Path, args: &[&str]) -> (Proc, String) {
    let http = format!("127.0.0.1:{}", free_port());
    let mut all = vec!["dev", "--data", data.to_str().unwrap(), "--http", &http];
    all.extend_from_slice(args);
    (start(&all), http)
}

/// `curl` with the status code appended on a last line.
pub fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is needed for these tests");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

/// A master, a worker and a gateway as three processes on loopback; the
/// gateway's HTTP address last.
pub fn master_worker_gateway(dir: &Path) -> (Proc, Proc, Proc, String) {
    let q = |p: u16| format!("127.0.0.1:{p}");
    let (mport, wport, hport) = (free_port(), free_port(), free_port());
    let d = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let master = start(&["master", "--data", &d("m"), "--listen", &q(mport)]);
    let worker = start(&[
        "worker",
        "--data",
        &d("w"),
        "--listen",
        &q(wport),
        "--master",
        &q(mport),
    ]);
    let gw = start(&[
        "gateway",
        "--http",
        &q(hport),
        "--master",
        &q(mport),
        "--worker",
        &q(wport),
    ]);
    (master, worker, gw, q(hport))
}
