//! `zcopy`: the operator's tool for shared pools. Lists the pools on this host, shows a pool's
//! counters and attached processes, checks its invariants, reclaims what dead processes held, and
//! removes a pool's name. Every command opens pools with [`Pool::inspect`], which takes no process
//! slot: the tool is never counted among a pool's processes and never holds objects.
//!
//! Exit status: 0 on success, 1 on a failed check or an operation error (one line on stderr
//! naming the pool), 2 on bad usage, an invalid pool name included (the message and a usage line
//! on stderr).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use zcopy::error::Bytes;
use zcopy::shared::ProcessInfo;
use zcopy::{Error, Pool, PoolStats};

const DEFAULT_DIR: &str = "/dev/shm";

const HELP: &str = "\
zcopy: inspect and manage the shared pools of this host (files DIR/zcopy.NAME)

usage: zcopy COMMAND [--dir DIR] [OPTIONS] [NAME]

commands:
  list          one line per pool: capacity, used bytes, objects, keys, processes alive and dead
  stat NAME     every counter, the file and each attached process (--json: as one JSON object)
  check NAME    verifies the pool's invariants: prints \"ok\", or the violation and exits 1
  reclaim NAME  reclaims the processes that died attached: their creates, references and slots
  rm NAME       removes the pool's name; refused while live processes are attached, unless --force

options:
  --dir DIR     pools in DIR instead of /dev/shm (a hugetlbfs mount, say); a relative DIR is
                taken from the working directory
  -h, --help    this help; `zcopy COMMAND --help` for one command
  --version     the version of zcopy

exit status: 0 success, 1 a failed check or an operation error, 2 bad usage (an invalid pool
name too)
";

/// One command: its name, usage line, help text and what it accepts.
struct Spec {
    name: &'static str,
    usage: &'static str,
    help: &'static str,
    /// Takes exactly one pool name (else none).
    takes_name: bool,
}

const LIST: Spec = Spec {
    name: "list",
    usage: "usage: zcopy list [--dir DIR]",
    help: "\
Lists the shared pools in DIR (/dev/shm by default), one line each: name, capacity, bytes used,
objects, keys, processes attached alive, and processes dead but not reclaimed yet (run
`zcopy reclaim NAME`). A file that cannot be inspected (not a pool, another user's) is listed with
the reason instead.

options:
  --dir DIR  pools in DIR instead of /dev/shm
",
    takes_name: false,
};

const STAT: Spec = Spec {
    name: "stat",
    usage: "usage: zcopy stat [--dir DIR] [--json] NAME",
    help: "\
Shows pool NAME's counters (capacity_bytes, used_bytes, largest_free_block, object_count,
key_count, max_objects, evictions, creates_refused, processes_attached, processes_reclaimed,
lock_repairs), its
file, and one line per process slot in use: slot, pid, alive or dead (dead: not reclaimed yet).

options:
  --json     one JSON object: \"name\", \"path\", the counters by those names, and \"processes\":
             a list of {\"slot\", \"pid\", \"alive\"}
  --dir DIR  pools in DIR instead of /dev/shm
",
    takes_name: true,
};

const CHECK: Spec = Spec {
    name: "check",
    usage: "usage: zcopy check [--dir DIR] NAME",
    help: "\
Verifies every invariant of pool NAME's shared state (process slots, records, index, allocator).
Prints \"ok\" and exits 0, or prints the first broken invariant on stderr and exits 1.

options:
  --dir DIR  pools in DIR instead of /dev/shm
",
    takes_name: true,
};

const RECLAIM: Spec = Spec {
    name: "reclaim",
    usage: "usage: zcopy reclaim [--dir DIR] NAME",
    help: "\
Reclaims what the processes that died attached to pool NAME held: their unsealed creates are
aborted, their references dropped, their slots freed. Prints how many processes it reclaimed.
(Pools also do this on their own at open, attach and close, and when a create runs out of room.)

options:
  --dir DIR  pools in DIR instead of /dev/shm
",
    takes_name: true,
};

const RM: Spec = Spec {
    name: "rm",
    usage: "usage: zcopy rm [--dir DIR] [--force] NAME",
    help: "\
Removes pool NAME's file, so the name is free at once. Processes attached keep using the pool
until they close it; the memory goes with the last of them. Refused while live processes are
attached, and for a file that is not a pool. A file whose creator died before publishing it (a
pool that never was) is removed.

options:
  --force    removes it anyway
  --dir DIR  pools in DIR instead of /dev/shm
",
    takes_name: true,
};

const COMMANDS: [&Spec; 5] = [&LIST, &STAT, &CHECK, &RECLAIM, &RM];

/// Why the tool stops without doing what was asked.
enum Failure {
    /// Exit 2: the message, then the usage line of the command (or the tool's).
    Usage(String, Option<&'static Spec>),
    /// Exit 1: one line naming the pool.
    Failed(String),
}

fn usage(message: impl Into<String>, spec: Option<&'static Spec>) -> Failure {
    Failure::Usage(message.into(), spec)
}

/// What the command line asks for.
enum Request {
    Help(Option<&'static Spec>),
    Version,
    Run { spec: &'static Spec, dir: Option<PathBuf>, json: bool, force: bool, name: Option<String> },
}

fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Request, Failure> {
    let mut args = args.into_iter();
    let (mut dir, mut json, mut force, mut help, mut version) = (None, false, false, false, false);
    let mut words: Vec<OsString> = Vec::new();
    let mut options_done = false;
    while let Some(arg) = args.next() {
        let text = arg.to_str().unwrap_or("");
        if options_done || !text.starts_with('-') || text == "-" {
            words.push(arg);
            continue;
        }
        match text {
            "--" => options_done = true,
            "-h" | "--help" => help = true,
            "--version" => version = true,
            "--json" => json = true,
            "-f" | "--force" => force = true,
            "--dir" => match args.next() {
                Some(d) if !d.is_empty() => dir = Some(PathBuf::from(d)),
                _ => return Err(usage("--dir needs a directory", None)),
            },
            _ => match text.strip_prefix("--dir=") {
                Some(d) if !d.is_empty() => dir = Some(PathBuf::from(d)),
                Some(_) => return Err(usage("--dir needs a directory", None)),
                None => return Err(usage(format!("unknown option {text}"), None)),
            },
        }
    }

    let mut words = words.into_iter();
    let command = words.next();
    let command = match &command {
        None if help => return Ok(Request::Help(None)),
        None if version => return Ok(Request::Version),
        None => return Err(usage("no command given", None)),
        Some(c) => c.to_string_lossy().into_owned(),
    };
    if command == "help" {
        return match words.next() {
            None => Ok(Request::Help(None)),
            Some(c) => match find(&c.to_string_lossy()) {
                Some(spec) => Ok(Request::Help(Some(spec))),
                None => Err(usage(format!("no command {:?}", c.to_string_lossy()), None)),
            },
        };
    }
    let Some(spec) = find(&command) else {
        return Err(usage(format!("no command {command:?}"), None));
    };
    if help {
        return Ok(Request::Help(Some(spec)));
    }
    if version {
        return Err(usage("--version goes alone", Some(spec)));
    }
    if json && spec.name != STAT.name {
        return Err(usage(format!("--json is an option of stat, not of {}", spec.name), Some(spec)));
    }
    if force && spec.name != RM.name {
        return Err(usage(format!("--force is an option of rm, not of {}", spec.name), Some(spec)));
    }
    let name = match (spec.takes_name, words.next()) {
        (true, None) => return Err(usage(format!("{} needs a pool name", spec.name), Some(spec))),
        (true, Some(n)) => match n.into_string() {
            Ok(n) => Some(n),
            Err(n) => return Err(usage(format!("pool name {n:?} is not UTF-8"), Some(spec))),
        },
        (false, Some(extra)) => {
            return Err(usage(format!("{} takes no pool name (got {:?})", spec.name, extra), Some(spec)))
        }
        (false, None) => None,
    };
    if let Some(extra) = words.next() {
        return Err(usage(format!("unexpected argument {extra:?}"), Some(spec)));
    }
    if let Some(name) = &name {
        Pool::check_name(name).map_err(|e| usage(e.to_string(), Some(spec)))?;
    }
    // The library wants an absolute directory (every process must name the same file): a
    // relative one is taken from the working directory, and every one is named as the kernel
    // resolves it, without `.`, `..` or symbolic links, in what the tool prints.
    let dir = match dir {
        Some(d) => Some(
            std::fs::canonicalize(&d)
                .map_err(|e| Failure::Failed(format!("zcopy: pool directory {}: {e}", d.display())))?,
        ),
        None => None,
    };
    Ok(Request::Run { spec, dir, json, force, name })
}

fn find(command: &str) -> Option<&'static Spec> {
    COMMANDS.into_iter().find(|spec| spec.name == command)
}

/// The directory pools are looked up in, for messages.
fn shown_dir(dir: Option<&Path>) -> PathBuf {
    dir.map_or_else(|| PathBuf::from(DEFAULT_DIR), Path::to_path_buf)
}

fn is_missing(e: &Error) -> bool {
    matches!(e, Error::System { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// One line for a failed operation on pool `name`.
fn failure_message(name: &str, dir: Option<&Path>, e: &Error) -> String {
    if is_missing(e) {
        let dir = shown_dir(dir);
        return format!(
            "zcopy: no pool \"{name}\" in {} (no file {})",
            dir.display(),
            dir.join(format!("zcopy.{name}")).display()
        );
    }
    format!("zcopy: pool \"{name}\": {e}")
}

fn failed(name: &str, dir: Option<&Path>, e: &Error) -> Failure {
    Failure::Failed(failure_message(name, dir, e))
}

/// Opens pool `name` for inspection; a failure names the pool.
fn inspect(name: &str, dir: Option<&Path>) -> Result<Pool, Failure> {
    Pool::inspect(name, dir).map_err(|e| failed(name, dir, &e))
}

/// The counters, refusing the all-zero answer `stats` gives when it cannot read them (no pool has
/// a capacity of 0).
fn stats(pool: &Pool, name: &str) -> Result<PoolStats, Failure> {
    let stats = pool.stats();
    if stats.capacity_bytes == 0 {
        return Err(Failure::Failed(format!("zcopy: pool \"{name}\": its counters cannot be read")));
    }
    Ok(stats)
}

fn processes(pool: &Pool, name: &str, dir: Option<&Path>) -> Result<Vec<ProcessInfo>, Failure> {
    pool.processes().map_err(|e| failed(name, dir, &e))
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn list(dir: Option<&Path>, out: &mut String) -> Result<(), Failure> {
    let names = zcopy::shared::list(dir).map_err(|e| Failure::Failed(format!("zcopy: {e}")))?;
    if names.is_empty() {
        let _ = writeln!(out, "no pools in {}", shown_dir(dir).display());
        return Ok(());
    }
    let header = ["NAME", "CAPACITY", "USED", "OBJECTS", "KEYS", "ALIVE", "DEAD"];
    let mut rows: Vec<Result<[String; 7], String>> = Vec::new();
    for name in &names {
        let row = Pool::inspect(name, dir).and_then(|pool| {
            let procs = pool.processes()?;
            let s = pool.stats();
            if s.capacity_bytes == 0 {
                return Err(Error::Internal("its counters cannot be read".into()));
            }
            let alive = procs.iter().filter(|p| p.alive).count();
            Ok([
                name.clone(),
                Bytes(s.capacity_bytes).to_string(),
                Bytes(s.used_bytes).to_string(),
                s.object_count.to_string(),
                s.key_count.to_string(),
                alive.to_string(),
                (procs.len() - alive).to_string(),
            ])
        });
        rows.push(row.map_err(|e| format!("{name}  cannot inspect: {e}")));
    }
    let mut widths = header.map(str::len);
    for row in rows.iter().flatten() {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |out: &mut String, cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            // The name column is left-aligned, the numbers right-aligned.
            let _ = match i {
                0 => write!(text, "{cell:<width$}"),
                _ => write!(text, "  {cell:>width$}"),
            };
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(out, &header);
    for row in &rows {
        match row {
            Ok(cells) => line(out, &cells.each_ref().map(String::as_str)),
            Err(reason) => {
                let _ = writeln!(out, "{reason}");
            }
        }
    }
    Ok(())
}

/// The counters `stat` shows, by their `PoolStats` names. The others (`page_size`, `open_nanos`,
/// the RDMA ones) describe this tool's own handle, not the pool.
fn counters(s: &PoolStats) -> [(&'static str, u64); 11] {
    [
        ("capacity_bytes", s.capacity_bytes),
        ("used_bytes", s.used_bytes),
        ("largest_free_block", s.largest_free_block),
        ("object_count", s.object_count),
        ("key_count", s.key_count),
        ("max_objects", s.max_objects),
        ("evictions", s.evictions),
        ("creates_refused", s.creates_refused),
        ("processes_attached", s.processes_attached),
        ("processes_reclaimed", s.processes_reclaimed),
        ("lock_repairs", s.lock_repairs),
    ]
}

const BYTE_COUNTERS: [&str; 3] = ["capacity_bytes", "used_bytes", "largest_free_block"];

fn stat(name: &str, dir: Option<&Path>, json: bool, out: &mut String) -> Result<(), Failure> {
    let pool = inspect(name, dir)?;
    let procs = processes(&pool, name, dir)?;
    let s = stats(&pool, name)?;
    let path = pool.path().map(Path::to_path_buf).unwrap_or_else(|| shown_dir(dir).join(format!("zcopy.{name}")));
    if json {
        let _ = writeln!(out, "{{");
        let _ = writeln!(out, "  \"name\": {},", json_string(name));
        let _ = writeln!(out, "  \"path\": {},", json_string(&path.to_string_lossy()));
        for (key, value) in counters(&s) {
            let _ = writeln!(out, "  \"{key}\": {value},");
        }
        let entries: Vec<String> = procs
            .iter()
            .map(|p| format!("{{\"slot\": {}, \"pid\": {}, \"alive\": {}}}", p.slot, p.pid, p.alive))
            .collect();
        let _ = writeln!(out, "  \"processes\": [{}]", entries.join(", "));
        let _ = writeln!(out, "}}");
        return Ok(());
    }
    let _ = writeln!(out, "{:<20} {name}", "pool");
    let _ = writeln!(out, "{:<20} {}", "file", path.display());
    for (key, value) in counters(&s) {
        if BYTE_COUNTERS.contains(&key) {
            let _ = writeln!(out, "{key:<20} {value} ({})", Bytes(value));
        } else {
            let _ = writeln!(out, "{key:<20} {value}");
        }
    }
    let alive = procs.iter().filter(|p| p.alive).count();
    let dead = procs.len() - alive;
    let summary = match (procs.len(), dead) {
        (0, _) => "none".to_string(),
        (_, 0) => format!("{} in use, all alive", plural(procs.len(), "slot", "slots")),
        _ => format!(
            "{} in use: {alive} alive, {dead} dead (not reclaimed yet: zcopy reclaim {name})",
            plural(procs.len(), "slot", "slots")
        ),
    };
    let _ = writeln!(out, "{:<20} {summary}", "processes");
    for p in &procs {
        let _ = writeln!(out, "  slot {:<4} pid {:<8} {}", p.slot, p.pid, if p.alive { "alive" } else { "dead" });
    }
    Ok(())
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(quoted, "\\u{:04x}", c as u32);
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

fn check(name: &str, dir: Option<&Path>, out: &mut String) -> Result<(), Failure> {
    let pool = inspect(name, dir)?;
    pool.check().map_err(|e| Failure::Failed(format!("zcopy: pool \"{name}\": check failed: {e}")))?;
    let _ = writeln!(out, "ok");
    Ok(())
}

fn reclaim(name: &str, dir: Option<&Path>, out: &mut String) -> Result<(), Failure> {
    let pool = inspect(name, dir)?;
    let n = pool.reclaim().map_err(|e| failed(name, dir, &e))?;
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    let _ = writeln!(out, "pool \"{name}\": reclaimed {}", plural(n, "dead process", "dead processes"));
    Ok(())
}

fn rm(name: &str, dir: Option<&Path>, force: bool, out: &mut String) -> Result<(), Failure> {
    let alive: Vec<u32> = match Pool::inspect(name, dir).and_then(|pool| pool.processes()) {
        Ok(procs) => procs.iter().filter(|p| p.alive).map(|p| p.pid).collect(),
        Err(e) if is_missing(&e) => return Err(failed(name, dir, &e)),
        // A file whose creator died before publishing it never was a pool: it goes without
        // --force (the library decides under the file's creation lock, so never a live creator's).
        Err(_) if Pool::remove_abandoned(name, dir).unwrap_or(false) => {
            let path = shown_dir(dir).join(format!("zcopy.{name}"));
            let _ = writeln!(
                out,
                "removed pool file \"{name}\" ({}): its creator died before publishing it",
                path.display()
            );
            return Ok(());
        }
        Err(e) if !force => {
            let why = failure_message(name, dir, &e);
            return Err(Failure::Failed(format!(
                "{why}; not removed (zcopy rm --force {name} removes the file anyway)"
            )));
        }
        // With --force, a file that is not a pool goes too.
        Err(_) => Vec::new(),
    };
    let pids = alive.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
    if !alive.is_empty() && !force {
        return Err(Failure::Failed(format!(
            "zcopy: pool \"{name}\": not removed: {} attached (pid {pids}); stop {} first, or run \
             zcopy rm --force {name} ({} the pool until {} it)",
            plural(alive.len(), "live process", "live processes"),
            if alive.len() == 1 { "it" } else { "them" },
            if alive.len() == 1 { "it keeps" } else { "they keep" },
            if alive.len() == 1 { "it closes" } else { "they close" },
        )));
    }
    Pool::unlink(name, dir).map_err(|e| failed(name, dir, &e))?;
    let path = shown_dir(dir).join(format!("zcopy.{name}"));
    let _ = write!(out, "removed pool \"{name}\" ({})", path.display());
    if !alive.is_empty() {
        let _ = write!(
            out,
            "; {} still attached (pid {pids}) {}",
            plural(alive.len(), "process", "processes"),
            if alive.len() == 1 { "keeps using it until it closes it" } else { "keep using it until they close it" }
        );
    }
    let _ = writeln!(out);
    Ok(())
}

fn run(request: Request, out: &mut String) -> Result<(), Failure> {
    let (spec, dir, json, force, name) = match request {
        Request::Help(None) => {
            out.push_str(HELP);
            return Ok(());
        }
        Request::Help(Some(spec)) => {
            let _ = write!(out, "{}\n\n{}", spec.usage, spec.help);
            return Ok(());
        }
        Request::Version => {
            let _ = writeln!(out, "zcopy {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        Request::Run { spec, dir, json, force, name } => (spec, dir, json, force, name),
    };
    let dir = dir.as_deref();
    let name = name.as_deref().unwrap_or("");
    match spec.name {
        "list" => list(dir, out),
        "stat" => stat(name, dir, json, out),
        "check" => check(name, dir, out),
        "reclaim" => reclaim(name, dir, out),
        "rm" => rm(name, dir, force, out),
        other => unreachable!("no command {other} in COMMANDS"),
    }
}

fn main() -> ExitCode {
    let mut out = String::new();
    let result = parse(std::env::args_os().skip(1)).and_then(|request| run(request, &mut out));
    // Whatever was written goes out even when a later step failed. A closed pipe (`zcopy list |
    // head`) is not an error of the tool.
    if let Err(e) = std::io::stdout().lock().write_all(out.as_bytes()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("zcopy: writing the output: {e}");
            return ExitCode::from(1);
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Failed(message)) => {
            eprintln!("{message}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(message, spec)) => {
            let usage = spec.map_or("usage: zcopy COMMAND [--dir DIR] [OPTIONS] [NAME]  (zcopy --help)", |s| s.usage);
            eprintln!("zcopy: {message}\n{usage}");
            ExitCode::from(2)
        }
    }
}
