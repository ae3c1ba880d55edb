//! Reading a whole BPF hash map in a few syscalls (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6+)
//! instead of two per entry (aya 0.14 iterates with `GET_NEXT_KEY` + `LOOKUP_ELEM`): the idle
//! scan reads up to `--max-flows` activity records every tenth of the NAT threshold.

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{Pod, maps::MapData};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per call; a hash bucket with more grows the buffers (ENOSPC).
const BATCH: usize = 4096;
/// The kernel's ENOTSUPP (not in libc): the map type has no batch operations.
const ENOTSUPP: i32 = 524;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Why a batch read did not happen.
#[derive(Debug)]
pub enum BatchError {
    /// This kernel or map type has no batch lookup: read entry by entry instead.
    Unsupported,
    Io(io::Error),
}

/// Calls `each` with every entry of a hash map whose keys are `K` and values `V`. Entries
/// added or removed while it runs may be missed or seen twice, as with any iteration.
pub fn for_each<K: Pod, V: Pod>(
    map: &MapData,
    each: &mut dyn FnMut(&K, &V),
) -> Result<(), BatchError> {
    let fd = map.fd().as_fd().as_raw_fd();
    let mut capacity = BATCH;
    let mut keys: Vec<K> = Vec::with_capacity(capacity);
    let mut values: Vec<V> = Vec::with_capacity(capacity);
    // The hash map's batch token is a bucket index (u32).
    let (mut token_in, mut token_out) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                (&raw const token_in) as u64
            },
            out_batch: (&raw mut token_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: capacity as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: the buffers hold `count` keys and values; the attr outlives the call.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let error = (result < 0).then(io::Error::last_os_error);
        let filled = (attr.count as usize).min(capacity);
        match error.as_ref().and_then(io::Error::raw_os_error) {
            None | Some(libc::ENOENT) => {
                // SAFETY: the kernel wrote `filled` entries of each; K and V are plain data.
                unsafe {
                    keys.set_len(filled);
                    values.set_len(filled);
                }
                for (key, value) in keys.iter().zip(&values) {
                    each(key, value);
                }
                keys.clear();
                values.clear();
                if error.is_some() {
                    return Ok(()); // ENOENT: that was the last batch
                }
                token_in = token_out;
                first = false;
            }
            // One bucket holds more entries than the buffers: grow them, ask again.
            Some(libc::ENOSPC) if capacity < 1 << 20 => {
                capacity *= 4;
                keys = Vec::with_capacity(capacity);
                values = Vec::with_capacity(capacity);
            }
            Some(libc::EINVAL | ENOTSUPP | libc::EOPNOTSUPP) if first => {
                return Err(BatchError::Unsupported);
            }
            _ => {
                return Err(BatchError::Io(
                    error.unwrap_or_else(io::Error::last_os_error),
                ));
            }
        }
    }
}
