//! The `ourkv db` tools as a user runs them: real processes, real directories.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine;

mod common;
use common::output_of;

fn ourkv(args: &[&str], stdin: Option<&[u8]>) -> Output {
    output_of(Command::new(env!("CARGO_BIN_EXE_ourkv")).args(args), stdin)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn fixture(case: &str, tmp: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ourdb/tests/fixtures/v-ourdb")
        .join(case)
        .join("db");
    let dst = tmp.join(case);
    copy(&src, &dst);
    std::fs::create_dir_all(dst.join("lookup_dump.db")).unwrap();
    dst
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::write(to.join(e.file_name()), std::fs::read(e.path()).unwrap()).unwrap();
        }
    }
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(v)
}

#[test]
fn dump_of_a_v_directory_matches_its_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture("a_incr_ks2", tmp.path());
    let out = ourkv(
        &[
            "db",
            "dump",
            dir.to_str().unwrap(),
            "--record-nr-max",
            "1000",
            "--record-size-max",
            "1024",
            "--history",
            "5",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<u64> = lines.iter().map(|l| l["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![1, 2, 3, 5, 6, 7, 8, 9]);
    // Field order is part of the contract.
    assert!(text(&out.stdout).starts_with("{\"id\":1,\"value\":"));
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../ourdb/tests/fixtures/v-ourdb/a_incr_ks2/manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    for l in &lines {
        let e = &manifest["expected"]["ids"][l["id"].as_u64().unwrap().to_string()];
        assert_eq!(l["value"], e["get"]["value_b64"]);
        // V lost history for keysize 2; the dump has the whole chain.
        let h5 = &e["history"]["5"];
        let want = h5.get("intended_values_b64").unwrap_or(&h5["values_b64"]);
        assert_eq!(&l["history"], want);
    }
}

#[test]
fn restore_then_dump_roundtrips_and_v_layout_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let input = format!(
        "{}\n{}\n{}\n",
        serde_json::json!({"id": 3, "value": b64(b"three")}),
        serde_json::json!({"id": 7, "value": b64(b"seven-2"), "history": [b64(b"seven-2"), b64(b"seven-1")]}),
        serde_json::json!({"id": 9, "value": b64(b"")}),
    );
    let dir = tmp.path().join("restored");
    // Ids 3, 7, 9 in incremental mode: V could not open that. Refused,
    // with the way out named, and nothing is left behind.
    let out = ourkv(
        &["db", "restore", dir.to_str().unwrap()],
        Some(input.as_bytes()),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("line 1: id 3 after id 0") && err.contains("--kv"),
        "{err}"
    );
    assert!(!dir.exists(), "a refused restore left {}", dir.display());
    let out = ourkv(
        &["db", "restore", dir.to_str().unwrap(), "--allow-gaps"],
        Some(input.as_bytes()),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    for f in [
        "0.db",
        "lookup_dump.db/data",
        "lookup_dump.db/.inc",
        "ourkv.meta",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("lookup_dump.db/.inc")).unwrap(),
        "10"
    );
    let out = ourkv(
        &["db", "dump", dir.to_str().unwrap(), "--history", "5"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<&str> = text(&out.stdout).leak().lines().collect();
    assert_eq!(lines.len(), 3);
    let seven = format!(
        "{{\"id\":7,\"value\":\"{}\",\"history\":[\"{}\",\"{}\"]}}",
        b64(b"seven-2"),
        b64(b"seven-2"),
        b64(b"seven-1")
    );
    assert_eq!(lines[1], seven);
    // Restoring into a directory that holds data is refused.
    let out = ourkv(
        &["db", "restore", dir.to_str().unwrap(), "--allow-gaps"],
        Some(input.as_bytes()),
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not empty"));
}

#[test]
fn verify_finds_a_flipped_byte_and_compact_keeps_values() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture("g_random_incr_ks6", tmp.path());
    let d = dir.to_str().unwrap();
    let shape = ["--record-nr-max", "100000", "--record-size-max", "4096"];
    let out = ourkv(&[&["db", "verify", d][..], &shape].concat(), None);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let before = ourkv(&[&["db", "dump", d][..], &shape].concat(), None);
    assert!(before.status.success());

    let out = ourkv(
        &[&["db", "compact", d, "--history", "1"][..], &shape].concat(),
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("epoch: 2"));
    let after = ourkv(&["db", "dump", d], None);
    assert_eq!(text(&before.stdout), text(&after.stdout));
    let info = ourkv(&["db", "info", d], None);
    assert!(
        text(&info.stdout).contains("next_id: 1502"),
        "{}",
        text(&info.stdout)
    );

    // Flip one byte inside a value: verify reports it and exits 1.
    let f = dir.join("0.db");
    let mut bytes = std::fs::read(&f).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&f, bytes).unwrap();
    let out = ourkv(&["db", "verify", d], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("problem:"));
}

/// `ourkv db compact mydir`, a bare relative name, as a user types it: the
/// swap fsyncs the parent, which is the empty path there.
#[test]
fn compact_a_bare_relative_name() {
    let tmp = tempfile::tempdir().unwrap();
    fixture("g_random_incr_ks6", tmp.path());
    let shape = ["--record-nr-max", "100000", "--record-size-max", "4096"];
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ourkv"))
            .args(args)
            .current_dir(tmp.path())
            .output()
            .unwrap()
    };
    let before = run(&[&["db", "dump", "g_random_incr_ks6"][..], &shape].concat());
    assert!(before.status.success(), "{}", text(&before.stderr));
    let out = run(&[&["db", "compact", "g_random_incr_ks6"][..], &shape].concat());
    assert!(
        out.status.success(),
        "compact of a relative name: {}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("epoch: 2"));
    let after = run(&["db", "dump", "g_random_incr_ks6"]);
    assert_eq!(text(&before.stdout), text(&after.stdout));
}

#[test]
fn recover_rebuilds_a_v_directory_without_dump() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture("f1_no_close", tmp.path());
    let d = dir.to_str().unwrap();
    let shape = ["--record-nr-max", "1000", "--record-size-max", "1024"];
    // Without a dump the directory cannot be opened: the message says what to do.
    let out = ourkv(&[&["db", "dump", d][..], &shape].concat(), None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("ourkv db recover"),
        "{}",
        text(&out.stderr)
    );
    // --strict: the rebuild had to assume what a zeroed record was.
    let out = ourkv(
        &[&["db", "recover", d, "--strict"][..], &shape].concat(),
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("assumed:"));
    let out = ourkv(&[&["db", "dump", d][..], &shape].concat(), None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 8);
}

#[test]
fn bad_input_gives_a_message_and_non_zero_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let out = ourkv(&["db", "info", missing.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not a directory"));

    let dir = fixture("a_incr_ks2", tmp.path());
    let d = dir.to_str().unwrap();
    let out = ourkv(&["db", "dump", d], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("V directory"),
        "{}",
        text(&out.stderr)
    );
    let out = ourkv(&["db", "dump", d, "--keysize", "5"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("keysize must be 2, 3, 4 or 6"),
        "{}",
        text(&out.stderr)
    );

    let out = ourkv(
        &["db", "restore", tmp.path().join("r").to_str().unwrap()],
        Some(b"{not json}\n"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("line 1"),
        "{}",
        text(&out.stderr)
    );
    let out = ourkv(
        &["db", "restore", tmp.path().join("r2").to_str().unwrap()],
        Some(b"{\"id\":1,\"value\":\"!!\"}\n"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("base64"),
        "{}",
        text(&out.stderr)
    );

    // A data file size of 0 is refused before anything is created (it used
    // to fail only at the store's open, leaving a lock file and a new
    // member identity behind).
    // So is an ack timeout of 0 (every worker would leave the in-sync set
    // at once), a client timeout of 0 (every request would time out) and at
    // most 0 connections (none could connect).
    let node = tmp.path().join("n");
    for flag in [
        "--file-size",
        "--ack-timeout-ms",
        "--client-timeout-ms",
        "--max-connections",
    ] {
        let out = ourkv(
            &[
                "master",
                "--data",
                node.to_str().unwrap(),
                "--listen",
                "127.0.0.1:1",
                flag,
                "0",
            ],
            None,
        );
        assert_eq!(out.status.code(), Some(2));
        assert!(text(&out.stderr).contains(flag), "{}", text(&out.stderr));
        assert!(!node.exists() && !tmp.path().join("n.raft").exists());
    }
    // `dev` runs every worker in its one process: 1 to 32 of them.
    for n in ["0", "33", "100000"] {
        let out = ourkv(
            &["dev", "--data", node.to_str().unwrap(), "--workers", n],
            None,
        );
        assert_eq!(out.status.code(), Some(2), "--workers {n}");
        assert!(text(&out.stderr).contains("--workers"));
        assert!(!node.exists());
    }
}

/// V's `set('')`, `set('')`, `set('abc')` with no lookup dump (V never
/// closed it): `recover` keeps ids 1 and 2 as empty values and `abc` on id 3.
#[test]
fn recover_keeps_consecutive_empty_values() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("v");
    std::fs::create_dir(&dir).unwrap();
    // The data file as V writes it: one zero byte, then the records.
    let mut f = vec![0u8];
    f.extend(v_record(b"", (0, 0)));
    f.extend(v_record(b"", (0, 0)));
    assert_eq!(f, [0u8; 25], "an empty value is 12 zero bytes");
    f.extend(v_record(b"abc", (0, 0)));
    std::fs::write(dir.join("0.db"), &f).unwrap();
    let d = dir.to_str().unwrap();
    let shape = ["--record-nr-max", "1000", "--record-size-max", "1024"];
    let out = ourkv(&[&["db", "recover", d][..], &shape].concat(), None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = ourkv(&[&["db", "dump", d][..], &shape].concat(), None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let want = format!(
        "{}\n{}\n{}\n",
        serde_json::json!({"id": 1, "value": ""}),
        serde_json::json!({"id": 2, "value": ""}),
        serde_json::json!({"id": 3, "value": b64(b"abc")}),
    );
    assert_eq!(text(&out.stdout), want);
    let out = ourkv(&[&["db", "info", d][..], &shape].concat(), None);
    assert!(
        text(&out.stdout).contains("next_id: 4"),
        "{}",
        text(&out.stdout)
    );
}

/// CRC-32 (IEEE), bit by bit: the test's own, not the engine's.
fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// V: `set('')` → 1, `set('abcdefghij')` → 2, `delete(2)`, close. One data
/// file, so V's delete zeroed the right record: id 1 is a valid empty value
/// beside a deleted record, not damage.
#[test]
fn an_empty_value_beside_a_deleted_record_is_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("v");
    // One zero byte, id 1's empty value (12 zero bytes), id 2's record
    // zeroed by its delete (12 + 10 zero bytes); keysize 2 for
    // record_nr_max 1000; next id 3.
    let mut f = vec![0u8];
    f.extend_from_slice(&[0u8; 12 + 22]);
    write_v_dir(&dir, &f, 2, &[(1, 1)], 3);
    let d = dir.to_str().unwrap();
    let shape = ["--record-nr-max", "1000", "--record-size-max", "1024"];
    let run = |cmd: &[&str]| ourkv(&[cmd, &shape].concat(), None);
    let out = run(&["db", "dump", d]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("{}\n", serde_json::json!({"id": 1, "value": ""}))
    );
    let out = run(&["db", "verify", d]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = run(&["db", "info", d]);
    assert!(
        text(&out.stdout).contains("next_id: 3"),
        "{}",
        text(&out.stdout)
    );
    let out = run(&["db", "compact", d]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A V directory as FORMAT.md describes it: `0.db` holding `data`, and a
/// lookup dump of the live `(id, position)` entries (u32 LE id, then the
/// position big-endian in `keysize` bytes: 2, 3, 4, or 6 with a file
/// number of 0) with the next id in `.inc`.
fn write_v_dir(dir: &Path, data: &[u8], keysize: usize, live: &[(u32, u32)], next_id: u32) {
    std::fs::create_dir_all(dir.join("lookup_dump.db")).unwrap();
    std::fs::write(dir.join("0.db"), data).unwrap();
    let mut dump = Vec::new();
    for &(id, pos) in live {
        dump.extend_from_slice(&id.to_le_bytes());
        dump.extend_from_slice(&(pos as u64).to_be_bytes()[8 - keysize..]);
    }
    std::fs::write(dir.join("lookup_dump.db/data"), dump).unwrap();
    std::fs::write(dir.join("lookup_dump.db/.inc"), next_id.to_string()).unwrap();
}

/// A V record as FORMAT.md describes it: u16 LE length, u32 LE CRC-32,
/// the previous version as u16 BE file and u32 BE position, the value.
fn v_record(value: &[u8], prev: (u16, u32)) -> Vec<u8> {
    let mut r = (value.len() as u16).to_le_bytes().to_vec();
    r.extend_from_slice(&crc32(value).to_le_bytes());
    r.extend_from_slice(&prev.0.to_be_bytes());
    r.extend_from_slice(&prev.1.to_be_bytes());
    r.extend_from_slice(value);
    r
}

/// V: `set('first')` → 1, `set('second-v1')` → 2, `set(2, 'second-v2')`,
/// `delete(2)`, close. The dump names id 1 only; the old version of id 2
/// is still on disk after it. Opening must not roll it forward as a new id.
#[test]
fn a_deleted_id_does_not_come_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("v");
    let mut f = vec![0u8];
    f.extend(v_record(b"first", (0, 0)));
    let v1 = f.len() as u32;
    f.extend(v_record(b"second-v1", (0, 0)));
    // second-v2 (prev: second-v1), zeroed by delete(2).
    f.extend(vec![0u8; v_record(b"second-v2", (0, v1)).len()]);
    write_v_dir(&dir, &f, 2, &[(1, 1)], 3);
    let d = dir.to_str().unwrap();
    let shape = ["--record-nr-max", "1000", "--record-size-max", "1024"];
    let run = |cmd: &[&str]| ourkv(&[cmd, &shape].concat(), None);
    let only_first = format!("{}\n", serde_json::json!({"id": 1, "value": b64(b"first")}));
    let out = run(&["db", "dump", d]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), only_first);
    assert!(
        !text(&out.stderr).contains("rolled"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["db", "info", d]);
    assert!(
        text(&out.stdout).contains("next_id: 3"),
        "{}",
        text(&out.stdout)
    );
    let out = run(&["db", "compact", d]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&["db", "dump", d]);
    assert_eq!(text(&out.stdout), only_first);
    let out = run(&["db", "info", d]);
    assert!(
        text(&out.stdout).contains("next_id: 3"),
        "{}",
        text(&out.stdout)
    );
}

/// V (record_nr_max 100000, record_size_max 4096): 300×`f`, 10×`p`, 6×`X`,
/// `set(2, '')`, 5×`Z`, `delete(3)`, close. The update of id 2 to an empty
/// value begins with eight zero bytes right after id 3's zeroed record, so
/// the zero run ends inside a header: `verify` must frame it right, and
/// `recover` (without the dump) must give every value its id.
#[test]
fn a_header_starting_with_zeros_after_a_deleted_record_is_framed_right() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("v");
    let mut f = vec![0u8];
    f.extend(v_record(&[b'f'; 300], (0, 0)));
    let p = f.len() as u32;
    f.extend(v_record(&[b'p'; 10], (0, 0)));
    f.extend(vec![0u8; v_record(&[b'X'; 6], (0, 0)).len()]); // id 3, deleted
    let p2 = f.len() as u32;
    f.extend(v_record(b"", (0, p)));
    let z = f.len() as u32;
    f.extend(v_record(&[b'Z'; 5], (0, 0)));
    // Keysize 6 for this shape (100000 × 4096 bytes > 20 MB).
    write_v_dir(&dir, &f, 6, &[(1, 1), (2, p2), (4, z)], 5);
    let d = dir.to_str().unwrap();
    let shape = ["--record-nr-max", "100000", "--record-size-max", "4096"];
    let run = |cmd: &[&str]| ourkv(&[cmd, &shape].concat(), None);
    let want = format!(
        "{}\n{}\n{}\n",
        serde_json::json!({"id": 1, "value": b64(&[b'f'; 300])}),
        serde_json::json!({"id": 2, "value": ""}),
        serde_json::json!({"id": 4, "value": b64(&[b'Z'; 5])}),
    );
    let out = run(&["db", "verify", d]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = run(&["db", "dump", d]);
    assert_eq!(text(&out.stdout), want);
    // Without the dump, recover finds the same ids.
    std::fs::remove_dir_all(dir.join("lookup_dump.db")).unwrap();
    let out = run(&["db", "recover", d]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&["db", "dump", d]);
    assert_eq!(text(&out.stdout), want);
}

/// Keysize 2 (record_nr_max 1000, record_size_max 1024) and one data file
/// past 64 KiB: the lookup keeps only the low 16 bits of a position. Id 1
/// is at position 1; a value of another id holds, at position 65537, bytes
/// that parse as a CRC-valid record. That is no record start, so id 1 is
/// not ambiguous; and the ids past 64 KiB are found at their real places.
#[test]
fn keysize_2_past_64_kib_reads_real_records_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("v");
    let mut f = vec![0u8];
    let mut ids = vec![(1u32, f.len() as u32, b"A".to_vec())];
    f.extend(v_record(b"A", (0, 0)));
    let phantom = v_record(b"ghost", (0, 0));
    for id in 2..=70u32 {
        let at = f.len();
        let mut value = vec![b'x'; 1000];
        // The phantom sits at 65537 (65536 + 1, id 1's low bits), inside
        // a value.
        let off = 65537usize.wrapping_sub(at + 12);
        if off + phantom.len() <= value.len() {
            value[off..off + phantom.len()].copy_from_slice(&phantom);
        }
        ids.push((id, at as u32, value.clone()));
        f.extend(v_record(&value, (0, 0)));
    }
    assert!(f.len() > 69_000, "four ids start past 64 KiB");
    assert_eq!(&f[65537..65537 + phantom.len()], &phantom[..]);
    let entries: Vec<(u32, u32)> = ids.iter().map(|(id, pos, _)| (*id, *pos)).collect();
    write_v_dir(&dir, &f, 2, &entries, 71);
    let d = dir.to_str().unwrap();
    let shape = ["--record-nr-max", "1000", "--record-size-max", "1024"];
    let out = ourkv(&[&["db", "dump", d][..], &shape].concat(), None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let want: String = ids
        .iter()
        .map(|(id, _, v)| format!("{}\n", serde_json::json!({"id": id, "value": b64(v)})))
        .collect();
    assert_eq!(text(&out.stdout), want);
}

/// Completions and man pages come from the clap definitions: every command
/// is in them, a shell clap does not know is a usage error (exit 2), and
/// `bash -n` accepts the bash script.
#[test]
fn completions_and_man_pages_cover_every_command() {
    let out = ourkv(&["completions", "bash"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = String::from_utf8(out.stdout).unwrap();
    for word in [
        "dev",
        "gateway",
        "master",
        "worker",
        "dump",
        "compact",
        "completions",
    ] {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ourkv.bash");
    std::fs::write(&file, &script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    for shell in ["zsh", "fish"] {
        let out = ourkv(&["completions", shell], None);
        assert!(out.status.success() && out.stdout.len() > 1000, "{shell}");
    }
    let out = ourkv(&["completions", "tcsh"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tcsh"));

    let man = dir.path().join("man");
    let out = ourkv(&["man", man.to_str().unwrap()], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let top = std::fs::read_to_string(man.join("ourkv.1")).unwrap();
    assert!(
        top.contains(".TH ourkv 1"),
        "{}",
        &top[..top.len().min(300)]
    );
    assert!(top.contains("gateway"));
    let dump = std::fs::read_to_string(man.join("ourkv-db-dump.1")).unwrap();
    assert!(dump.contains(".TH ourkv-db-dump 1"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("man pages written"));
}

/// Off a terminal, long `db` runs log their progress (at info level) instead
/// of drawing a bar: each phase from 0 to 100%, then done.
#[test]
fn db_tools_log_progress_off_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let lines: String = (1..=500)
        .map(|i| format!("{{\"id\":{i},\"value\":\"dmFsdWU=\"}}\n"))
        .collect();
    let out = output_of(
        Command::new(env!("CARGO_BIN_EXE_ourkv"))
            .args(["db", "restore", db.to_str().unwrap()])
            .env("RUST_LOG", "info"),
        Some(lines.as_bytes()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("restore: ids: done (500)"));

    for (tool, phases) in [
        (
            "verify",
            &["ids: 0 of 500", "ids: 500 of 500 (100%)", "bytes: 0 of"][..],
        ),
        (
            "compact",
            &["ids: 0 of 500", "ids: 500 of 500 (100%)", "ids: done (500)"][..],
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ourkv"))
            .args(["db", tool, db.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = String::from_utf8_lossy(&out.stderr);
        for p in phases {
            assert!(
                log.contains(&format!("{tool}: {p}")),
                "{tool} lacks {p:?}:\n{log}"
            );
        }
        // No bar's control codes off a terminal.
        assert!(!log.contains('\r') && !log.contains('\u{1b}'), "{log}");
        let tenths = log.matches(&format!("{tool}: ids: ")).count();
        assert!((3..=12).contains(&tenths), "{tool}: {tenths} lines:\n{log}");
    }
}

/// Config files as an operator uses them: an example edited and run, a
/// variable and a flag over the file, and a typo refused with its line.
#[test]
fn a_bad_variable_is_named_as_the_variable() {
    let run = |vars: &[(&str, &str)], flags: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ourkv"));
        cmd.args(["master", "--data", "/nonexistent/ourkv-unused"])
            .args(flags)
            .arg("--print-config");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = output_of(&mut cmd, None);
        (out.status.code(), text(&out.stderr), text(&out.stdout))
    };
    // From the variable alone: the user set OURKV_THREADS, not --threads.
    let (code, err, _) = run(&[("OURKV_THREADS", "abc")], &["--listen", "127.0.0.1:7000"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("OURKV_THREADS") && err.contains("'abc'"),
        "{err}"
    );
    // A required flag given by a variable only, and refused.
    let (code, err, _) = run(&[("OURKV_LISTEN", "127.0.0.1")], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("OURKV_LISTEN") && err.contains("port"),
        "{err}"
    );
    // The flag on the command line is the one refused, whatever the
    // variable says: clap's own words, no variable named.
    for flags in [
        &["--listen", "127.0.0.1:7000", "--threads", "abc"][..],
        &["--listen", "127.0.0.1:7000", "--threads=abc"][..],
    ] {
        let (code, err, _) = run(&[("OURKV_THREADS", "2")], flags);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("--threads") && !err.contains("OURKV_THREADS"),
            "{err}"
        );
    }
    // A good variable still works.
    let (code, err, out) = run(&[("OURKV_THREADS", "3")], &["--listen", "127.0.0.1:7000"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("threads = 3  # environment"), "{out}");
}

#[test]
fn config_files_then_variables_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let data = dir.path().join("m");
    // The printed example, with this machine's directory and port.
    let example = text(&ourkv(&["config", "example", "master"], None).stdout);
    assert!(example.contains("# ack-timeout-ms = 2000"), "{example}");
    let edited = example
        .replace(
            "data = \"/var/lib/ourkv\"",
            &format!("data = {:?}", data.to_str().unwrap()),
        )
        .replace(
            "listen = \"127.0.0.1:7000\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        .replace("# ack-timeout-ms = 2000", "ack-timeout-ms = 111")
        .replace("# max-lag-bytes = 0", "max-lag-bytes = 5");
    let file = dir.path().join("master.toml");
    std::fs::write(&file, &edited).unwrap();
    let f = file.to_str().unwrap();

    let out = output_of(
        Command::new(env!("CARGO_BIN_EXE_ourkv"))
            .args([
                "master",
                "--config",
                f,
                "--max-lag-bytes",
                "7",
                "--print-config",
            ])
            .env("OURKV_ACK_TIMEOUT_MS", "222"),
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    for line in [
        format!("listen = \"127.0.0.1:{port}\"  # config file"),
        "ack-timeout-ms = 222  # environment".to_string(),
        "max-lag-bytes = 7  # flag".to_string(),
    ] {
        assert!(shown.contains(&line), "{line:?} not in\n{shown}");
    }

    // The file alone runs a master.
    let _m = common::start(&["master", "--config", f]);
    assert!(data.join("ourkv.meta").exists() || data.is_dir());

    // A typo: exit 2, the key and its line named, nothing started.
    std::fs::write(
        &file,
        edited.replace("ack-timeout-ms = 111", "ack-timeot-ms = 111"),
    )
    .unwrap();
    let line = edited
        .lines()
        .position(|l| l.starts_with("ack-timeout-ms"))
        .unwrap()
        + 1;
    let out = ourkv(&["master", "--config", f], None);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("unknown key `ack-timeot-ms`") && err.contains(&format!("line {line}")),
        "{err}"
    );
}

/// The packaged systemd units start each role with the packaged config file
/// of that role, and every such file is one its role accepts.
#[test]
fn packaged_units_and_config_files_fit_together() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging");
    for role in ["master", "worker", "gateway"] {
        let unit =
            std::fs::read_to_string(root.join(format!("systemd/ourkv-{role}.service"))).unwrap();
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("an ExecStart line");
        assert_eq!(
            exec,
            format!("/usr/local/bin/ourkv {role} --config /etc/ourkv/{role}.toml")
        );
        assert!(
            unit.contains("After=network-online.target mycelium.service"),
            "{unit}"
        );
        let file = root.join(format!("config/{role}.toml"));
        let out = ourkv(
            &[role, "--config", file.to_str().unwrap(), "--print-config"],
            None,
        );
        assert!(out.status.success(), "{role}: {}", text(&out.stderr));
        // Every key of the file is in effect, from the file.
        let printed = text(&out.stdout);
        let config = std::fs::read_to_string(&file).unwrap();
        for key in config
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains(" = "))
            .map(|l| l.split(" = ").next().unwrap())
        {
            assert!(
                printed
                    .lines()
                    .any(|l| l.starts_with(&format!("{key} = ")) && l.ends_with("# config file")),
                "{role}: {key} not taken from the file:\n{printed}"
            );
        }
    }
}
