//! Building blocks of shared pools: one pool attached by several processes on a node, with no
//! server (see "Shared pools" in the design notes).
//!
//! All pool state lives in one file (`/dev/shm/zcopy.<name>`, or a file in a hugetlbfs
//! directory) that every process maps at its own address, so shared state holds offsets and ids,
//! never pointers. Any process may be killed at any instruction, even while it holds a lock; the
//! survivors find out through locks the kernel drops at its death and repair what it left.
//!
//! Each block is small and tested on its own:
//! [`name`] validates a pool's name and maps it to a path; [`file`] creates, opens, checks, maps
//! and unlinks the pool file; [`header`] is the file's first bytes and the checked [`header::Layout`]
//! of its areas; [`slots`] is the table of process slots with kernel-dropped liveness locks;
//! [`ledger`] is each slot's record of what its process holds (where a deleter looks for
//! readers, and what reclaiming a dead process empties);
//! [`lock`] is the robust process-shared mutex and the shared futex; [`offset`] is the one place
//! where an offset or id read from shared memory becomes a reference; [`pool_file`] composes
//! them into the create and attach sequences, and removes a file whose creator died before
//! publishing it.
//!
//! Rules every block follows: a structure placed in shared memory is `#[repr(C)]`, holds no
//! pointer, and has compile-time size and offset assertions; fields other than atomics are written
//! only before the structure is published by one atomic store; every offset or id read from
//! shared memory goes through [`offset::Area`]; each shared structure has a `check()`. Each
//! module's first comment says who may write what, and when.
//!
//! `unsafe` lives in [`offset`] (pointers from base + offset), [`file`] (the mapping and
//! `posix_fallocate`), [`slots`] (`fcntl` locks), [`lock`] (pthread mutexes and futexes),
//! [`store`] (a held object's key viewed where it lies) and the two calls that write before
//! publishing (`header::write`, `SharedMutex::init`), each block with a `// SAFETY:` line.

pub(crate) mod file;
pub(crate) mod header;
pub(crate) mod ledger;
pub(crate) mod lock;
pub(crate) mod name;
pub(crate) mod offset;
pub(crate) mod pool_file;
pub(crate) mod slots;
pub(crate) mod store;

#[cfg(test)]
pub(crate) mod testutil;
