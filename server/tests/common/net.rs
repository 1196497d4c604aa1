//! Network namespaces for the process tests: `ip` commands, and the
//! namespaces and processes of one test, all removed when it ends.

use std::process::{Child, Command, Output, Stdio};

pub(crate) fn ip(args: &[&str]) -> Output {
    Command::new("ip").args(args).output().expect("run ip")
}

pub(crate) fn ip_ok(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces and the processes in them; all removed on drop.
pub(crate) struct Net {
    pub(crate) names: Vec<String>,
    pub(crate) children: Vec<Child>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.names {
            let _ = ip(&["netns", "del", n]);
        }
    }
}

impl Net {
    /// Makes the test's first namespace, or says why it cannot and gives
    /// `None` (the test then passes without running).
    pub(crate) fn first(name: &str) -> Option<Net> {
        let probe = ip(&["netns", "add", name]);
        if !probe.status.success() {
            eprintln!(
                "skipping: cannot create network namespaces here ({})",
                String::from_utf8_lossy(&probe.stderr).trim()
            );
            return None;
        }
        Some(Net {
            names: vec![name.to_string()],
            children: Vec::new(),
        })
    }

    pub(crate) fn exec(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_ourkv")])
            .args(args);
        c
    }

    pub(crate) fn spawn(&mut self, ns: &str, args: &[&str], log: &std::path::Path) {
        let mut child = self
            .exec(ns, args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert!(
            line.contains("listening"),
            "{line:?}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        self.children.push(child);
    }
}
