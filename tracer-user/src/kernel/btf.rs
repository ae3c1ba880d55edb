//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`): just enough to resolve
//! struct member offsets (through anonymous unions and structs), enum values and tracepoint
//! prototypes. Rust eBPF has no CO-RE relocations, so these offsets are handed to the kernel
//! programs at load time instead of being compiled in.

use anyhow::{Context as _, Result, bail};

const BTF_MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// A member of a struct or union.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Offset of the name in the string section (see `Btf::name`).
    pub name: u32,
    pub type_id: u32,
    /// Offset from the start of the enclosing type, in bits.
    pub bit_offset: u32,
    /// Non-zero for a bitfield.
    pub bitfield_size: u32,
}

#[derive(Clone, Debug)]
enum Type {
    Struct {
        size: u32,
        members: Vec<Member>,
    },
    Enum {
        /// (name offset, value).
        values: Vec<(u32, i64)>,
    },
    FuncProto {
        params: Vec<u32>,
    },
    /// typedef, const, volatile, restrict, type tag: point at another type.
    Alias {
        target: u32,
    },
    Int {
        size: u32,
    },
    Ptr {
        target: u32,
    },
    Array {
        element: u32,
        count: u32,
    },
    Other,
}

/// The kernel's BTF, indexed but not decoded: a type is decoded when it is looked up (a
/// handful of them per start), so parsing is one pass over ~150,000 records that allocates
/// nothing per type. Names stay in the string section and are compared in place.
pub struct Btf {
    data: Vec<u8>,
    /// Start of the string section in `data`, and its length.
    strings: (usize, usize),
    /// Type id -> position of its record in `data` (id 0, void, has none).
    positions: Vec<u32>,
    /// (hash of the name, type id) of every named type, sorted.
    by_name: Vec<(u64, u32)>,
}

/// FNV-1a: a fast hash for the name index (its keys are checked against the names anyway).
fn name_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The location of a (possibly nested) member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldLocation {
    pub byte_offset: u32,
    pub size: u32,
}

/// Reads a little-endian u32; callers have checked the bounds.
fn u32_at(data: &[u8], pos: usize) -> u32 {
    u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]])
}

fn checked_u32_at(data: &[u8], pos: usize) -> Result<u32> {
    if pos + 4 > data.len() {
        bail!("BTF truncated at byte {pos}");
    }
    Ok(u32_at(data, pos))
}

/// Bytes that follow a type's 12-byte common header, by kind.
fn extra_len(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
        KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
        | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
        _ => return None,
    })
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn from_kernel() -> Result<Self> {
        const PATH: &str = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(PATH).with_context(|| {
            format!(
                "cannot read {PATH}: this kernel exposes no BTF (it needs CONFIG_DEBUG_INFO_BTF=y, \
                 standard on current distribution kernels)"
            )
        })?;
        Self::index(data).with_context(|| format!("parsing {PATH}"))
    }

    /// Parses little-endian BTF.
    #[cfg(test)]
    pub fn parse(data: &[u8]) -> Result<Self> {
        Self::index(data.to_vec())
    }

    /// Checks the header and every type record's bounds, and indexes types by id and name.
    fn index(data: Vec<u8>) -> Result<Self> {
        if data.len() < 24 {
            bail!("BTF header truncated ({} bytes)", data.len());
        }
        let magic = u16::from_le_bytes([data[0], data[1]]);
        if magic != BTF_MAGIC {
            bail!("not little-endian BTF (magic {magic:#x})");
        }
        let hdr_len = checked_u32_at(&data, 4)? as usize;
        let type_off = checked_u32_at(&data, 8)? as usize;
        let type_len = checked_u32_at(&data, 12)? as usize;
        let str_off = checked_u32_at(&data, 16)? as usize;
        let str_len = checked_u32_at(&data, 20)? as usize;
        let str_start = hdr_len + str_off;
        if str_start + str_len > data.len() {
            bail!("BTF string section out of bounds");
        }
        let mut pos = hdr_len + type_off;
        let end = pos + type_len;
        if end > data.len() {
            bail!("BTF type section out of bounds");
        }
        let mut positions = vec![0u32];
        let mut by_name = Vec::new();
        let strings = &data[str_start..str_start + str_len];
        while pos < end {
            if pos + 12 > end {
                bail!("BTF truncated at byte {pos}");
            }
            let name_off = u32_at(&data, pos) as usize;
            let info = u32_at(&data, pos + 4);
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let extra = extra_len(kind, vlen)
                .with_context(|| format!("unknown BTF kind {kind} at type {}", positions.len()))?;
            if pos + 12 + extra > end {
                bail!("BTF truncated at byte {pos}");
            }
            let id = positions.len() as u32;
            positions.push(pos as u32);
            if name_off != 0 && name_off < strings.len() {
                let rest = &strings[name_off..];
                let len = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                by_name.push((name_hash(&rest[..len]), id));
            }
            pos += 12 + extra;
        }
        by_name.sort_unstable();
        Ok(Self {
            data,
            strings: (str_start, str_len),
            positions,
            by_name,
        })
    }

    /// Decodes type `id`.
    fn ty(&self, id: u32) -> Option<Type> {
        let pos = *self.positions.get(id as usize)? as usize;
        if id == 0 {
            return Some(Type::Other);
        }
        let data = &self.data;
        let info = u32_at(data, pos + 4);
        let size_or_type = u32_at(data, pos + 8);
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let kind_flag = info >> 31 == 1;
        // Bounds of every record were checked when indexing.
        let body = pos + 12;
        let at = |i: usize, stride: usize, field: usize| u32_at(data, body + i * stride + field);
        Some(match kind {
            KIND_INT => Type::Int { size: size_or_type },
            KIND_PTR => Type::Ptr {
                target: size_or_type,
            },
            KIND_ARRAY => Type::Array {
                element: at(0, 12, 0),
                count: at(0, 12, 8),
            },
            KIND_STRUCT | KIND_UNION => Type::Struct {
                size: size_or_type,
                members: (0..vlen)
                    .map(|i| {
                        let offset = at(i, 12, 8);
                        let (bit_offset, bitfield_size) = if kind_flag {
                            (offset & 0xff_ffff, offset >> 24)
                        } else {
                            (offset, 0)
                        };
                        Member {
                            name: at(i, 12, 0),
                            type_id: at(i, 12, 4),
                            bit_offset,
                            bitfield_size,
                        }
                    })
                    .collect(),
            },
            KIND_ENUM => Type::Enum {
                values: (0..vlen)
                    .map(|i| {
                        let raw = at(i, 8, 4);
                        let value = if kind_flag {
                            i64::from(raw as i32)
                        } else {
                            i64::from(raw)
                        };
                        (at(i, 8, 0), value)
                    })
                    .collect(),
            },
            KIND_ENUM64 => Type::Enum {
                values: (0..vlen)
                    .map(|i| {
                        let (lo, hi) = (u64::from(at(i, 12, 4)), u64::from(at(i, 12, 8)));
                        (at(i, 12, 0), ((hi << 32) | lo) as i64)
                    })
                    .collect(),
            },
            KIND_FUNC_PROTO => Type::FuncProto {
                params: (0..vlen).map(|i| at(i, 8, 4)).collect(),
            },
            KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                Type::Alias {
                    target: size_or_type,
                }
            }
            _ => Type::Other,
        })
    }

    fn type_name(&self, id: u32) -> &[u8] {
        match self.positions.get(id as usize) {
            Some(&pos) if id != 0 => self.name_bytes(u32_at(&self.data, pos as usize)),
            _ => &[],
        }
    }

    /// Follows typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.ty(id) {
                Some(Type::Alias { target }) => id = target,
                _ => break,
            }
        }
        id
    }

    fn name_bytes(&self, offset: u32) -> &[u8] {
        let (start, len) = self.strings;
        let strings = &self.data[start..start + len];
        let rest = strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    fn name(&self, offset: u32) -> String {
        String::from_utf8_lossy(self.name_bytes(offset)).into_owned()
    }

    fn ids_named(&self, name: &str) -> Vec<u32> {
        let hash = name_hash(name.as_bytes());
        let first = self.by_name.partition_point(|&(h, _)| h < hash);
        self.by_name[first..]
            .iter()
            .take_while(|&&(h, _)| h == hash)
            .map(|&(_, id)| id)
            .filter(|&id| self.type_name(id) == name.as_bytes())
            .collect()
    }

    /// The id of the struct (or union) with this name that has members (not a forward decl).
    pub fn struct_id(&self, name: &str) -> Option<u32> {
        self.ids_named(name).iter().copied().find(
            |&id| matches!(self.ty(id), Some(Type::Struct { members, .. }) if !members.is_empty()),
        )
    }

    /// Size in bytes of a type (ints, pointers, structs; through typedefs).
    pub fn size_of(&self, id: u32) -> Option<u32> {
        match self.ty(self.resolve(id))? {
            Type::Int { size } | Type::Struct { size, .. } => Some(size),
            Type::Ptr { .. } => Some(8),
            Type::Enum { .. } => Some(4),
            Type::Array { element, count } => self.size_of(element)?.checked_mul(count),
            _ => None,
        }
    }

    /// Finds a member by name in a struct, looking through anonymous struct/union members.
    /// Returns the member and its bit offset from the start of `struct_id`.
    fn find_member(&self, struct_id: u32, name: &str) -> Option<(Member, u32)> {
        let Some(Type::Struct { members, .. }) = self.ty(self.resolve(struct_id)) else {
            return None;
        };
        for member in &members {
            if self.name_bytes(member.name) == name.as_bytes() {
                return Some((member.clone(), member.bit_offset));
            }
        }
        for member in members
            .iter()
            .filter(|m| self.name_bytes(m.name).is_empty())
        {
            if let Some((found, offset)) = self.find_member(member.type_id, name) {
                return Some((found, member.bit_offset + offset));
            }
        }
        None
    }

    /// Resolves a dotted member path like `__sk_common.skc_num` in `struct struct_name`.
    pub fn field(&self, struct_name: &str, path: &str) -> Result<FieldLocation> {
        let mut id = self
            .struct_id(struct_name)
            .with_context(|| format!("kernel BTF has no struct {struct_name}"))?;
        let mut bits = 0u32;
        let mut last = None;
        for part in path.split('.') {
            let (member, offset) = self
                .find_member(id, part)
                .with_context(|| format!("kernel BTF: struct {struct_name} has no {path}"))?;
            bits += offset;
            id = member.type_id;
            last = Some(member);
        }
        let member = last.context("empty field path")?;
        if member.bitfield_size != 0 || !bits.is_multiple_of(8) {
            bail!("kernel BTF: {struct_name}.{path} is a bitfield; cannot read it by offset");
        }
        let size = self
            .size_of(member.type_id)
            .with_context(|| format!("kernel BTF: size of {struct_name}.{path} unknown"))?;
        Ok(FieldLocation {
            byte_offset: bits / 8,
            size,
        })
    }

    /// Whether this kernel's BTF names a type or function `name` (feature checks: a kernel
    /// function that exists only where a feature does).
    pub fn has_named(&self, name: &str) -> bool {
        !self.ids_named(name).is_empty()
    }

    /// The values of a named enum (`enum sk_rst_reason`, ...), by value.
    pub fn enum_values(&self, name: &str) -> Option<Vec<(String, i64)>> {
        self.ids_named(name)
            .iter()
            .find_map(|&id| match self.ty(id) {
                Some(Type::Enum { values }) => Some(
                    values
                        .iter()
                        .map(|&(name, value)| (self.name(name), value))
                        .collect(),
                ),
                _ => None,
            })
    }

    /// The id of the typedef named `name` (a tracepoint's `btf_trace_<name>`).
    pub fn typedef_id(&self, name: &str) -> Option<u32> {
        self.ids_named(name).into_iter().find(|&id| {
            let pos = self.positions[id as usize] as usize;
            (u32_at(&self.data, pos + 4) >> 24) & 0x1f == KIND_TYPEDEF
        })
    }

    /// Number of arguments of a tracepoint's prototype, from the `btf_trace_<name>` typedef
    /// (a pointer to a function whose first parameter is the `void *` context), or None when
    /// this kernel has no such tracepoint.
    pub fn tracepoint_arg_count(&self, tracepoint: &str) -> Option<usize> {
        let typedef = format!("btf_trace_{tracepoint}");
        let id = *self.ids_named(&typedef).first()?;
        let Some(Type::Alias { target }) = self.ty(id) else {
            return None;
        };
        // typedef -> pointer -> func_proto
        let Some(Type::Ptr { target: proto_id }) = self.ty(self.resolve(target)) else {
            return None;
        };
        match self.ty(self.resolve(proto_id)) {
            Some(Type::FuncProto { params }) => Some(params.len().saturating_sub(1)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds little-endian BTF from (name, info, size_or_type, extra words) records.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
    }

    impl Builder {
        fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
            }
        }

        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn add(
            &mut self,
            name: &str,
            kind: u32,
            vlen: u32,
            kind_flag: bool,
            size_or_type: u32,
            extra: &[u32],
        ) {
            let name = self.string(name);
            let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
            for word in [name, info, size_or_type].iter().chain(extra) {
                self.types.extend_from_slice(&word.to_le_bytes());
            }
        }

        fn member(&mut self, name: &str, type_id: u32, bit_offset: u32) -> [u32; 3] {
            [self.string(name), type_id, bit_offset]
        }

        fn finish(self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for word in [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&word.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        // 1: u16, 2: u32
        b.add("u16", KIND_INT, 0, false, 2, &[16]);
        b.add("u32", KIND_INT, 0, false, 4, &[32]);
        // 3: anonymous struct { u16 skc_dport; u16 skc_num; }
        let m: Vec<u32> = [b.member("skc_dport", 1, 0), b.member("skc_num", 1, 16)].concat();
        b.add("", KIND_STRUCT, 2, false, 4, &m);
        // 4: anonymous union { u32 skc_portpair; struct {...}; }
        let m: Vec<u32> = [b.member("skc_portpair", 2, 0), b.member("", 3, 0)].concat();
        b.add("", KIND_UNION, 2, false, 4, &m);
        // 5: struct sock_common { u16 skc_family; <pad>; union @ byte 12; u32 flags:3 @ byte 16 }
        let m: Vec<u32> = [
            b.member("skc_family", 1, 0),
            b.member("", 4, 96),
            b.member("skc_bits", 2, (3 << 24) | 128),
        ]
        .concat();
        b.add("sock_common", KIND_STRUCT, 3, true, 24, &m);
        // 10 (added last): u8 cb[48] is exercised by `arrays_have_sizes`
        // 6: enum sk_rst_reason { NOT_SPECIFIED = 0, NO_SOCKET = 1 }
        let (a, c) = (
            b.string("SK_RST_REASON_NOT_SPECIFIED"),
            b.string("SK_RST_REASON_NO_SOCKET"),
        );
        b.add("sk_rst_reason", KIND_ENUM, 2, false, 4, &[a, 0, c, 1]);
        // 7: func_proto (void *, struct sock_common *, u32) ; 8: ptr -> 7; 9: typedef btf_trace_x -> 8
        let (p0, p1, p2) = (b.string("ctx"), b.string("sk"), b.string("err"));
        b.add("", KIND_FUNC_PROTO, 3, false, 0, &[p0, 0, p1, 5, p2, 2]);
        b.add("", KIND_PTR, 0, false, 7, &[]);
        b.add(
            "btf_trace_tcp_retransmit_skb",
            KIND_TYPEDEF,
            0,
            false,
            8,
            &[],
        );
        b.finish()
    }

    #[test]
    fn members_found_through_anonymous_unions() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(
            btf.field("sock_common", "skc_family").unwrap(),
            FieldLocation {
                byte_offset: 0,
                size: 2
            }
        );
        assert_eq!(
            btf.field("sock_common", "skc_portpair").unwrap(),
            FieldLocation {
                byte_offset: 12,
                size: 4
            }
        );
        assert_eq!(
            btf.field("sock_common", "skc_num").unwrap(),
            FieldLocation {
                byte_offset: 14,
                size: 2
            }
        );
    }

    #[test]
    fn arrays_have_sizes() {
        let mut data = sample();
        // Append type 10: array of 48 x u16 (type 1), and type 11: struct holder { cb @ 64 bits }.
        let mut b = Builder::new();
        b.strings = data[24 + type_len(&data)..].to_vec();
        b.types = data[24..24 + type_len(&data)].to_vec();
        b.add("", KIND_ARRAY, 0, false, 0, &[1, 2, 48]);
        let m = b.member("cb", 10, 64);
        b.add("holder", KIND_STRUCT, 1, false, 104, &m);
        data = b.finish();
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(
            btf.field("holder", "cb").unwrap(),
            FieldLocation {
                byte_offset: 8,
                size: 96
            }
        );
    }

    fn type_len(data: &[u8]) -> usize {
        u32::from_le_bytes(data[12..16].try_into().unwrap()) as usize
    }

    #[test]
    fn errors_name_what_is_missing() {
        let btf = Btf::parse(&sample()).unwrap();
        let err = btf
            .field("sock_common", "skc_nope")
            .unwrap_err()
            .to_string();
        assert!(err.contains("skc_nope"), "{err}");
        let err = btf.field("sock", "sk_err").unwrap_err().to_string();
        assert!(err.contains("struct sock"), "{err}");
        let err = btf
            .field("sock_common", "skc_bits")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bitfield"), "{err}");
    }

    #[test]
    fn enums_and_tracepoint_prototypes() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(
            btf.enum_values("sk_rst_reason").unwrap(),
            vec![
                ("SK_RST_REASON_NOT_SPECIFIED".to_owned(), 0),
                ("SK_RST_REASON_NO_SOCKET".to_owned(), 1)
            ]
        );
        assert_eq!(btf.tracepoint_arg_count("tcp_retransmit_skb"), Some(2));
        assert_eq!(btf.tracepoint_arg_count("tcp_nonexistent"), None);
    }

    #[test]
    fn corrupt_input_is_an_error_not_a_panic() {
        let data = sample();
        assert!(Btf::parse(&data[..10]).is_err());
        assert!(Btf::parse(&data[..40]).is_err());
        let mut bad_magic = data.clone();
        bad_magic[0] = 0;
        assert!(Btf::parse(&bad_magic).is_err());
    }
}
