//! The few `bpf(2)` commands aya 0.14 does not offer: creating a standalone
//! map that can become an inner map of a policy slot, and batch updates and
//! reads (one system call for thousands of entries instead of one each),
//! which is what lets a policy of a million entries load in a few seconds
//! and a service array of 131,072 entries be compared every few seconds.
//!
//! All `unsafe` of the datapath is here, each block with its reason.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

pub const BPF_MAP_TYPE_HASH: u32 = 1;
pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// Entries per batch call: large enough to amortise the call, small enough
/// that a failed batch is cheap to retry element by element.
const BATCH: usize = 16_384;

/// `union bpf_attr` is 160 bytes on the kernels crmguard supports; every
/// command reads only its own prefix, the rest stays zero.
#[repr(C, align(8))]
struct Attr([u8; 160]);

impl Attr {
    fn new() -> Self {
        Attr([0; 160])
    }

    fn put_u32(&mut self, offset: usize, value: u32) {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
    }

    fn put_u64(&mut self, offset: usize, value: u64) {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    let size = libc::c_long::try_from(std::mem::size_of::<Attr>()).unwrap_or(160);
    // SAFETY: attr points to an initialised, properly aligned buffer of the
    // size passed, which the kernel reads (and for some commands writes)
    // only within that size, and which outlives the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), size) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

/// Creates a map (BPF_MAP_CREATE) and returns its file descriptor.
pub fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.put_u32(0, map_type);
    attr.put_u32(4, key_size);
    attr.put_u32(8, value_size);
    attr.put_u32(12, max_entries);
    attr.put_u32(16, flags);
    // map_name[16] at offset 28, NUL-terminated.
    for (i, b) in name
        .bytes()
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .take(15)
        .enumerate()
    {
        attr.0[28 + i] = b;
    }
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("file descriptor out of range"))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Writes `keys[i] -> values[i]` for every i, in batches. Kernels or map
/// types without batch updates get one update per element.
pub fn update_all(
    map: BorrowedFd<'_>,
    key_size: usize,
    keys: &[u8],
    value_size: usize,
    values: &[u8],
) -> io::Result<()> {
    let count = keys.len() / key_size.max(1);
    if count * value_size != values.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "keys and values differ in count",
        ));
    }
    let mut done = 0;
    while done < count {
        let n = (count - done).min(BATCH);
        let k = &keys[done * key_size..(done + n) * key_size];
        let v = &values[done * value_size..(done + n) * value_size];
        match update_batch(map, k, v, n) {
            Ok(()) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::EINVAL)
                    || e.raw_os_error() == Some(libc::ENOTSUP) =>
            {
                for i in 0..n {
                    update_elem(
                        map,
                        &k[i * key_size..(i + 1) * key_size],
                        &v[i * value_size..(i + 1) * value_size],
                    )?;
                }
            }
            Err(e) => return Err(e),
        }
        done += n;
    }
    Ok(())
}

fn update_batch(map: BorrowedFd<'_>, keys: &[u8], values: &[u8], count: usize) -> io::Result<()> {
    let mut attr = Attr::new();
    // struct { in_batch, out_batch, keys, values: u64; count, map_fd: u32; elem_flags, flags: u64 }
    attr.put_u64(16, keys.as_ptr() as u64);
    attr.put_u64(24, values.as_ptr() as u64);
    attr.put_u32(
        32,
        u32::try_from(count).map_err(|_| io::Error::other("batch too large"))?,
    );
    attr.put_u32(
        36,
        u32::try_from(map.as_raw_fd()).map_err(|_| io::Error::other("bad fd"))?,
    );
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
    Ok(())
}

fn update_elem(map: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut attr = Attr::new();
    // struct { map_fd: u32; pad; key, value, flags: u64 }
    attr.put_u32(
        0,
        u32::try_from(map.as_raw_fd()).map_err(|_| io::Error::other("bad fd"))?,
    );
    attr.put_u64(8, key.as_ptr() as u64);
    attr.put_u64(16, value.as_ptr() as u64);
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr)?;
    Ok(())
}

/// Every value of an array map of `max_entries` values of `value_size`
/// bytes, in index order, read in batches (BPF_MAP_LOOKUP_BATCH).
pub fn read_array(map: BorrowedFd<'_>, value_size: usize, max_entries: u32) -> io::Result<Vec<u8>> {
    let total = usize::try_from(max_entries).map_err(|_| io::Error::other("array too large"))?;
    let mut values = vec![0u8; total * value_size];
    let mut keys = vec![0u8; BATCH.min(total) * 4];
    let mut done = 0usize;
    // The batch token of an array is the index to go on from.
    let mut token_in = 0u32;
    let mut token_out = 0u32;
    while done < total {
        let n = (total - done).min(BATCH);
        let mut attr = Attr::new();
        // struct { in_batch, out_batch, keys, values: u64; count, map_fd: u32; elem_flags, flags: u64 }
        if done > 0 {
            attr.put_u64(0, std::ptr::addr_of!(token_in) as u64);
        }
        attr.put_u64(8, std::ptr::addr_of_mut!(token_out) as u64);
        attr.put_u64(16, keys.as_mut_ptr() as u64);
        attr.put_u64(24, values[done * value_size..].as_mut_ptr() as u64);
        attr.put_u32(
            32,
            u32::try_from(n).map_err(|_| io::Error::other("batch too large"))?,
        );
        attr.put_u32(
            36,
            u32::try_from(map.as_raw_fd()).map_err(|_| io::Error::other("bad fd"))?,
        );
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let read = u32::from_ne_bytes([attr.0[32], attr.0[33], attr.0[34], attr.0[35]]);
        let read = usize::try_from(read).unwrap_or(0).min(n);
        done += read;
        match result {
            Ok(_) => {}
            // The last batch: the array is read to its end.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
        if read == 0 {
            break;
        }
        token_in = token_out;
    }
    if done != total {
        return Err(io::Error::other(format!(
            "read {done} of the array's {total} entries"
        )));
    }
    Ok(values)
}

/// Deletes one entry (BPF_MAP_DELETE_ELEM).
pub fn delete_elem(map: BorrowedFd<'_>, key: &[u8]) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.put_u32(
        0,
        u32::try_from(map.as_raw_fd()).map_err(|_| io::Error::other("bad fd"))?,
    );
    attr.put_u64(8, key.as_ptr() as u64);
    bpf(BPF_MAP_DELETE_ELEM, &mut attr)?;
    Ok(())
}

/// The bytes of a `#[repr(C)]` plain-old-data value.
pub fn bytes_of<T: aya::Pod>(value: &T) -> &[u8] {
    // SAFETY: T is Pod: no padding, no pointers, every byte initialised; the
    // slice borrows `value` and covers exactly its size.
    unsafe {
        std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>())
    }
}
