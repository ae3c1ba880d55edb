//! The BTF aya needs to load the `tp_btf` programs, made from our own index instead of a
//! second full parse of the kernel's BTF.
//!
//! aya's `BtfTracePoint::load` uses its `Btf` for one thing: the type id of the
//! `btf_trace_<tracepoint>` typedef, which goes to the kernel as the program's attach target.
//! A full `aya::Btf::from_sys_fs()` costs ~38 ms and a ~19 MiB peak (the 5.5 MiB file, then
//! ~13.5 MiB of decoded types) for those few ids, and it ran next to the loader's own parse
//! and ours: most of the collector's peak RSS. Type ids are positions, so a BTF holding only
//! the attach targets at their kernel ids (12-byte pointer records before and between them)
//! answers aya's lookups with the same ids, for ~40 bytes per type up to the last target
//! (~38,000 on 6.18: ~1.5 MiB, ~1 ms).

use anyhow::{Context as _, Result};

use crate::kernel::btf::Btf;

const KIND_PTR: u32 = 2;
const KIND_TYPEDEF: u32 = 8;
/// Type ids at most this large are accepted (the kernel's own BTF has ~150,000 types).
const MAX_TYPE_ID: u32 = 1 << 22;

/// Little-endian BTF holding `targets` (name, kernel type id) as typedefs at their ids and
/// pointers to void everywhere else below the largest id.
fn encode(targets: &[(String, u32)]) -> Vec<u8> {
    let last = targets.iter().map(|&(_, id)| id).max().unwrap_or(0);
    let mut strings = vec![0u8];
    let mut names = std::collections::HashMap::new();
    for (name, id) in targets {
        names.insert(*id, strings.len() as u32);
        strings.extend_from_slice(name.as_bytes());
        strings.push(0);
    }
    let mut types = Vec::with_capacity(12 * last as usize);
    for id in 1..=last {
        let (name, kind) = match names.get(&id) {
            Some(&offset) => (offset, KIND_TYPEDEF),
            None => (0, KIND_PTR),
        };
        types.extend_from_slice(&name.to_le_bytes());
        types.extend_from_slice(&(kind << 24).to_le_bytes());
        // Pointer to / typedef of void: nothing of the target's type is needed.
        types.extend_from_slice(&0u32.to_le_bytes());
    }
    let mut blob = Vec::with_capacity(24 + types.len() + strings.len());
    blob.extend_from_slice(&0xeb9fu16.to_le_bytes());
    blob.extend_from_slice(&[1, 0]); // version, flags
    for word in [
        24,
        0,
        types.len() as u32,
        types.len() as u32,
        strings.len() as u32,
    ] {
        blob.extend_from_slice(&word.to_le_bytes());
    }
    blob.extend_from_slice(&types);
    blob.extend_from_slice(&strings);
    blob
}

/// aya's BTF for loading the given tracepoints' programs: each one this kernel has is found
/// at its kernel type id; the others are absent (their load fails as with the full BTF).
pub fn for_tracepoints(btf: &Btf, tracepoints: &[&str]) -> Result<aya::Btf> {
    let targets: Vec<(String, u32)> = tracepoints
        .iter()
        .filter_map(|tracepoint| {
            let name = format!("btf_trace_{tracepoint}");
            let id = btf.typedef_id(&name)?;
            (id <= MAX_TYPE_ID).then_some((name, id))
        })
        .collect();
    aya::Btf::parse(&encode(&targets), aya::Endianness::default())
        .context("building the tracepoints' BTF for the loader")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_keep_their_ids() {
        let targets = vec![
            ("btf_trace_a".to_owned(), 5),
            ("btf_trace_b".to_owned(), 2),
            ("btf_trace_c".to_owned(), 9),
        ];
        let btf = aya::Btf::parse(&encode(&targets), aya::Endianness::default()).unwrap();
        for (name, id) in &targets {
            assert_eq!(
                btf.id_by_type_name_kind(name, aya_obj_kind_typedef())
                    .unwrap(),
                *id
            );
        }
        assert!(
            btf.id_by_type_name_kind("btf_trace_d", aya_obj_kind_typedef())
                .is_err()
        );
    }

    #[test]
    fn no_targets_is_an_empty_btf() {
        assert!(aya::Btf::parse(&encode(&[]), aya::Endianness::default()).is_ok());
    }

    fn aya_obj_kind_typedef() -> aya_obj::btf::BtfKind {
        aya_obj::btf::BtfKind::Typedef
    }
}
