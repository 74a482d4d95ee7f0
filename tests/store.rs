//! The key-value store example (`examples/store/`): builds its server and client with strict
//! warnings against the fresh `libzcopy.so`, starts servers on ephemeral loopback ports, and
//! checks them through the raw protocol (a small client below, so malformed frames can be sent)
//! and through the C++ command-line client. Every server is killed by its PID when its test ends.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use common::{lib_dir, manifest_dir, profile_dir};

// ------------------------------------------------------------------------------------------------
// Building and running

struct Binaries {
    server: PathBuf,
    client: PathBuf,
}

/// Compiles one program of `examples/store/` with the strict flags `build.sh` uses.
fn build_cpp(name: &str, source: &str) -> PathBuf {
    let root = manifest_dir();
    let compiler = cc::Build::new()
        .cpp(true)
        .cargo_metadata(false)
        .cargo_warnings(false)
        .target(env!("ZCOPY_TARGET"))
        .host(env!("ZCOPY_HOST"))
        .opt_level(2)
        .debug(false)
        .get_compiler();
    let lib = lib_dir();
    let out = profile_dir().join("store_bin").join(name);
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let mut cmd = compiler.to_command();
    cmd.args(["-std=c++17", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-pthread", "-I"])
        .arg(root.join("include"))
        .arg(root.join(source))
        .arg("-o")
        .arg(&out)
        .arg("-L")
        .arg(&lib)
        .arg("-lzcopy")
        .arg(format!("-Wl,-rpath,{}", lib.display()));
    // As build.sh: the RDMA path (and -libverbs, which libzcopy itself never links) where the
    // verbs headers are; TCP-only programs elsewhere.
    if Path::new("/usr/include/infiniband/verbs.h").exists() {
        cmd.arg("-libverbs");
    } else {
        cmd.arg("-DZCS_NO_RDMA");
    }
    let result = cmd.output().expect("run the C++ compiler");
    assert!(
        result.status.success(),
        "compiling {source} failed:\n{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

fn binaries() -> &'static Binaries {
    static BINS: OnceLock<Binaries> = OnceLock::new();
    BINS.get_or_init(|| {
        lib_dir(); // build the library once, before the two compilers need it
        let server = thread::spawn(|| build_cpp("zcopy-store-server", "examples/store/server.cpp"));
        let client = build_cpp("zcopy-store-client", "examples/store/client.cpp");
        Binaries { server: server.join().expect("server build"), client }
    })
}

/// A server process on an ephemeral loopback port, killed (by its PID) when dropped.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn start(name: &str, args: &[&str]) -> Server {
        Server::start_under(name, &[], args)
    }

    /// Starts the server through `wrapper` (a command that execs the rest, such as `prlimit
    /// --nofile=64:64`), so that the PID is still the server's.
    fn start_under(name: &str, wrapper: &[&str], args: &[&str]) -> Server {
        let log = profile_dir().join("store_logs").join(format!("{name}.log"));
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&binaries().server);
                c
            }
            None => Command::new(&binaries().server),
        };
        let mut child = cmd
            .args(["--listen", "127.0.0.1", "--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().strip_prefix("listening 127.0.0.1:").and_then(|p| p.parse().ok()).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("server printed {line:?}, log:\n{}", std::fs::read_to_string(&log).unwrap_or_default())
        });
        Server { child, port, log }
    }

    fn conn(&self) -> Conn {
        Conn::open(self.port)
    }

    /// Runs the C++ client against this server; returns (exit code, stdout, stderr).
    fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> (i32, Vec<u8>, String) {
        let mut child = Command::new(&binaries().client)
            .args(["--port", &self.port.to_string()])
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the client");
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        (out.status.code().unwrap_or(-1), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
    }

    fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "server exited; log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------------------------------------
// The protocol (PROTOCOL.md), spoken directly

const MAGIC: u32 = 0x564B_435A;
const HEADER: usize = 32;

const OP_HELLO: u8 = 1;
const OP_PUT: u8 = 2;
const OP_GET: u8 = 3;
const OP_DEL: u8 = 4;
const OP_EXISTS: u8 = 5;
const OP_BATCH_PUT: u8 = 6;
const OP_BATCH_GET: u8 = 7;
const OP_STATS: u8 = 8;

const FLAG_RDMA: u16 = 1;
const CAP_TCP_VALUES: u32 = 1;
const CAP_RDMA_DESC: u32 = 2;
const CAP_COPY_ON_READ: u32 = 4;

const OK: u16 = 0;
const NOT_FOUND: u16 = 1;
const ALREADY_EXISTS: u16 = 2;
const BUSY: u16 = 3;
const BAD_KEY: u16 = 4;
const VALUE_TOO_LARGE: u16 = 5;
const POOL_FULL: u16 = 6;
const BAD_OPCODE: u16 = 7;
const BAD_REQUEST: u16 = 8;
const BATCH_TOO_LARGE: u16 = 9;
const UNSUPPORTED: u16 = 10;
const SERVER_BUSY: u16 = 11;
const BAD_FRAME: u16 = 12;

#[derive(Clone, Copy)]
struct Hdr {
    magic: u32,
    version: u8,
    opcode: u8,
    flags: u16,
    id: u64,
    key_len: u32,
    status: u16,
    reserved: u16,
    value_len: u64,
}

impl Hdr {
    fn request(opcode: u8, id: u64, key_len: usize, value_len: u64) -> Hdr {
        Hdr {
            magic: MAGIC,
            version: 1,
            opcode,
            flags: 0,
            id,
            key_len: key_len as u32,
            status: 0,
            reserved: 0,
            value_len,
        }
    }
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER);
        b.extend_from_slice(&self.magic.to_le_bytes());
        b.push(self.version);
        b.push(self.opcode);
        b.extend_from_slice(&self.flags.to_le_bytes());
        b.extend_from_slice(&self.id.to_le_bytes());
        b.extend_from_slice(&self.key_len.to_le_bytes());
        b.extend_from_slice(&self.status.to_le_bytes());
        b.extend_from_slice(&self.reserved.to_le_bytes());
        b.extend_from_slice(&self.value_len.to_le_bytes());
        b
    }
    fn decode(b: &[u8]) -> Hdr {
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        Hdr {
            magic: u32_at(0),
            version: b[4],
            opcode: b[5],
            flags: u16_at(6),
            id: u64_at(8),
            key_len: u32_at(16),
            status: u16_at(20),
            reserved: u16_at(22),
            value_len: u64_at(24),
        }
    }
}

#[derive(Debug)]
struct Reply {
    opcode: u8,
    status: u16,
    id: u64,
    body: Vec<u8>,
}

impl Reply {
    fn message(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

struct Conn {
    s: TcpStream,
    next_id: u64,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
        s.set_nodelay(true).unwrap();
        Conn { s, next_id: 1 }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("send");
    }

    fn send_hdr(&mut self, h: Hdr, key: &[u8], body: &[u8]) {
        let mut frame = h.encode();
        frame.extend_from_slice(key);
        frame.extend_from_slice(body);
        self.send_raw(&frame);
    }

    fn send(&mut self, opcode: u8, key: &[u8], body: &[u8]) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send_hdr(Hdr::request(opcode, id, key.len(), body.len() as u64), key, body);
        id
    }

    /// The next reply; None at end of stream.
    fn try_recv(&mut self) -> Option<Reply> {
        let mut raw = [0u8; HEADER];
        match self.s.read_exact(&mut raw) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("receive reply: {e}"),
        }
        let h = Hdr::decode(&raw);
        assert_eq!((h.magic, h.version, h.key_len, h.reserved), (MAGIC, 1, 0, 0), "reply header");
        let mut body = vec![0u8; h.value_len as usize];
        self.s.read_exact(&mut body).expect("receive reply body");
        Some(Reply { opcode: h.opcode, status: h.status, id: h.id, body })
    }

    fn recv(&mut self) -> Reply {
        self.try_recv().expect("the server closed the connection")
    }

    fn call(&mut self, opcode: u8, key: &[u8], body: &[u8]) -> Reply {
        let id = self.send(opcode, key, body);
        let r = self.recv();
        assert_eq!((r.opcode, r.id), (opcode | 0x80, id), "reply to {opcode}: {r:?}");
        r
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> u16 {
        let r = self.call(OP_PUT, key, value);
        if r.status == OK {
            assert!(r.body.is_empty());
        }
        r.status
    }

    fn get(&mut self, key: &[u8]) -> Result<Vec<u8>, u16> {
        let r = self.call(OP_GET, key, &[]);
        if r.status == OK {
            Ok(r.body)
        } else {
            Err(r.status)
        }
    }

    fn del(&mut self, key: &[u8]) -> u16 {
        self.call(OP_DEL, key, &[]).status
    }

    fn exists(&mut self, key: &[u8]) -> bool {
        let r = self.call(OP_EXISTS, key, &[]);
        assert_eq!((r.status, r.body.len()), (OK, 1));
        r.body[0] == 1
    }

    fn stats(&mut self) -> HashMap<String, u64> {
        let r = self.call(OP_STATS, &[], &[]);
        assert_eq!(r.status, OK);
        r.message()
            .lines()
            .map(|l| {
                let (k, v) = l.split_once(' ').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect()
    }

    fn batch_put(&mut self, items: &[(&[u8], &[u8])]) -> Reply {
        self.call(OP_BATCH_PUT, &[], &batch_put_body(items))
    }

    fn batch_get(&mut self, keys: &[&[u8]]) -> Reply {
        let mut body = (keys.len() as u32).to_le_bytes().to_vec();
        for k in keys {
            body.extend_from_slice(&(k.len() as u32).to_le_bytes());
            body.extend_from_slice(k);
        }
        self.call(OP_BATCH_GET, &[], &body)
    }
}

fn batch_put_body(items: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut body = (items.len() as u32).to_le_bytes().to_vec();
    for (k, v) in items {
        body.extend_from_slice(&(k.len() as u32).to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&(v.len() as u64).to_le_bytes());
        body.extend_from_slice(k);
        body.extend_from_slice(v);
    }
    body
}

fn batch_put_statuses(r: &Reply) -> Vec<u16> {
    assert_eq!(r.status, OK, "{}", r.message());
    let n = u32::from_le_bytes(r.body[..4].try_into().unwrap()) as usize;
    assert_eq!(r.body.len(), 4 + 4 * n);
    (0..n).map(|i| u16::from_le_bytes(r.body[4 + 4 * i..6 + 4 * i].try_into().unwrap())).collect()
}

fn batch_get_items(r: &Reply) -> Vec<(u16, Vec<u8>)> {
    assert_eq!(r.status, OK, "{}", r.message());
    let b = &r.body;
    let n = u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
    let mut pos = 4;
    let mut out = Vec::new();
    for _ in 0..n {
        let status = u16::from_le_bytes(b[pos..pos + 2].try_into().unwrap());
        let size = u64::from_le_bytes(b[pos + 8..pos + 16].try_into().unwrap()) as usize;
        pos += 16;
        out.push((status, b[pos..pos + size].to_vec()));
        pos += size;
    }
    assert_eq!(pos, b.len(), "batch reply length");
    out
}

/// Deterministic bytes for a seed (xorshift64*).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// Pool bytes a value takes (the pool rounds every object up to 64).
fn footprint(size: usize) -> u64 {
    size.div_ceil(64) as u64 * 64
}

/// Polls STATS until `done` holds (at most 5 s) and returns the last snapshot.
fn wait_for_stats(conn: &mut Conn, what: &str, done: impl Fn(&HashMap<String, u64>) -> bool) -> HashMap<String, u64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = conn.stats();
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; stats: {s:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------------------------------------------
// Tests

/// 4 threads x 200 operations on distinct and shared keys, content compared on every read, on a
/// zero-copy server and on a copy-on-read one; then the pool holds exactly the committed values.
#[test]
fn concurrent_clients_on_distinct_and_shared_keys() {
    for mode in [&[][..], &["--copy-on-read"][..]] {
        let mut server =
            Server::start(&format!("concurrent{}", mode.len()), &[&["--pool-size", "64M"][..], mode].concat());
        let port = server.port;
        let workers: Vec<_> = (0..4u64)
            .map(|t| {
                thread::spawn(move || {
                    let mut c = Conn::open(port);
                    let mut mine = HashMap::new(); // key -> value this thread stored and kept
                    for i in 0..200u64 {
                        if i % 4 == 3 {
                            // Shared keys: whoever puts first wins; the value is the same for all.
                            let j = (t + i) % 8;
                            let key = format!("shared/{j}");
                            let value = pattern(1000 + j, 1000 + 700 * j as usize);
                            let st = c.put(key.as_bytes(), &value);
                            assert!(st == OK || st == ALREADY_EXISTS, "shared put: {st}");
                            // Another thread may still be writing it (created, not sealed).
                            let deadline = Instant::now() + Duration::from_secs(5);
                            let got = loop {
                                match c.get(key.as_bytes()) {
                                    Err(BUSY) if Instant::now() < deadline => thread::yield_now(),
                                    other => break other,
                                }
                            };
                            assert_eq!(got.expect("shared get"), value, "{key}");
                            continue;
                        }
                        let key = format!("t{t}/k{i}");
                        let value = pattern(t * 1000 + i, 1 + ((i * 7919 + t * 131) % 70_000) as usize);
                        assert_eq!(c.put(key.as_bytes(), &value), OK, "{key}");
                        assert_eq!(c.get(key.as_bytes()).expect("get own key"), value, "{key}");
                        if i % 5 == 0 {
                            assert_eq!(c.del(key.as_bytes()), OK);
                            assert_eq!(c.get(key.as_bytes()), Err(NOT_FOUND));
                        } else {
                            mine.insert(key, value);
                        }
                    }
                    // Everything this thread kept is still intact after the others' traffic.
                    for (key, value) in &mine {
                        assert_eq!(&c.get(key.as_bytes()).unwrap(), value, "{key}");
                    }
                    mine
                })
            })
            .collect();
        let mut committed: HashMap<String, Vec<u8>> = HashMap::new();
        for w in workers {
            committed.extend(w.join().expect("worker"));
        }
        for j in 0..8u64 {
            committed.insert(format!("shared/{j}"), pattern(1000 + j, 1000 + 700 * j as usize));
        }
        let mut c = server.conn();
        // A fresh connection sees every value, byte for byte, in one batch per 100 keys.
        let keys: Vec<&String> = committed.keys().collect();
        for chunk in keys.chunks(100) {
            let raw: Vec<&[u8]> = chunk.iter().map(|k| k.as_bytes()).collect();
            for (k, (st, v)) in chunk.iter().zip(batch_get_items(&c.batch_get(&raw))) {
                assert_eq!((st, &v), (OK, &committed[*k]), "{k}");
            }
        }
        let want_bytes: u64 = committed.values().map(|v| footprint(v.len())).sum();
        let n = committed.len() as u64;
        let s = wait_for_stats(&mut c, "the pool to hold exactly the committed values", |s| {
            s["used_bytes"] == want_bytes && s["object_count"] == n && s["key_count"] == n && s["refs_held"] == 0
        });
        assert_eq!(s["copy_on_read"], mode.len() as u64);
        assert_eq!(s["puts_aborted"], 0);
        server.assert_alive();
    }
}

/// Every bad input gets an error reply with a message; the connection (or, for a broken frame,
/// the server) keeps working, and a good request still succeeds afterwards.
#[test]
fn bad_inputs_get_error_replies_and_the_server_keeps_serving() {
    let mut server =
        Server::start("bad_inputs", &["--pool-size", "4M", "--max-value", "1M", "--max-key", "64", "--max-batch", "8"]);
    let mut c = server.conn();
    let good = pattern(7, 5000);
    assert_eq!(c.put(b"good", &good), OK);
    let still_good = |c: &mut Conn| assert_eq!(c.get(b"good").as_deref(), Ok(&good[..]));

    // HELLO: limits and capabilities; RDMA descriptors are not offered without an RDMA device
    // (these tests run on hosts without one; the RDMA path is tested in the Soft-RoCE VM by
    // scripts/rdma-tests.sh, examples/store/rdma_test.cpp).
    let hello = c.call(OP_HELLO, &[], &[]);
    assert_eq!((hello.status, hello.body.len()), (OK, 32));
    let caps = u32::from_le_bytes(hello.body[4..8].try_into().unwrap());
    assert_eq!(caps & (CAP_TCP_VALUES | CAP_RDMA_DESC | CAP_COPY_ON_READ), CAP_TCP_VALUES);
    assert_eq!(u32::from_le_bytes(hello.body[8..12].try_into().unwrap()), 64);
    assert_eq!(u64::from_le_bytes(hello.body[16..24].try_into().unwrap()), 1 << 20);

    // Unknown keys.
    assert_eq!(c.get(b"missing"), Err(NOT_FOUND));
    assert_eq!(c.del(b"missing"), NOT_FOUND);
    assert!(!c.exists(b"missing"));
    assert!(c.exists(b"good"));

    // Bad opcode, with a key and a body that the server must skip.
    let r = c.call(0x55, b"k", &[9u8; 1000]);
    assert_eq!(r.status, BAD_OPCODE, "{}", r.message());
    assert!(r.message().contains("opcode"), "{}", r.message());
    // The RDMA opcodes (COMMIT, DONE, RDMA_CONNECT) are UNSUPPORTED without CAP_RDMA_DESC, and
    // their bodies are skipped.
    for (op, body) in [(0x09u8, 8usize), (0x0A, 8), (0x0B, 32)] {
        let r = c.call(op, &[], &vec![0u8; body]);
        assert_eq!(r.status, UNSUPPORTED, "opcode {op:#x}: {}", r.message());
        assert!(r.message().contains("RDMA"), "{}", r.message());
    }
    // So is an RDMA PUT (its body is the value's size).
    let mut h = Hdr::request(OP_PUT, 902, 3, 8);
    h.flags = FLAG_RDMA;
    c.send_hdr(h, b"rpk", &4096u64.to_le_bytes());
    assert_eq!(c.recv().status, UNSUPPORTED);
    assert!(!c.exists(b"rpk"));
    still_good(&mut c);

    // Keys: empty, longer than the server's limit (with a value behind it).
    assert_eq!(c.get(b""), Err(BAD_KEY));
    assert_eq!(c.put(&[b'x'; 65], &[1u8; 3000]), BAD_KEY);
    assert_eq!(c.put(&[b'x'; 64], &[1u8; 3]), OK);
    still_good(&mut c);

    // Values larger than --max-value: refused, the bytes skipped, the stream still in step.
    let r = c.call(OP_PUT, b"huge", &vec![3u8; (1 << 20) + 1]);
    assert_eq!(r.status, VALUE_TOO_LARGE, "{}", r.message());
    assert!(!c.exists(b"huge"));
    still_good(&mut c);

    // A key that exists keeps its value.
    assert_eq!(c.put(b"good", &[0u8; 10]), ALREADY_EXISTS);
    still_good(&mut c);

    // Header fields: a body where none belongs, unknown flags, RDMA, a status in a request.
    assert_eq!(c.call(OP_GET, b"good", b"junk").status, BAD_REQUEST);
    assert_eq!(c.call(OP_STATS, b"key", &[]).status, BAD_REQUEST);
    let mut h = Hdr::request(OP_GET, 900, 4, 0);
    h.flags = 0x8000;
    c.send_hdr(h, b"good", &[]);
    assert_eq!(c.recv().status, BAD_REQUEST);
    h.flags = FLAG_RDMA;
    c.send_hdr(h, b"good", &[]);
    let r = c.recv();
    assert_eq!(r.status, UNSUPPORTED, "{}", r.message());
    assert!(r.message().contains("RDMA"), "{}", r.message());
    let mut h = Hdr::request(OP_PUT, 901, 3, 5);
    h.status = 1;
    c.send_hdr(h, b"abc", b"12345");
    assert_eq!(c.recv().status, BAD_REQUEST);
    assert!(!c.exists(b"abc"));
    still_good(&mut c);

    // A full pool (4 MiB): 1 MiB values until refused, then room again after a delete.
    let mut stored = Vec::new();
    let full = loop {
        assert!(stored.len() < 8, "a 4 MiB pool took 8 values of 1 MiB");
        let key = format!("fill{}", stored.len());
        match c.put(key.as_bytes(), &vec![5u8; 1 << 20]) {
            OK => stored.push(key),
            st => break st,
        }
    };
    assert_eq!(full, POOL_FULL);
    still_good(&mut c);
    assert_eq!(c.del(stored.pop().unwrap().as_bytes()), OK);
    assert_eq!(c.put(b"after-full", &vec![6u8; 1 << 20]), OK);
    assert_eq!(c.get(b"after-full").unwrap(), vec![6u8; 1 << 20]);
    assert_eq!(c.del(b"after-full"), OK);
    for key in &stored {
        assert_eq!(c.del(key.as_bytes()), OK);
    }

    // Batches: too many items, malformed bodies (nothing of a malformed batch is committed).
    let many: Vec<(&[u8], &[u8])> = (0..9).map(|_| (&b"k"[..], &b"v"[..])).collect();
    assert_eq!(c.batch_put(&many).status, BATCH_TOO_LARGE);
    let keys: Vec<&[u8]> = vec![b"good"; 9];
    assert_eq!(c.batch_get(&keys).status, BATCH_TOO_LARGE);
    let mut body = batch_put_body(&[(b"ok-item", b"abc"), (b"second", b"defg")]);
    let declared = body.len() - 2;
    body.truncate(declared); // the second item's value runs past the body
    let r = c.call(OP_BATCH_PUT, &[], &body);
    assert_eq!(r.status, BAD_REQUEST, "{}", r.message());
    assert!(!c.exists(b"ok-item"), "a malformed batch committed an item");
    let mut body = batch_put_body(&[(b"ok-item", b"abc")]);
    body.extend_from_slice(b"trailing");
    assert_eq!(c.call(OP_BATCH_PUT, &[], &body).status, BAD_REQUEST);
    assert!(!c.exists(b"ok-item"));
    assert_eq!(c.call(OP_BATCH_GET, &[], &[2, 0, 0, 0, 200, 0, 0, 0, b'x']).status, BAD_REQUEST);
    assert_eq!(c.call(OP_BATCH_GET, &[], &[1, 0]).status, BAD_REQUEST);
    still_good(&mut c);

    // A broken frame (bad magic, bad version) closes only that connection.
    let mut other = server.conn();
    assert_eq!(other.put(b"other", b"still here"), OK);
    for (magic, version) in [(0x1234_5678, 1), (MAGIC, 9)] {
        let mut bad = server.conn();
        let mut h = Hdr::request(OP_GET, 1, 4, 0);
        h.magic = magic;
        h.version = version;
        bad.send_hdr(h, b"good", &[]);
        let r = bad.recv();
        assert_eq!(r.status, BAD_FRAME, "{}", r.message());
        assert!(bad.try_recv().is_none(), "the connection stays open after a broken frame");
    }
    // A header cut short, then the peer goes away.
    let mut cut = server.conn();
    cut.send_raw(&Hdr::request(OP_PUT, 1, 3, 10).encode()[..20]);
    drop(cut);
    assert_eq!(other.get(b"other").unwrap(), b"still here");
    still_good(&mut c);

    let s = c.stats();
    assert!(s["error_replies"] >= 20, "{s:?}");
    assert_eq!(s["frames_broken"], 2);
    server.assert_alive();
}

/// Clients killed mid-PUT (single and batch) and mid-GET: the server aborts the unfinished
/// objects and drops the references it held for them, so the pool returns to exactly the
/// committed values.
#[test]
fn killed_clients_leave_nothing_behind() {
    let mut server = Server::start("killed", &["--pool-size", "128M"]);
    let mut c = server.conn();
    let mut committed: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for (i, size) in [100usize, 4096, 65_537, 1 << 20].into_iter().enumerate() {
        let key = format!("keep{i}").into_bytes();
        let value = pattern(i as u64, size);
        assert_eq!(c.put(&key, &value), OK);
        committed.insert(key, value);
    }
    let big = pattern(99, 32 << 20); // larger than any socket buffer: its sender blocks
    assert_eq!(c.put(b"big", &big), OK);
    committed.insert(b"big".to_vec(), big.clone());
    let want_bytes = |m: &HashMap<Vec<u8>, Vec<u8>>| m.values().map(|v| footprint(v.len())).sum::<u64>();
    let settled = |bytes: u64, n: u64| {
        move |s: &HashMap<String, u64>| {
            s["used_bytes"] == bytes && s["object_count"] == n && s["key_count"] == n && s["refs_held"] == 0
        }
    };
    wait_for_stats(&mut c, "the committed values", settled(want_bytes(&committed), committed.len() as u64));

    // Mid-PUT: the header and half of an 8 MiB value, then the socket is dropped (three clients,
    // one of them in a batch with a complete first item).
    let mut dead = Vec::new();
    for i in 0..2 {
        let mut d = server.conn();
        let key = format!("half{i}");
        d.send_hdr(Hdr::request(OP_PUT, 1, key.len(), 8 << 20), key.as_bytes(), &vec![1u8; 4 << 20]);
        dead.push(d);
    }
    let mut d = server.conn();
    let body = batch_put_body(&[(b"batch-done", b"complete item"), (b"batch-half", &vec![2u8; 1 << 20])]);
    let declared = body.len() as u64;
    d.send_hdr(Hdr::request(OP_BATCH_PUT, 1, 0, declared), &[], &body[..body.len() - (512 << 10)]);
    dead.push(d);
    // The server is receiving into the unsealed buffers: their memory is reserved now.
    wait_for_stats(&mut c, "the unfinished PUTs to reserve memory", |s| {
        s["used_bytes"] >= want_bytes(&committed) + (16 << 20) + footprint(1 << 20)
    });
    assert!(!c.exists(b"half0") && !c.exists(b"batch-done"), "an unfinished PUT is visible");
    drop(dead);
    wait_for_stats(
        &mut c,
        "the unfinished PUTs to be aborted",
        settled(want_bytes(&committed), committed.len() as u64),
    );

    // Mid-GET: a client asks for 32 MiB and never reads; while the server is blocked sending
    // from the pool it holds a reference, which even a DEL of the key does not free.
    let mut stalled = server.conn();
    stalled.send(OP_GET, b"big", &[]);
    wait_for_stats(&mut c, "the stalled GET to hold its reference", |s| s["refs_held"] == 1);
    assert_eq!(c.del(b"big"), OK);
    committed.remove(&b"big"[..]);
    let s = c.stats();
    assert_eq!(s["key_count"], committed.len() as u64);
    assert_eq!(s["object_count"], committed.len() as u64 + 1, "deleted but referenced: {s:?}");
    drop(stalled);
    // A second reader that takes part of a value, then closes.
    let mut partial = server.conn();
    partial.send(OP_GET, b"keep3", &[]);
    let mut some = vec![0u8; 1000];
    partial.s.read_exact(&mut some).unwrap();
    partial.s.shutdown(Shutdown::Both).unwrap();
    drop(partial);

    let s = wait_for_stats(
        &mut c,
        "every aborted PUT and interrupted GET to be released",
        settled(want_bytes(&committed), committed.len() as u64),
    );
    assert!(s["puts_aborted"] >= 3, "{s:?}");
    assert!(s["gets_interrupted"] >= 1, "{s:?}");
    for (k, v) in &committed {
        assert_eq!(&c.get(k).unwrap(), v);
    }
    assert_eq!(c.get(b"half0"), Err(NOT_FOUND));
    assert_eq!(c.get(b"batch-done"), Err(NOT_FOUND), "an interrupted batch committed an item");
    assert_eq!(c.put(b"half0", b"the key is free again"), OK);
    server.assert_alive();
}

/// BATCH_PUT and BATCH_GET: per-item statuses, in order, content compared; through the raw
/// protocol and through the C++ client (mput / mget).
#[test]
fn batch_operations() {
    let mut server = Server::start("batch", &["--pool-size", "16M", "--max-value", "2M", "--max-batch", "16"]);
    let mut c = server.conn();
    assert_eq!(c.put(b"existing", b"old"), OK);
    let values: Vec<Vec<u8>> = (0..6).map(|i| pattern(i, 10 + i as usize * 30_000)).collect();
    let items: Vec<(&[u8], &[u8])> = vec![
        (b"b0", &values[0]),
        (b"b1", &values[1]),
        (b"existing", &values[2]),     // ALREADY_EXISTS
        (b"b0", &values[3]),           // a duplicate inside the batch: ALREADY_EXISTS
        (b"", &values[4]),             // BAD_KEY
        (b"too-big", &[7u8; 3 << 20]), // VALUE_TOO_LARGE
        (b"b6", &values[5]),
        (b"empty", b""),
    ];
    let st = batch_put_statuses(&c.batch_put(&items));
    assert_eq!(st, vec![OK, OK, ALREADY_EXISTS, ALREADY_EXISTS, BAD_KEY, VALUE_TOO_LARGE, OK, OK]);

    let keys: Vec<&[u8]> = vec![b"b6", b"missing", b"b0", b"existing", b"empty", b"b1", b"too-big"];
    let got = batch_get_items(&c.batch_get(&keys));
    let want: Vec<(u16, Vec<u8>)> = vec![
        (OK, values[5].clone()),
        (NOT_FOUND, vec![]),
        (OK, values[0].clone()),
        (OK, b"old".to_vec()),
        (OK, vec![]),
        (OK, values[1].clone()),
        (NOT_FOUND, vec![]),
    ];
    assert_eq!(got, want);
    assert_eq!(batch_get_items(&c.batch_get(&[])), vec![]);

    // The same through the C++ client library.
    let dir = profile_dir().join("store_tmp").join("batch");
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str| dir.join(name).to_str().unwrap().to_string();
    std::fs::write(file("x"), pattern(40, 70_000)).unwrap();
    std::fs::write(file("y"), pattern(41, 1)).unwrap();
    let (code, out, err) = server.cli(&["mput", &format!("cx={}", file("x")), &format!("cy={}", file("y"))], None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(String::from_utf8_lossy(&out), "cx OK\ncy OK\n");
    let (code, out, _) = server.cli(&["mput", &format!("cx={}", file("y"))], None);
    assert_eq!((code, String::from_utf8_lossy(&out).into_owned()), (1, "cx ALREADY_EXISTS\n".to_string()));
    let (code, out, err) = server.cli(
        &[
            "mget",
            &format!("cy={}", file("y.out")),
            &format!("b0={}", file("b0.out")),
            &format!("cx={}", file("x.out")),
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(String::from_utf8_lossy(&out), "cy OK\nb0 OK\ncx OK\n");
    assert_eq!(std::fs::read(file("x.out")).unwrap(), pattern(40, 70_000));
    assert_eq!(std::fs::read(file("y.out")).unwrap(), pattern(41, 1));
    assert_eq!(std::fs::read(file("b0.out")).unwrap(), values[0]);
    let (code, out, _) = server.cli(&["mget", &format!("nope={}", file("nope.out"))], None);
    assert_eq!((code, String::from_utf8_lossy(&out).into_owned()), (2, "nope NOT_FOUND\n".to_string()));
    server.assert_alive();
}

/// The command-line client: put from a file and from stdin, get to a file and to stdout, del,
/// exists, stats, exit codes; four client processes at once; and a short bench run.
#[test]
fn command_line_client_and_bench() {
    let mut server = Server::start("cli", &["--pool-size", "64M"]);
    let dir = profile_dir().join("store_tmp").join("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str| dir.join(name);
    let s = |p: &Path| p.to_str().unwrap().to_string();

    let value = pattern(5, 3 << 20);
    std::fs::write(path("v"), &value).unwrap();
    assert_eq!(server.cli(&["put", "file-key", &s(&path("v"))], None).0, 0);
    assert_eq!(server.cli(&["put", "stdin-key", "-"], Some(b"from stdin\n")).0, 0);
    let (code, _, err) = server.cli(&["put", "file-key", &s(&path("v"))], None);
    assert_eq!(code, 1);
    assert!(err.contains("ALREADY_EXISTS"), "{err}");
    assert_eq!(server.cli(&["get", "file-key", &s(&path("v.out"))], None).0, 0);
    assert_eq!(std::fs::read(path("v.out")).unwrap(), value);
    assert_eq!(server.cli(&["get", "stdin-key"], None).1, b"from stdin\n");
    assert_eq!(server.cli(&["exists", "stdin-key"], None).1, b"1\n");
    assert_eq!(server.cli(&["del", "stdin-key"], None).0, 0);
    assert_eq!(server.cli(&["exists", "stdin-key"], None).1, b"0\n");
    let (code, _, err) = server.cli(&["get", "stdin-key"], None);
    assert_eq!(code, 2);
    assert!(err.contains("NOT_FOUND"), "{err}");
    assert_eq!(server.cli(&["del", "stdin-key"], None).0, 2);
    let (code, out, _) = server.cli(&["stats"], None);
    assert_eq!(code, 0);
    assert!(String::from_utf8_lossy(&out).contains("key_count 1\n"));

    // Transports: this host has no RDMA device, so the server does not advertise CAP_RDMA_DESC
    // (STATS says so too); --rdma fails saying why, before sending anything; --tcp and the
    // default (which picks TCP here) work.
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(text.contains("capabilities 1\n") && text.contains("rdma 0\n"), "{text}");
    for args in
        [&["--rdma", "put", "rdma-key", &s(&path("v"))][..], &["--rdma", "get", "file-key", &s(&path("r.out"))][..]]
    {
        let (code, _, err) = server.cli(args, None);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("UNSUPPORTED") && err.contains("--rdma") && err.contains("does not offer RDMA"), "{err}");
    }
    assert_eq!(server.cli(&["exists", "rdma-key"], None).1, b"0\n");
    assert_eq!(server.cli(&["--tcp", "put", "tcp-key", &s(&path("v"))], None).0, 0);
    assert_eq!(server.cli(&["--tcp", "get", "tcp-key", &s(&path("t.out"))], None).0, 0);
    assert_eq!(std::fs::read(path("t.out")).unwrap(), value);
    assert_eq!(server.cli(&["--tcp", "del", "tcp-key"], None).0, 0);

    // Four client processes at once, ten files each; then four at once read a neighbour's keys.
    let port = server.port;
    let cli_phase = |get: bool| {
        let workers: Vec<_> = (0..4u64)
            .map(|t| {
                let dir = dir.clone();
                thread::spawn(move || {
                    for i in 0..10u64 {
                        let (key, file) = if get {
                            (format!("proc{}/{i}", (t + 1) % 4), dir.join(format!("p{t}-{i}.out")))
                        } else {
                            let src = dir.join(format!("p{t}-{i}"));
                            std::fs::write(&src, pattern(t * 100 + i, 1 + (i as usize * 50_000))).unwrap();
                            (format!("proc{t}/{i}"), src)
                        };
                        let out = Command::new(&binaries().client)
                            .args(["--port", &port.to_string(), if get { "get" } else { "put" }, &key])
                            .arg(&file)
                            .output()
                            .unwrap();
                        assert!(out.status.success(), "{key}: {}", String::from_utf8_lossy(&out.stderr));
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("client process worker");
        }
    };
    cli_phase(false);
    cli_phase(true);
    for t in 0..4u64 {
        for i in 0..10u64 {
            let got = std::fs::read(dir.join(format!("p{t}-{i}.out"))).unwrap();
            assert_eq!(got, pattern(((t + 1) % 4) * 100 + i, 1 + (i as usize * 50_000)), "proc{}/{i}", (t + 1) % 4);
        }
    }
    let mut c = server.conn();

    // A short bench: every phase reports, and it leaves no keys behind.
    let before = c.stats()["key_count"];
    let (code, out, err) = server.cli(
        &[
            "bench",
            "--conns",
            "3",
            "--seconds",
            "0.3",
            "--small-count",
            "50",
            "--large-count",
            "2",
            "--verify-every",
            "1",
        ],
        None,
    );
    let out = String::from_utf8_lossy(&out);
    assert_eq!(code, 0, "{out}{err}");
    for (op, size) in
        [("put", 4096), ("get", 4096), ("del", 4096), ("put", 4 << 20), ("get", 4 << 20), ("del", 4 << 20)]
    {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("RESULT op={op} size={size} conns=3 ")))
            .unwrap_or_else(|| panic!("no {op} {size} result in:\n{out}"));
        assert!(line.contains("ops_per_s=") && line.contains("gb_per_s="), "{line}");
    }
    assert_eq!(c.stats()["key_count"], before);
    server.assert_alive();
}

/// --max-conns: with every slot taken by a request in flight, an extra connection gets
/// SERVER_BUSY and is closed; a slot that frees up is usable again.
#[test]
fn connection_limit_refuses_when_no_connection_is_idle() {
    let mut server = Server::start("conn_limit", &["--pool-size", "4M", "--max-conns", "2"]);
    let mut a = server.conn();
    let mut b = server.conn();
    // Both slots busy: each is inside a PUT whose value has not all arrived.
    a.send_hdr(Hdr::request(OP_PUT, 1, 1, 1000), b"a", &[1u8; 500]);
    b.send_hdr(Hdr::request(OP_PUT, 1, 1, 1000), b"b", &[2u8; 500]);
    // Their threads take up the requests (and leave the idle state) within a few ms; no
    // connection is free to ask STATS without changing what it measures.
    thread::sleep(Duration::from_millis(300));
    let mut extra = server.conn();
    let r = extra.recv();
    assert_eq!(r.status, SERVER_BUSY, "{}", r.message());
    assert!(r.message().contains("none of them idle"), "{}", r.message());
    assert!(extra.try_recv().is_none());
    a.send_raw(&[1u8; 500]);
    assert_eq!(a.recv().status, OK);
    drop(b);
    wait_for_stats(&mut a, "the closed connection to free its slot", |s| s["connections_current"] == 1);
    let mut again = server.conn();
    assert_eq!(again.put(b"k", b"v"), OK);
    assert_eq!(a.get(b"k").unwrap(), b"v");
    let s = a.stats();
    assert_eq!((s["connections_refused"], s["connections_evicted"], s["puts_aborted"]), (1, 0, 1));
    server.assert_alive();
}

/// SIGTERM (sent to the server's PID) with an idle client and a client stalled mid-PUT: the server
/// closes them, aborts the PUT and exits 0.
#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut server = Server::start("sigterm", &["--pool-size", "16M"]);
    let mut idle = server.conn();
    assert_eq!(idle.put(b"k", b"v"), OK);
    let mut stalled = server.conn();
    stalled.send_hdr(Hdr::request(OP_PUT, 1, 1, 1 << 20), b"s", &[0u8; 1000]);
    wait_for_stats(&mut idle, "the stalled PUT to start", |s| s["used_bytes"] >= 64 + (1 << 20));
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the server did not stop within 10 s of SIGTERM");
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    assert!(idle.try_recv().is_none());
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("stopped"), "{log}");
}

// ------------------------------------------------------------------------------------------------
// Connection lifetimes: idle eviction and timeout, descriptor limits, frame deadlines

/// Waits at most `limit` for the server to close `conn` (nothing may arrive on it meanwhile);
/// returns how long that took, or None if it stayed open.
fn time_to_close(conn: &mut Conn, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut byte = [0u8; 1];
    while start.elapsed() < limit {
        conn.s.set_read_timeout(Some((limit - start.elapsed()).max(Duration::from_millis(1)))).unwrap();
        match conn.s.read(&mut byte) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => panic!("unexpected bytes from the server"),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(start.elapsed()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    None
}

/// CPU seconds (user + system) the process has used, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output().expect("getconf CLK_TCK");
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("CLK_TCK")
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name (in parentheses): state is the first, utime the 12th.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    (fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()) as f64 / ticks
}

/// The share of one core the process used over `wall`.
fn cpu_share_over(pid: u32, wall: Duration) -> f64 {
    let before = cpu_seconds(pid);
    let start = Instant::now();
    thread::sleep(wall);
    (cpu_seconds(pid) - before) / start.elapsed().as_secs_f64()
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Answer {
    Served,
    ServerBusy,
    Closed,
    Silent,
}

/// Connects `n` clients that each send HELLO at once, then reads every first answer (all by one
/// deadline, `limit` from now). The clients stay connected, and are returned.
fn hello_clients(port: u16, n: usize, limit: Duration) -> (Vec<Answer>, Vec<Conn>) {
    let mut conns: Vec<Conn> = (0..n).map(|_| Conn::open(port)).collect();
    for c in &mut conns {
        c.send(OP_HELLO, &[], &[]);
    }
    let deadline = Instant::now() + limit;
    let answers = conns
        .iter_mut()
        .map(|c| {
            c.s.set_read_timeout(Some(
                deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)),
            ))
            .unwrap();
            let mut raw = [0u8; HEADER];
            match c.s.read_exact(&mut raw) {
                Ok(()) => match Hdr::decode(&raw).status {
                    OK => Answer::Served,
                    SERVER_BUSY => Answer::ServerBusy,
                    st => panic!("HELLO answered {st}"),
                },
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Answer::Closed,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    Answer::Silent
                }
                Err(e) => panic!("read the answer to HELLO: {e}"),
            }
        })
        .collect();
    (answers, conns)
}

/// Every slot taken by an idle connection: a new client is still served, by closing the
/// connection that has been idle longest; the others stay usable.
#[test]
fn full_slots_of_idle_connections_evict_the_longest_idle_to_serve_a_new_client() {
    let mut server = Server::start("evict_idle", &["--pool-size", "1M", "--max-conns", "4"]);
    let mut idle: Vec<Conn> = (0..4)
        .map(|_| {
            let mut c = server.conn();
            assert_eq!(c.call(OP_HELLO, &[], &[]).status, OK);
            thread::sleep(Duration::from_millis(20)); // distinct idle times, oldest first
            c
        })
        .collect();
    // The last one asks: the three before it are idle (it is busy answering).
    wait_for_stats(&mut idle[3], "three idle connections", |s| s["connections_idle"] == 3);

    let mut newcomer = server.conn();
    let r = newcomer.call(OP_HELLO, &[], &[]);
    assert_eq!(r.status, OK, "a new client was refused while every slot was idle: {}", r.message());
    assert_eq!(newcomer.put(b"k", b"served"), OK);
    assert!(time_to_close(&mut idle[0], Duration::from_secs(5)).is_some(), "the longest idle connection is still open");
    for c in &mut idle[1..] {
        assert_eq!(c.get(b"k").unwrap(), b"served");
    }
    let s = newcomer.stats();
    assert_eq!((s["connections_evicted"], s["connections_refused"], s["connections_current"]), (1, 0, 4), "{s:?}");
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("closed to admit a new connection"), "{log}");
    server.assert_alive();
}

/// The idle longest is not evicted when it has a request in flight: a PUT whose value is still
/// arriving and a GET whose reply is still being sent keep their connections, the idle one goes,
/// and both requests then complete.
#[test]
fn connection_with_a_request_in_flight_is_not_the_one_evicted() {
    let mut server = Server::start("evict_busy", &["--pool-size", "64M", "--max-conns", "3"]);
    let big = pattern(3, 32 << 20); // larger than the socket buffers: its GET reply blocks
    let mut getter = server.conn();
    assert_eq!(getter.put(b"big", &big), OK);
    let mut putter = server.conn();
    putter.send_hdr(Hdr::request(OP_PUT, 7, 8, 1 << 20), b"inflight", &vec![9u8; 1000]);
    getter.send(OP_GET, b"big", &[]);
    let mut idle = server.conn();
    wait_for_stats(&mut idle, "the PUT and GET to be in flight", |s| {
        s["refs_held"] == 1 && s["used_bytes"] >= footprint(32 << 20) + footprint(1 << 20)
    });
    thread::sleep(Duration::from_millis(300)); // for `idle` to be idle again after its STATS

    let mut newcomer = server.conn();
    assert_eq!(newcomer.call(OP_HELLO, &[], &[]).status, OK, "no slot for a new client");
    assert!(time_to_close(&mut idle, Duration::from_secs(5)).is_some(), "the idle connection was not the one closed");
    putter.send_raw(&vec![9u8; (1 << 20) - 1000]);
    let r = putter.recv();
    assert_eq!((r.status, r.id), (OK, 7), "{}", r.message());
    let r = getter.recv();
    assert_eq!(r.status, OK);
    assert!(r.body == big, "the GET reply changed");
    assert_eq!(newcomer.get(b"inflight").unwrap(), vec![9u8; 1 << 20]);
    let s = newcomer.stats();
    assert_eq!(
        (s["connections_evicted"], s["puts_aborted"], s["gets_interrupted"], s["refs_held"]),
        (1, 0, 0, 0),
        "{s:?}"
    );
    server.assert_alive();
}

/// --idle-timeout-ms: a connection that sends nothing is closed after the timeout (not before),
/// one that keeps sending requests is not; sockets carry TCP keep-alive (--keepalive-s).
#[test]
fn idle_connection_is_closed_after_the_idle_timeout_and_sockets_have_keepalive() {
    let mut server =
        Server::start("idle_timeout", &["--pool-size", "1M", "--idle-timeout-ms", "600", "--keepalive-s", "30"]);
    let port = server.port;
    let busy = thread::spawn(move || {
        let mut c = Conn::open(port);
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(1500) {
            assert_eq!(c.call(OP_HELLO, &[], &[]).status, OK, "an active connection was closed");
            thread::sleep(Duration::from_millis(200));
        }
        c
    });
    let mut idle = server.conn();
    // The kernel's keep-alive timer runs on the server's end of the connection.
    let ss = Command::new("ss").args(["-tnoH", "state", "established", "sport", "=", &format!(":{port}")]).output();
    if let Some(out) = ss.ok().filter(|o| o.status.success()) {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("timer:(keepalive"), "no keep-alive timer on the server's sockets:\n{text}");
    }
    let closed = time_to_close(&mut idle, Duration::from_secs(5)).expect("the idle connection was not closed");
    assert!(
        closed >= Duration::from_millis(550) && closed < Duration::from_millis(2000),
        "closed after {closed:?} for a 600 ms idle timeout"
    );
    let mut c = busy.join().expect("active connection");
    let s = c.stats();
    assert_eq!(s["connections_idle_closed"], 1, "{s:?}");
    server.assert_alive();
}

/// RLIMIT_NOFILE of 64 with --max-conns 100000: the server says at start that it clamps
/// max-conns, 100 clients at once all get an answer (served, SERVER_BUSY or a clean close, none
/// left hanging), and the server does not spin while they stay connected. With a higher hard
/// limit it raises its soft limit instead.
#[test]
fn max_conns_is_clamped_to_rlimit_nofile_and_every_client_gets_an_answer() {
    let mut server = Server::start_under(
        "rlimit_clamp",
        &["prlimit", "--nofile=64:64"],
        &["--pool-size", "1M", "--max-conns", "100000"],
    );
    let (answers, conns) = hello_clients(server.port, 100, Duration::from_secs(10));
    let count = |a: Answer| answers.iter().filter(|&&x| x == a).count();
    assert_eq!(count(Answer::Silent), 0, "clients without an answer: {answers:?}");
    let cpu = cpu_share_over(server.child.id(), Duration::from_secs(1));
    assert!(cpu < 0.3, "the server used {:.0} % of a core with 100 clients connected", cpu * 100.0);

    let log = std::fs::read_to_string(&server.log).unwrap();
    let clamped: u64 = log
        .lines()
        .find_map(|l| l.strip_prefix("max conns 100000 clamped to "))
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no clamp message in the log:\n{log}"));
    assert!((1..64).contains(&clamped), "{log}");
    assert!(log.contains("RLIMIT_NOFILE is 64"), "{log}");
    assert!(count(Answer::Served) as u64 >= clamped, "{answers:?}");
    drop(conns);
    let mut c = server.conn();
    assert_eq!(c.stats()["max_conns"], clamped);
    server.assert_alive();

    let raised = Server::start_under(
        "rlimit_raise",
        &["prlimit", "--nofile=64:4096"],
        &["--pool-size", "1M", "--max-conns", "100000"],
    );
    let log = std::fs::read_to_string(&raised.log).unwrap();
    assert!(log.contains("raised the RLIMIT_NOFILE soft limit from 64 to 4096"), "{log}");
    assert!(log.contains("max conns 100000 clamped to 40"), "{log}");
}

/// Descriptors run out under a running server (its limit lowered below what it has open, so
/// accept fails with EMFILE): every client still gets an answer, and the accept loop does not
/// spin.
#[test]
fn accept_loop_refuses_without_spinning_when_descriptors_run_out() {
    let mut server = Server::start("emfile", &["--pool-size", "1M", "--max-conns", "500"]);
    let pid = server.child.id();
    let (answers, _first) = hello_clients(server.port, 3, Duration::from_secs(5));
    assert_eq!(answers, vec![Answer::Served; 3]);
    // Room for two more connections, then EMFILE.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let limit = format!("--nofile={}:{}", open + 2, open + 2);
    let st = Command::new("prlimit").args(["--pid", &pid.to_string(), &limit]).status().unwrap();
    assert!(st.success(), "prlimit --pid failed");

    let (answers, _rest) = hello_clients(server.port, 30, Duration::from_secs(10));
    let count = |a: Answer| answers.iter().filter(|&&x| x == a).count();
    assert_eq!(count(Answer::Silent), 0, "clients without an answer: {answers:?}");
    assert!(count(Answer::ServerBusy) + count(Answer::Closed) >= 25, "{answers:?}");
    let cpu = cpu_share_over(pid, Duration::from_secs(1));
    assert!(cpu < 0.3, "the server used {:.0} % of a core while out of descriptors", cpu * 100.0);
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("Too many open files"), "{log}");
    server.assert_alive();
}

/// --io-timeout-ms is a deadline for the whole frame: a peer that stops mid-header or mid-value
/// is dropped between 1 and 1.5 timeouts after it started the frame (not 2), and its unsealed
/// value is aborted.
#[test]
fn stalled_peer_is_dropped_between_one_and_one_and_a_half_io_timeouts() {
    let mut server = Server::start("stall_deadline", &["--pool-size", "4M", "--io-timeout-ms", "1000"]);
    let port = server.port;
    let timeout = Duration::from_millis(1000);
    let cut_header = Hdr::request(OP_PUT, 1, 3, 1000).encode()[..20].to_vec();
    let mut half_value = Hdr::request(OP_PUT, 1, 3, 1000).encode();
    half_value.extend_from_slice(b"key");
    half_value.extend_from_slice(&[5u8; 500]);
    let stallers: Vec<_> = [cut_header, half_value]
        .into_iter()
        .map(|frame| {
            thread::spawn(move || {
                let mut c = Conn::open(port);
                let start = Instant::now();
                c.send_raw(&frame);
                time_to_close(&mut c, Duration::from_secs(5)).map(|_| start.elapsed())
            })
        })
        .collect();
    for (what, t) in ["mid-header", "mid-value"].into_iter().zip(stallers) {
        let took = t.join().unwrap().unwrap_or_else(|| panic!("a peer stalled {what} was not dropped within 5 s"));
        assert!(took >= timeout && took < timeout * 3 / 2, "a peer stalled {what} was dropped after {took:?}");
    }
    let mut c = server.conn();
    let s = wait_for_stats(&mut c, "the stalled PUT to be aborted", |s| s["used_bytes"] == 0);
    assert_eq!((s["connections_timed_out"], s["puts_aborted"]), (2, 1), "{s:?}");
    assert_eq!(c.put(b"key", b"free again"), OK);
    server.assert_alive();
}

/// A peer that trickles a PUT's value, one byte every third of the timeout, is dropped by the
/// frame's deadline; its unsealed value is aborted: another client can PUT the key, and no
/// reservation is left in the pool.
#[test]
fn trickling_put_is_dropped_at_its_deadline_and_its_value_aborted() {
    let mut server = Server::start("trickle", &["--pool-size", "4M", "--io-timeout-ms", "900"]);
    let timeout = Duration::from_millis(900);
    let mut c = server.conn();
    let mut t = server.conn();
    let start = Instant::now();
    t.send_hdr(Hdr::request(OP_PUT, 1, 7, 4096), b"trickle", &[]);
    let mut closed_after = None;
    for i in 0..20 {
        // 20 bytes over about 6 s: the old per-call timeout never fired on this.
        if t.s.write_all(&[i as u8]).is_err() {
            closed_after = Some(start.elapsed());
            break;
        }
        if i == 1 {
            assert_eq!(c.put(b"trickle", b"x"), ALREADY_EXISTS, "the trickled value is not reserved");
        }
        if time_to_close(&mut t, timeout / 3).is_some() {
            closed_after = Some(start.elapsed());
            break;
        }
    }
    let took = closed_after.expect("a trickling PUT kept its connection for 20 bytes over 6 s");
    assert!(took >= timeout && took < timeout * 3 / 2, "the trickling PUT was dropped after {took:?}");
    let s = wait_for_stats(&mut c, "the trickled value to be aborted", |s| s["used_bytes"] == 0);
    assert_eq!((s["puts_aborted"], s["connections_timed_out"], s["key_count"]), (1, 1, 0), "{s:?}");
    assert_eq!(c.put(b"trickle", b"another client's value"), OK);
    assert_eq!(c.get(b"trickle").unwrap(), b"another client's value");
    let s = c.stats();
    assert_eq!((s["used_bytes"], s["object_count"]), (footprint(22), 1), "{s:?}");
    server.assert_alive();
}

// ------------------------------------------------------------------------------------------------
// The README

/// The commands examples/store/README.md gives to try the store (its first `sh` block) run as
/// written, from the repository's root: they wait for the server's "listening" line, the value
/// comes back byte for byte, and the bench reports. The library is built in a target folder of
/// its own (this test's is locked by the running `cargo test`).
#[test]
fn readme_store_commands_run_as_written() {
    let root = manifest_dir();
    let readme = std::fs::read_to_string(root.join("examples/store/README.md")).unwrap();
    let start = readme.find("```sh\n").expect("an sh block in examples/store/README.md") + "```sh\n".len();
    let block = &readme[start..start + readme[start..].find("```").unwrap()];
    assert!(block.contains("zcopy-store-server") && block.contains("listening"), "{block}");
    // The trap stops the server the block started if a command fails before its `kill`.
    let script = format!(
        "set -euo pipefail\ntrap '[ -z \"${{server:-}}\" ] || kill \"$server\" 2>/dev/null || true' EXIT\n{block}"
    );
    let child = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", profile_dir().parent().unwrap().join("store-readme"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || tx.send(child.wait_with_output()));
    // A first run builds the release library from scratch.
    let out = match rx.recv_timeout(Duration::from_secs(900)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("the README's commands did not finish within 900 s");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the README's commands failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("same bytes\n"), "{stdout}");
    assert!(stdout.contains("RESULT op=get size=4194304 conns=4 "), "{stdout}");
    let served = std::fs::read_to_string(root.join("target/store/server.out")).unwrap();
    assert!(served.starts_with("listening 127.0.0.1:"), "{served}");
}
