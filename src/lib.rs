//! zcopy: zero-copy object buffers in one pre-registered memory pool.
//!
//! A [`Pool`] maps one large region once; objects are created in place inside it, sealed, read in
//! place by any number of readers and released. The safe Rust API lives in [`pool`]; the C ABI in
//! [`ffi`] is a thin skin over it and `include/zcopy.h` is generated from it.
//!
//! Layers, each one module with one job (see `README.md`):
//! [`region`] maps memory, [`rdma`] registers it with the NICs, [`alloc`] hands out offsets in
//! it and object ids, [`record`] keeps one 64-byte record per object, [`index`] maps keys to
//! records and their states, [`pool`] composes them, [`ffi`] exports them to C. A pool opened
//! with a name is shared by several processes: [`shared`] is one process's side of it, `shm`
//! the state in the pool file and its building blocks.

pub mod alloc;
pub mod error;
pub mod ffi;
pub mod index;
pub mod parts;
pub mod pool;
pub mod rdma;
pub mod record;
pub mod region;
pub mod shared;
pub(crate) mod shm;

pub use error::{Error, Result};
pub use pool::{Buffer, Pool, PoolOptions, PoolStats};
pub use rdma::{RdmaDesc, RdmaMode};
pub use region::PageMode;
