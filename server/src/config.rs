//! Configuration of the long-running roles (`dev`, `gateway`, `master`,
//! `worker`) from three places besides the defaults: a TOML file given with
//! `--config` (its keys are the role's long flag names), an `OURKV_<FLAG>`
//! environment variable for every flag (`--ack-timeout-ms` is
//! `OURKV_ACK_TIMEOUT_MS`), and the flags. Flags win over variables,
//! variables over the file, the file over the defaults.
//!
//! Built on clap's own definitions: the file is checked against the role's
//! flags (an unknown key is an error naming the key and its line), and its
//! values go through the same parsers as flags, so nothing is listed twice.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};

use crate::cli::Cli;

/// The roles that take `--config`.
pub(crate) const ROLES: [&str; 4] = ["dev", "gateway", "master", "worker"];

const CONFIG: &str = "config";
const PRINT: &str = "print-config";

/// The command line with `--config`, `--print-config` and an `OURKV_*`
/// variable for every flag of each role.
pub(crate) fn command() -> Command {
    let mut cmd = Cli::command();
    for role in ROLES {
        cmd = cmd.mut_subcommand(role, |sc| {
            sc.mut_args(|a| match a.get_long() {
                Some(long) if a.get_env().is_none() && !builtin(&a) => {
                    let var = format!("OURKV_{}", long.to_uppercase().replace('-', "_"));
                    a.env(var)
                }
                _ => a,
            })
            .arg(
                Arg::new(CONFIG)
                    .long(CONFIG)
                    .value_name("FILE")
                    .env("OURKV_CONFIG")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help(
                        "TOML file of this command's options (keys: the long flag names, \
                         see `ourkv config example`); flags and OURKV_* variables override it",
                    ),
            )
            .arg(
                Arg::new(PRINT)
                    .long(PRINT)
                    .action(ArgAction::SetTrue)
                    .help("Print the options in effect, and where each comes from, then exit"),
            )
        });
    }
    cmd
}

fn builtin(a: &Arg) -> bool {
    matches!(a.get_id().as_str(), "help" | "version" | CONFIG | PRINT)
}

/// What `main` runs: the parsed command line, or what `--print-config` prints.
pub(crate) enum Parsed {
    /// Run this.
    Run(Box<Cli>),
    /// Print this and exit.
    Print(String),
}

/// Parses the command line, with a role's config file and variables merged
/// in. Errors are clap's (usage errors exit with 2).
pub(crate) fn parse(args: Vec<OsString>) -> Result<Parsed, clap::Error> {
    // First pass: which role, which file, and what the flags and variables
    // already say. Required flags may come from the file, so none is
    // required yet.
    let lenient = ROLES.iter().fold(command(), |c, role| {
        c.mut_subcommand(role, |sc| sc.mut_args(|a| a.required(false)))
    });
    let first = lenient
        .try_get_matches_from(args.clone())
        .map_err(|e| from_variable(e, &args))?;
    let Some((role, sub)) = first.subcommand().filter(|(r, _)| ROLES.contains(r)) else {
        let m = command().try_get_matches_from(args)?;
        return Ok(Parsed::Run(Box::new(Cli::from_arg_matches(&m)?)));
    };
    let role = role.to_string();
    let mut extra = Vec::new();
    let mut origin = None;
    if let Some(path) = sub.get_one::<PathBuf>(CONFIG) {
        let sc = command().find_subcommand(&role).expect("a role").clone();
        let (flags, lines) = from_file(&sc, sub, path)?;
        extra = flags;
        origin = Some((path.clone(), lines));
    }
    // Second pass: the file's values go in right after the role's name, so
    // the real flags (which the file never repeats) and the checks of
    // required flags apply as usual.
    let pos = args
        .iter()
        .position(|a| a.to_str() == Some(role.as_str()))
        .expect("the role is on the command line");
    let mut merged = args[..=pos].to_vec();
    merged.extend(extra.iter().map(OsString::from));
    merged.extend(args[pos + 1..].iter().cloned());
    let m = command()
        .try_get_matches_from(merged)
        .map_err(|e| match &origin {
            Some((path, lines)) => in_file(e, path, lines, &extra),
            None => e,
        })
        .map_err(|e| from_variable(e, &args))?;
    let (_, sub) = m.subcommand().expect("a role");
    if sub.get_flag(PRINT) {
        let sc = command().find_subcommand(&role).expect("a role").clone();
        return Ok(Parsed::Print(effective(&sc, sub, &first)));
    }
    Ok(Parsed::Run(Box::new(Cli::from_arg_matches(&m)?)))
}

fn usage(msg: String) -> clap::Error {
    clap::Error::raw(ErrorKind::InvalidValue, format!("{msg}\n"))
}

/// Clap's error about a value the file gave (it saw it as a flag), told as
/// the file's: its path, the key and the line, then clap's words.
fn in_file(
    e: clap::Error,
    path: &std::path::Path,
    lines: &HashMap<String, usize>,
    from_file: &[String],
) -> clap::Error {
    let Some(key) = refused_key(&e) else {
        return e;
    };
    let key = key.as_str();
    let given_in_file = from_file
        .iter()
        .any(|f| f.strip_prefix("--").and_then(|f| f.split('=').next()) == Some(key));
    if !given_in_file {
        return e;
    }
    let item = match e.get(clap::error::ContextKind::InvalidValue) {
        Some(clap::error::ContextValue::String(v)) => lines.get(&item_key(key, v)),
        _ => None,
    };
    let line = item
        .or_else(|| lines.get(key))
        .map_or(String::new(), |l| format!(" line {l}"));
    usage(format!(
        "config file {}{line}: `{key}`: {}",
        path.display(),
        said(&e)
    ))
}

/// The long name of the flag whose value clap refused (`--threads <N>` or
/// `--threads`: `threads`).
fn refused_key(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let key = arg.strip_prefix("--")?.split([' ', '=']).next()?;
    (!key.is_empty()).then(|| key.to_string())
}

/// Clap's error about a value that came from a role's `OURKV_*` variable
/// (the flag is not on the command line), told as the variable's: clap
/// names only the flag, which the user never typed.
fn from_variable(e: clap::Error, args: &[OsString]) -> clap::Error {
    let Some(key) = refused_key(&e) else {
        return e;
    };
    let Some(pos) = args
        .iter()
        .skip(1)
        .position(|a| a.to_str().is_some_and(|a| ROLES.contains(&a)))
        .map(|p| p + 1)
    else {
        return e;
    };
    let cmd = command();
    let Some(arg) = args[pos]
        .to_str()
        .and_then(|role| cmd.find_subcommand(role))
        .and_then(|sc| {
            sc.get_arguments()
                .find(|a| a.get_long() == Some(key.as_str()))
        })
    else {
        return e;
    };
    let long = format!("--{key}");
    let short = arg.get_short().map(|c| format!("-{c}"));
    let on_line = args[pos + 1..].iter().filter_map(|a| a.to_str()).any(|a| {
        a == long
            || a.strip_prefix(long.as_str())
                .is_some_and(|r| r.starts_with('='))
            || short.as_deref().is_some_and(|s| a.starts_with(s))
    });
    match arg.get_env() {
        Some(var) if !on_line && std::env::var_os(var).is_some() => {
            usage(format!("{}: {}", var.to_string_lossy(), said(&e)))
        }
        _ => e,
    }
}

/// Clap's first line, without its "error: " and the hint lines after it.
fn said(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

/// The flags the file at `path` stands for, leaving out those the command
/// line or a variable already set.
/// Also the line of each key, for errors found later.
type FileFlags = (Vec<String>, HashMap<String, usize>);

fn from_file(sc: &Command, given: &ArgMatches, path: &PathBuf) -> Result<FileFlags, clap::Error> {
    let shown = path.display();
    let text =
        std::fs::read_to_string(path).map_err(|e| usage(format!("config file {shown}: {e}")))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| usage(format!("config file {shown}: {e}")))?;
    let lines = key_lines(&text);
    let line = |k: &str| lines.get(k).map_or(String::new(), |l| format!(" line {l}"));
    let mut out = Vec::new();
    for (key, value) in &table {
        let Some(arg) = sc
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && !builtin(a))
        else {
            let known: Vec<_> = sc
                .get_arguments()
                .filter(|a| !builtin(a) && !a.is_hide_set())
                .filter_map(|a| a.get_long())
                .collect();
            return Err(usage(format!(
                "config file {shown}{}: unknown key `{key}` for `ourkv {}` (known: {})",
                line(key),
                sc.get_name(),
                known.join(", ")
            )));
        };
        let id = arg.get_id().as_str();
        // A value the command line or a variable overrides is still
        // checked: the file is wrong either way, and would bite later.
        let overridden = matches!(
            given.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        let flag = format!("--{key}");
        let takes_value = !matches!(
            arg.get_action(),
            ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count
        );
        let items: Vec<&toml::Value> = match value {
            toml::Value::Array(a) if matches!(arg.get_action(), ArgAction::Append) => {
                a.iter().collect()
            }
            // `[]` would otherwise read as "not set", silently.
            toml::Value::Array(_) if takes_value => {
                return Err(usage(format!(
                    "config file {shown}{}: `{key}` takes one value, not a list",
                    line(key)
                )))
            }
            v => vec![v],
        };
        for v in items {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                // With its point (`1e3` is `1000.0`, not `1000`), so a
                // whole-number flag refuses it rather than taking a float.
                toml::Value::Float(f) => format!("{f:?}"),
                toml::Value::Boolean(b) if !takes_value => {
                    if *b && !overridden {
                        out.push(flag.clone());
                    }
                    continue;
                }
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(usage(format!(
                        "config file {shown}{}: `{key}` takes {}, not {}",
                        line(key),
                        if takes_value {
                            "a value"
                        } else {
                            "true or false"
                        },
                        other.type_str()
                    )))
                }
            };
            if takes_value && overridden {
                // The arg's own parser, on a command of that arg alone.
                let mut only = Arg::new(id.to_string())
                    .long(key.clone())
                    .value_parser(arg.get_value_parser().clone())
                    .action(arg.get_action().clone());
                if let Some(names) = arg.get_value_names() {
                    only = only.value_names(names.to_vec());
                }
                let alone = Command::new(sc.get_name().to_string())
                    .no_binary_name(true)
                    .arg(only);
                if let Err(e) = alone.try_get_matches_from([format!("{flag}={text}")]) {
                    let at = lines
                        .get(&item_key(key, &text))
                        .map_or_else(|| line(key), |l| format!(" line {l}"));
                    return Err(usage(format!(
                        "config file {shown}{at}: `{key}`: {}",
                        said(&e)
                    )));
                }
            } else if takes_value {
                out.push(format!("{flag}={text}"));
            } else {
                return Err(usage(format!(
                    "config file {shown}{}: `{key}` takes true or false",
                    line(key)
                )));
            }
        }
    }
    Ok((out, lines))
}

/// The line of each top-level key of `text`, and of each string in a list.
fn key_lines(text: &str) -> HashMap<String, usize> {
    let Ok(t) = toml::de::DeTable::parse(text) else {
        return HashMap::new();
    };
    let line_at = |at: usize| text[..at.min(text.len())].matches('\n').count() + 1;
    let mut lines = HashMap::new();
    for (k, v) in t.get_ref() {
        let key = k.get_ref().to_string();
        // The items of a list written over several lines: each at its own
        // line, under `item_key`.
        if let toml::de::DeValue::Array(items) = v.get_ref() {
            for item in items.iter() {
                if let toml::de::DeValue::String(s) = item.get_ref() {
                    lines
                        .entry(item_key(&key, s))
                        .or_insert_with(|| line_at(item.span().start));
                }
            }
        }
        lines.insert(key, line_at(k.span().start));
    }
    lines
}

/// Where `key_lines` keeps the line of a list item.
fn item_key(key: &str, item: &str) -> String {
    format!("{key}\0{item}")
}

/// The options in effect as TOML, each with where it came from.
fn effective(sc: &Command, m: &ArgMatches, first: &ArgMatches) -> String {
    let first = first.subcommand().map(|(_, s)| s);
    let mut out = String::new();
    for a in sc
        .get_arguments()
        .filter(|a| !builtin(a) && !a.is_hide_set() && a.get_long().is_some())
    {
        let id = a.get_id().as_str();
        let Some(raw) = m.get_raw(id) else {
            out.push_str(&format!("# {} is not set\n", a.get_long().unwrap()));
            continue;
        };
        let vals: Vec<String> = raw.map(|v| toml_value(&v.to_string_lossy())).collect();
        let value = match a.get_action() {
            ArgAction::Append => format!("[{}]", vals.join(", ")),
            ArgAction::SetTrue => m.get_flag(id).to_string(),
            _ => vals.join(", "),
        };
        // The file's values were given as flags on the second pass: what the
        // first pass did not see there came from the file.
        let from = match (m.value_source(id), first.and_then(|f| f.value_source(id))) {
            (Some(ValueSource::DefaultValue), _) => "default",
            (Some(ValueSource::EnvVariable), _) => "environment",
            (Some(ValueSource::CommandLine), Some(ValueSource::CommandLine)) => "flag",
            (Some(ValueSource::CommandLine), _) => "config file",
            _ => "default",
        };
        let secret = a.get_long() == Some("api-token");
        let value = if secret { "\"(hidden)\"".into() } else { value };
        out.push_str(&format!("{} = {value}  # {from}\n", a.get_long().unwrap()));
    }
    out
}

/// `s` as a TOML value: a number or a boolean as it is, anything else quoted.
fn toml_value(s: &str) -> String {
    if s.parse::<i64>().is_ok() || s == "true" || s == "false" {
        s.to_string()
    } else {
        toml::Value::String(s.to_string()).to_string()
    }
}

/// A commented example file for `role`: every option with its help, the
/// required ones set to an example, the others commented out at their
/// default.
pub(crate) fn example(role: &str) -> String {
    let sc = command().find_subcommand(role).expect("a role").clone();
    let mut out = format!(
        "# ourkv {role}: options (keys are the long flag names; flags and OURKV_* variables\n\
         # override what this file says). Use: ourkv {role} --config FILE\n"
    );
    for a in sc
        .get_arguments()
        .filter(|a| !builtin(a) && !a.is_hide_set())
    {
        let Some(long) = a.get_long() else { continue };
        out.push('\n');
        if let Some(help) = a.get_help() {
            for line in help.to_string().lines() {
                out.push_str(&format!("# {line}\n"));
            }
        }
        let defaults: Vec<String> = a
            .get_default_values()
            .iter()
            .map(|v| toml_value(&v.to_string_lossy()))
            .collect();
        let many = matches!(a.get_action(), ArgAction::Append);
        if a.is_required_set() {
            let v = toml_value(example_value(role, long));
            out.push_str(&format!(
                "{long} = {}\n",
                if many { format!("[{v}]") } else { v }
            ));
        } else if !defaults.is_empty() {
            let v = if many {
                format!("[{}]", defaults.join(", "))
            } else {
                defaults.join(", ")
            };
            out.push_str(&format!("# {long} = {v}\n"));
        } else if matches!(a.get_action(), ArgAction::SetTrue) {
            out.push_str(&format!("# {long} = false\n"));
        } else {
            let v = toml_value(example_value(role, long));
            out.push_str(&format!(
                "# {long} = {}\n",
                if many { format!("[{v}]") } else { v }
            ));
        }
    }
    out
}

/// A plausible value for an option that has no default.
fn example_value(role: &str, long: &str) -> &'static str {
    match (role, long) {
        (_, "data") => "/var/lib/ourkv",
        ("master", "listen") => "127.0.0.1:7000",
        (_, "listen") => "127.0.0.1:7001",
        (_, "master") => "127.0.0.1:7000",
        (_, "worker") => "127.0.0.1:7001",
        (_, "seed") => "127.0.0.1:7002",
        (_, "http") => "127.0.0.1:8080",
        (_, "cluster") => "/etc/ourkv/cluster",
        (_, "mycelium-api") => "http://127.0.0.1:8989",
        (_, "raft-dir") => "/var/lib/ourkv.raft",
        (_, "advertise") => "127.0.0.1:7000",
        (_, "heartbeat-ms") => "50",
        (_, "file-size") => "536870912",
        (_, "sync") => "group",
        (_, "api-token") => "change-me",
        (_, "max-connections") => "16384",
        (_, "threads") => "1",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn a_file_fills_in_what_the_flags_leave_out() {
        let f = file(
            "data = \"/d\"\nlisten = \"127.0.0.1:7000\"\nack-timeout-ms = 111\nmax-lag-bytes = 5\n",
        );
        let p = f.path().to_str().unwrap();
        let Parsed::Run(cli) = parse(args(&[
            "ourkv",
            "master",
            "--config",
            p,
            "--max-lag-bytes",
            "7",
        ]))
        .unwrap() else {
            panic!("not a run")
        };
        let crate::cli::Cmd::Master { node, as_master } = cli.cmd else {
            panic!("not master")
        };
        assert_eq!(node.data, PathBuf::from("/d"));
        assert_eq!(node.listen, "127.0.0.1:7000");
        assert_eq!(as_master.ack_timeout_ms, 111);
        assert_eq!(as_master.max_lag_bytes, 7, "the flag wins over the file");
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key_and_the_line() {
        let f = file("data = \"/d\"\n\n# a comment\nlistne = \"x\"\n");
        let p = f.path().to_str().unwrap();
        let e = parse(args(&[
            "ourkv",
            "worker",
            "--config",
            p,
            "--master",
            "127.0.0.1:1",
        ]))
        .err()
        .unwrap();
        let msg = e.to_string();
        assert!(
            msg.contains("unknown key `listne`") && msg.contains("line 4"),
            "{msg}"
        );
        assert!(msg.contains("listen"), "lists the known keys: {msg}");
        assert_eq!(e.exit_code(), 2);
        let f = file("http = \"127.0.0.1:1\"\nmaster = \"127.0.0.1:2\"\nworker = [1, 2]\nmax-watches = { a = 1 }\n");
        let p = f.path().to_str().unwrap();
        let msg = parse(args(&["ourkv", "gateway", "--config", p]))
            .err()
            .unwrap()
            .to_string();
        assert!(
            msg.contains("`max-watches`") && msg.contains("line 4"),
            "{msg}"
        );
        // A value of the wrong kind for the flag: clap's words, at the file's line.
        let f = file("http = \"127.0.0.1:1\"\nmaster = \"127.0.0.1:2\"\nmax-watches = \"many\"\n");
        let p = f.path().to_str().unwrap();
        let msg = parse(args(&["ourkv", "gateway", "--config", p]))
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("many"), "{msg}");
        assert!(
            msg.contains("line 3") && msg.contains("`max-watches`"),
            "{msg}"
        );
    }

    #[test]
    fn required_flags_may_come_from_the_file_and_are_still_required() {
        let f = file("workers = 3\n");
        let p = f.path().to_str().unwrap();
        let Parsed::Run(cli) = parse(args(&["ourkv", "dev", "--config", p])).unwrap() else {
            panic!()
        };
        assert!(matches!(cli.cmd, crate::cli::Cmd::Dev { workers: 3, .. }));
        let f = file("data = \"/d\"\n");
        let p = f.path().to_str().unwrap();
        let e = parse(args(&["ourkv", "master", "--config", p]))
            .err()
            .unwrap();
        assert!(e.to_string().contains("--listen"), "{e}");
    }

    #[test]
    fn every_example_is_accepted_as_it_is() {
        for role in ROLES {
            let text = example(role);
            let f = file(&text);
            let p = f.path().to_str().unwrap();
            match parse(args(&["ourkv", role, "--config", p, "--print-config"])) {
                Ok(Parsed::Print(s)) => {
                    // The required options come from the file (dev has none).
                    let from_file = s.lines().filter(|l| l.ends_with("# config file")).count();
                    let required = command()
                        .find_subcommand(role)
                        .unwrap()
                        .get_arguments()
                        .filter(|a| a.is_required_set())
                        .count();
                    assert_eq!(from_file, required, "{role}: {s}");
                }
                Ok(Parsed::Run(_)) => panic!("{role}: --print-config ran"),
                Err(e) => panic!("{role}: {e}\n{text}"),
            }
        }
    }

    #[test]
    fn threads_come_from_the_file_within_their_range() {
        // A gateway's config file with `threads = <value>`, and extra flags:
        // what it parses to.
        let gateway = |value: &str, flags: &[&str]| {
            let f = file(&format!(
                "http = \"127.0.0.1:1\"\nmaster = \"127.0.0.1:2\"\nthreads = {value}\n"
            ));
            let mut a = vec!["ourkv", "gateway", "--config", f.path().to_str().unwrap()];
            a.extend_from_slice(flags);
            match parse(args(&a)) {
                Ok(Parsed::Run(cli)) => match cli.cmd {
                    crate::cli::Cmd::Gateway { run, .. } => Ok(run.threads),
                    _ => panic!("not a gateway"),
                },
                Ok(Parsed::Print(_)) => panic!("printed"),
                Err(e) => Err(e.to_string()),
            }
        };
        assert_eq!(gateway("1", &[]), Ok(Some(1)));
        // Flags win over the file; 0 threads is refused, naming the option.
        assert_eq!(gateway("1", &["--threads", "3"]), Ok(Some(3)));
        // Even where a flag wins, a bad value in the file is an error.
        let e = gateway("0", &["--threads", "3"]).unwrap_err();
        assert!(e.contains("`threads`") && e.contains("line 3"), "{e}");
        let e = gateway("\"many\"", &["--threads", "3"]).unwrap_err();
        assert!(e.contains("line 3") && e.contains("many"), "{e}");
        let e = gateway("0", &[]).unwrap_err();
        assert!(e.contains("`threads`") && e.contains("line 3"), "{e}");
        assert!(e.contains("config file"), "{e}");
        // A float is no count of threads either; the error names the file.
        let e = gateway("2.5", &[]).unwrap_err();
        assert!(e.contains("line 3") && e.contains("2.5"), "{e}");
        // Nor is a whole float: `2e0` is 2.0, refused, not taken for 2.
        let e = gateway("2e0", &[]).unwrap_err();
        assert!(e.contains("line 3") && e.contains("2.0"), "{e}");
        // A bad value on the command line stays clap's own error.
        let e = gateway("1", &["--threads", "0"]).unwrap_err();
        assert!(!e.contains("config file"), "{e}");
        // A list for a one-value key is refused, an empty one too.
        for list in ["[2]", "[]"] {
            let e = gateway(list, &[]).unwrap_err();
            assert!(e.contains("`threads` takes one value"), "{e}");
        }
    }

    #[test]
    fn addresses_are_checked_at_their_line_also_where_a_flag_wins() {
        let gateway = |text: &str, flags: &[&str]| {
            let f = file(text);
            let mut a = vec!["ourkv", "gateway", "--config", f.path().to_str().unwrap()];
            a.extend_from_slice(flags);
            parse(args(&a))
                .err()
                .map(|e| (e.to_string(), e.exit_code()))
        };
        let no_port = "http = \"127.0.0.1:1\"\nmaster = \"127.0.0.1\"\n";
        for flags in [&[][..], &["--master", "127.0.0.1:9"]] {
            let (e, code) = gateway(no_port, flags).expect("refused");
            assert!(
                e.contains("config file") && e.contains("line 2") && e.contains("`master`"),
                "{flags:?}: {e}"
            );
            assert!(e.contains("no port"), "{e}");
            assert_eq!(code, 2);
        }
        // A list item: the key's line and what is wrong with the item.
        let list = "http = \"127.0.0.1:1\"\nmaster = \"127.0.0.1:2\"\nworker = [\"127.0.0.1:3\", \"::1:4\"]\n";
        for flags in [&[][..], &["--worker", "127.0.0.1:9"]] {
            let (e, _) = gateway(list, flags).expect("refused");
            assert!(e.contains("line 3") && e.contains("brackets"), "{e}");
        }
        assert_eq!(gateway(&list.replace("::1:4", "[::1]:4"), &[]), None);
        // Over several lines: the bad item's own line.
        let long = "http = \"127.0.0.1:1\"\nmaster = \"127.0.0.1:2\"\nworker = [\n  \"127.0.0.1:3\",\n  \"::1:4\",\n]\n";
        for flags in [&[][..], &["--worker", "127.0.0.1:9"]] {
            let (e, _) = gateway(long, flags).expect("refused");
            assert!(
                e.contains("line 5") && e.contains("brackets"),
                "{flags:?}: {e}"
            );
        }
        // On the command line: clap's own error, no file named.
        let (e, code) = gateway(
            "http = \"127.0.0.1:1\"\nmaster = \"127.0.0.1:2\"\n",
            &["--master", "host:port"],
        )
        .expect("refused");
        assert!(!e.contains("config file") && e.contains("bad port"), "{e}");
        assert_eq!(code, 2);
        // Where others connect, an address must name a host and a port.
        for bad in ["0.0.0.0:7000", "[::]:7000", "[0:0::0]:7000", "127.0.0.1:0"] {
            let (e, code) = gateway(
                "http = \"127.0.0.1:1\"\nmaster = \"127.0.0.1:2\"\n",
                &["--worker", bad],
            )
            .expect("refused");
            assert!(
                e.contains("no host to reach") || e.contains("port 0"),
                "{e}"
            );
            assert_eq!(code, 2);
        }
        // `--listen :PORT` (for --mycelium-api) stays accepted.
        let master_listening = |listen: &str| {
            let f = file(&format!("data = \"/d\"\nlisten = \"{listen}\"\n"));
            parse(args(&[
                "ourkv",
                "master",
                "--config",
                f.path().to_str().unwrap(),
            ]))
        };
        assert!(master_listening(":7000").is_ok());
        assert!(master_listening(":+7000").is_err());
        let e = master_listening("7000").err().unwrap();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn lists_repeat_the_flag_and_booleans_set_it() {
        let f = file("http = \"127.0.0.1:1\"\nmaster = \"127.0.0.1:2\"\nworker = [\"127.0.0.1:3\", \"127.0.0.1:4\"]\n");
        let p = f.path().to_str().unwrap();
        let Parsed::Run(cli) = parse(args(&["ourkv", "gateway", "--config", p])).unwrap() else {
            panic!()
        };
        let crate::cli::Cmd::Gateway { workers, .. } = cli.cmd else {
            panic!()
        };
        assert_eq!(workers, ["127.0.0.1:3", "127.0.0.1:4"]);
    }
}
