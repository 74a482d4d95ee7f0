//! The demo: the lifecycle through the C ABI, the zero-copy proof, and the benchmark ratios.
//!
//! Run it with `cargo run --release --example demo` (add `-- --quick` for a shorter benchmark).

#[path = "../benches/suite.rs"]
mod suite;

use std::ptr;

use suite::{release, CPool};
use zcopy::ffi::buffer::*;
use zcopy::ffi::pool::*;
use zcopy::ffi::status::*;

fn step(text: &str) {
    println!("  {text}");
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    println!("zcopy demo: one pool, objects created in place, read without copies\n");

    let pool = CPool::open(64 << 20, ZC_PAGES_TRANSPARENT_HUGE);
    let s = pool.stats();
    step(&format!(
        "zc_pool_open: {} MiB pool, {} KiB pages, mapped and prefaulted in {:.1} ms",
        s.capacity_bytes >> 20,
        s.page_size >> 10,
        s.open_nanos as f64 / 1e6
    ));

    let registrations = s.rdma_registrations;
    step(&match registrations {
        0 => "RDMA: no verbs device here, local mode (zc_pool_rdma_count = 0)".to_string(),
        n => format!("RDMA: registered once with {n} device(s) in {:.1} ms", s.rdma_register_nanos as f64 / 1e6),
    });

    let key = b"layer0/kv";
    let writer = pool.create(key, 1 << 20);
    // SAFETY: an unsealed writer's data pointer is valid for its size in writable bytes.
    let written = unsafe { zc_buffer_data(writer) };
    // SAFETY: as above: 1 MiB of writable pool memory.
    unsafe { ptr::write_bytes(written, 0xAB, 1 << 20) };
    step(&format!("zc_create_buffer: 1 MiB writable buffer at {written:p}, filled in place"));

    let mut early = ptr::null_mut();
    // SAFETY: live pool, key slice, writable out.
    let status = unsafe { zc_get(pool.raw(), key.as_ptr().cast(), key.len(), 0, &mut early) };
    step(&format!("zc_get before seal: {:?} (invisible until sealed)", status_name(status)));

    // SAFETY: live writer handle.
    assert_eq!(unsafe { zc_seal(writer) }, ZC_OK);
    step("zc_seal: immutable and visible");

    let reader = pool.get(key);
    // SAFETY: live handles.
    let (read, size, writable) =
        unsafe { (zc_buffer_const_data(reader), zc_buffer_size(reader), zc_buffer_data(reader)) };
    step(&format!("zc_get: {size} bytes at {read:p}, writable pointer {writable:p} (read-only)"));
    assert_eq!(read, written.cast_const());
    println!("\n  zero-copy: reader pointer == writer pointer ({read:p}); no byte was copied\n");

    pool.delete(key);
    let s = pool.stats();
    step(&format!(
        "zc_delete while referenced: key gone (contains = {}), memory still held ({} objects, {} KiB used)",
        // SAFETY: live pool, key slice.
        unsafe { zc_contains(pool.raw(), key.as_ptr().cast(), key.len()) },
        s.object_count,
        s.used_bytes >> 10
    ));
    // SAFETY: the reader is live; its bytes stay valid and unchanged until it is released.
    let first = unsafe { *read };
    step(&format!("reader still sees its bytes: first byte 0x{first:02X}"));
    // SAFETY: both handles are live and released once.
    unsafe {
        release(reader);
        release(writer);
    }
    let s = pool.stats();
    step(&format!("zc_release of the last reference: {} objects, {} bytes used", s.object_count, s.used_bytes));
    drop(pool);
    step("zc_pool_close\n");

    println!("Benchmarks (through the C ABI; ratios against baselines measured in this run):\n");
    let settings = if quick { suite::Settings::quick() } else { suite::Settings::full() };
    let rows = suite::run(&settings);
    suite::print(&rows);
}

fn status_name(status: zc_status) -> String {
    // SAFETY: zc_status_str never returns NULL and returns a static NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(zc_status_str(status)) }.to_string_lossy().into_owned()
}
