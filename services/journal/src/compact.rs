//! The compact in-memory form of journal records that the view keeps instead of decoded
//! values. It is the record's MessagePack with every string replaced by its
//! `/`-separated segments, each one an interned id, a 32-hex id packed in 16 bytes, or a
//! literal; everything else is copied as is. Field names, statuses, cluster and family
//! names and ARN prefixes are interned once per view, so a task record of ~1 KB takes
//! ~200 bytes. The form is lossless: expanding gives MessagePack that decodes to the same
//! value, so a record decoded on read equals the record written.
//!
//! The interner only grows (bounded by [`MAX_INTERNED`] strings of at most
//! [`MAX_SEGMENT`] bytes); segments beyond the bounds stay literals.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

/// Marker of a compacted string; never used by MessagePack.
const STRING: u8 = 0xc1;
/// Segment kinds (low two bits of a segment's header).
const INTERNED: u32 = 0;
const LITERAL: u32 = 1;
const HEX: u32 = 2;
/// Bounds of the interner.
const MAX_INTERNED: usize = 1 << 16;
const MAX_SEGMENT: usize = 64;
/// Deepest nesting accepted (journal records nest a handful of levels).
const MAX_DEPTH: u32 = 64;
/// Strings of a record remembered by position (see [`Encoder::memo`]).
const MEMO: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompactError {
    #[error("record ends early")]
    Truncated,
    #[error("invalid MessagePack marker {0:#04x}")]
    Marker(u8),
    #[error("record nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("trailing bytes after the record")]
    Trailing,
    #[error("unknown interned string {0}")]
    Unknown(u32),
}

type Res<T> = std::result::Result<T, CompactError>;

/// A top-level field of a record seen while compacting it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Field<'a> {
    Str(&'a [u8]),
    Number(f64),
    Nil,
    Other,
}

/// A map with a fast hash (rustc's FxHash) for the short keys (segments, names, ids)
/// the view looks up on every record; they are not attacker-chosen in a way that matters:
/// the maps are bounded.
pub type FastMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

/// Strings shared by every compact record of a view.
#[derive(Default)]
pub struct Interner {
    lookup: Mutex<FastMap<Arc<[u8]>, u32>>,
    strings: RwLock<Vec<Arc<[u8]>>>,
}

thread_local! {
    /// Where [`Interner::with_expanded`] expands records (reused: reads stay free of
    /// large allocations).
    static EXPANDED: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

impl Interner {
    /// An encoder for a batch of records. Several may work at once (on other threads):
    /// each keeps the ids it has seen, and takes the shared lookup only for new ones.
    pub fn encoder(&self) -> Encoder<'_> {
        Encoder {
            lookup: &self.lookup,
            seen: FastMap::default(),
            strings: &self.strings,
            out: Vec::new(),
            memo: Vec::new(),
            ordinal: 0,
        }
    }

    /// MessagePack of a compact record.
    #[cfg(test)]
    pub fn expand(&self, compact: &[u8]) -> Res<Vec<u8>> {
        self.with_expanded(compact, <[u8]>::to_vec)
    }

    /// Runs `f` on the MessagePack of a compact record.
    pub fn with_expanded<R>(&self, compact: &[u8], f: impl FnOnce(&[u8]) -> R) -> Res<R> {
        EXPANDED.with(|buffers| {
            let mut buffers = buffers.try_borrow_mut().ok();
            let mut own = (Vec::new(), Vec::new());
            let (out, scratch) = match buffers.as_deref_mut() {
                Some((out, scratch)) => (out, scratch),
                None => (&mut own.0, &mut own.1),
            };
            out.clear();
            {
                let strings = self.strings.read().unwrap_or_else(PoisonError::into_inner);
                let mut r = Reader {
                    data: compact,
                    pos: 0,
                };
                expand_item(&strings, &mut r, out, scratch, 0)?;
                if r.pos != compact.len() {
                    return Err(CompactError::Trailing);
                }
            }
            Ok(f(out))
        })
    }
}

/// A string and its compact encoding.
type Memo = (Box<[u8]>, Box<[u8]>);

/// The encoding side of an [`Interner`], held for a batch of records.
pub struct Encoder<'a> {
    lookup: &'a Mutex<FastMap<Arc<[u8]>, u32>>,
    /// Ids this encoder already looked up.
    seen: FastMap<Box<[u8]>, u32>,
    strings: &'a RwLock<Vec<Arc<[u8]>>>,
    /// Reused output buffer; each record is copied out at its exact size.
    out: Vec<u8>,
    /// The n-th string of the previous records with its encoding, when that encoding is
    /// fully interned: records of one kind repeat their field names and most values at
    /// the same positions, so most strings are a comparison away from their encoding.
    memo: Vec<Option<Memo>>,
    /// Position of the next string in the current record.
    ordinal: usize,
}

impl Encoder<'_> {
    /// The compact form of one MessagePack record; `field` sees each top-level field of
    /// a map record whose name is a string.
    pub fn compact<'a>(
        &mut self,
        record: &'a [u8],
        mut field: impl FnMut(&'a [u8], Field<'a>),
    ) -> Res<Box<[u8]>> {
        let mut r = Reader {
            data: record,
            pos: 0,
        };
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        self.ordinal = 0;
        let result = self.compact_into(&mut r, record, &mut out, &mut field);
        let compact = result.map(|()| Box::from(&out[..]));
        self.out = out;
        compact
    }

    fn compact_into<'a>(
        &mut self,
        r: &mut Reader<'a>,
        record: &'a [u8],
        out: &mut Vec<u8>,
        field: &mut impl FnMut(&'a [u8], Field<'a>),
    ) -> Res<()> {
        let top = r.peek()?;
        let pairs = match top {
            0x80..=0x8f => {
                r.u8()?;
                Some(usize::from(top & 0x0f))
            }
            0xde => {
                r.u8()?;
                Some(usize::from(r.be16()?))
            }
            0xdf => {
                r.u8()?;
                Some(r.be32()? as usize)
            }
            _ => None,
        };
        match pairs {
            Some(n) => {
                out.extend_from_slice(&record[..r.pos]);
                for _ in 0..n {
                    let key = match r.peek()? {
                        m @ (0xa0..=0xbf | 0xd9..=0xdb) => {
                            r.u8()?;
                            let s = r.string(m)?;
                            self.string(s, out);
                            Some(s)
                        }
                        _ => {
                            self.item(r, out, 1)?;
                            None
                        }
                    };
                    let value = field_of(&mut r.clone())?;
                    self.item(r, out, 1)?;
                    if let Some(key) = key {
                        field(key, value);
                    }
                }
            }
            None => self.item(r, out, 0)?,
        }
        if r.pos != record.len() {
            return Err(CompactError::Trailing);
        }
        Ok(())
    }

    fn item(&mut self, r: &mut Reader<'_>, out: &mut Vec<u8>, depth: u32) -> Res<()> {
        if depth > MAX_DEPTH {
            return Err(CompactError::TooDeep);
        }
        let start = r.pos;
        let m = r.u8()?;
        let children = match m {
            0xa0..=0xbf | 0xd9..=0xdb => {
                let s = r.string(m)?;
                self.string(s, out);
                return Ok(());
            }
            _ => skip_header(r, m)?,
        };
        out.extend_from_slice(&r.data[start..r.pos]);
        for _ in 0..children {
            self.item(r, out, depth + 1)?;
        }
        Ok(())
    }

    fn string(&mut self, s: &[u8], out: &mut Vec<u8>) {
        let ordinal = self.ordinal;
        self.ordinal += 1;
        if let Some(Some((source, encoded))) = self.memo.get(ordinal) {
            if **source == *s {
                out.extend_from_slice(encoded);
                return;
            }
        }
        let start = out.len();
        if self.encode_string(s, out) && ordinal < MEMO {
            if self.memo.len() <= ordinal {
                self.memo.resize(ordinal + 1, None);
            }
            self.memo[ordinal] = Some((Box::from(s), Box::from(&out[start..])));
        }
    }

    /// Encodes a string; true when every segment is interned.
    fn encode_string(&mut self, s: &[u8], out: &mut Vec<u8>) -> bool {
        let mut interned = true;
        out.push(STRING);
        // The segment count goes first; one byte unless a string has 128 segments or more.
        let count_at = out.len();
        out.push(0);
        let mut segments: u32 = 0;
        for segment in s.split(|b| *b == b'/') {
            segments += 1;
            if let Some(packed) = pack_hex(segment) {
                interned = false;
                varint(out, HEX);
                out.extend_from_slice(&packed);
            } else if let Some(id) = self.intern(segment) {
                varint(out, (id << 2) | INTERNED);
            } else {
                interned = false;
                varint(out, ((segment.len() as u32) << 2) | LITERAL);
                out.extend_from_slice(segment);
            }
        }
        if segments < 0x80 {
            out[count_at] = segments as u8;
        } else {
            let mut count = Vec::with_capacity(5);
            varint(&mut count, segments);
            out.splice(count_at..=count_at, count);
        }
        interned
    }

    fn intern(&mut self, segment: &[u8]) -> Option<u32> {
        if segment.is_empty() || segment.len() > MAX_SEGMENT {
            return None;
        }
        if let Some(id) = self.seen.get(segment) {
            return Some(*id);
        }
        let mut lookup = self.lookup.lock().unwrap_or_else(PoisonError::into_inner);
        let id = match lookup.get(segment) {
            Some(id) => *id,
            None => {
                let mut strings = self.strings.write().unwrap_or_else(PoisonError::into_inner);
                if strings.len() >= MAX_INTERNED {
                    return None;
                }
                let id = strings.len() as u32;
                let s: Arc<[u8]> = Arc::from(segment);
                strings.push(s.clone());
                lookup.insert(s, id);
                id
            }
        };
        drop(lookup);
        self.seen.insert(Box::from(segment), id);
        Some(id)
    }
}

/// The value of a top-level field, for [`Encoder::compact`]'s callback.
fn field_of<'a>(r: &mut Reader<'a>) -> Res<Field<'a>> {
    let m = r.u8()?;
    Ok(match m {
        0xa0..=0xbf | 0xd9..=0xdb => Field::Str(r.string(m)?),
        0xc0 => Field::Nil,
        0xca => Field::Number(f64::from(f32::from_be_bytes(r.array()?))),
        0xcb => Field::Number(f64::from_be_bytes(r.array()?)),
        0x00..=0x7f => Field::Number(f64::from(m)),
        0xe0..=0xff => Field::Number(f64::from(m as i8)),
        0xcc => Field::Number(f64::from(r.u8()?)),
        0xcd => Field::Number(f64::from(r.be16()?)),
        0xce => Field::Number(f64::from(r.be32()?)),
        0xcf => Field::Number(u64::from_be_bytes(r.array()?) as f64),
        0xd0 => Field::Number(f64::from(r.u8()? as i8)),
        0xd1 => Field::Number(f64::from(i16::from_be_bytes(r.array()?))),
        0xd2 => Field::Number(f64::from(i32::from_be_bytes(r.array()?))),
        0xd3 => Field::Number(i64::from_be_bytes(r.array()?) as f64),
        _ => Field::Other,
    })
}

/// Skips the header (and any fixed payload) of a non-string item; returns how many
/// child items follow.
fn skip_header(r: &mut Reader<'_>, m: u8) -> Res<usize> {
    let skip = |r: &mut Reader<'_>, n: usize| r.take(n).map(|_| 0);
    match m {
        0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => Ok(0),
        0x80..=0x8f => Ok(2 * usize::from(m & 0x0f)),
        0x90..=0x9f => Ok(usize::from(m & 0x0f)),
        0xc4 => {
            let n = usize::from(r.u8()?);
            skip(r, n)
        }
        0xc5 => {
            let n = usize::from(r.be16()?);
            skip(r, n)
        }
        0xc6 => {
            let n = r.be32()? as usize;
            skip(r, n)
        }
        0xc7 => {
            let n = usize::from(r.u8()?);
            skip(r, n + 1)
        }
        0xc8 => {
            let n = usize::from(r.be16()?);
            skip(r, n + 1)
        }
        0xc9 => {
            let n = r.be32()? as usize;
            skip(r, n.saturating_add(1))
        }
        0xca => skip(r, 4),
        0xcb => skip(r, 8),
        0xcc | 0xd0 => skip(r, 1),
        0xcd | 0xd1 => skip(r, 2),
        0xce | 0xd2 => skip(r, 4),
        0xcf | 0xd3 => skip(r, 8),
        0xd4 => skip(r, 2),
        0xd5 => skip(r, 3),
        0xd6 => skip(r, 5),
        0xd7 => skip(r, 9),
        0xd8 => skip(r, 17),
        0xdc => Ok(usize::from(r.be16()?)),
        0xdd => Ok(r.be32()? as usize),
        0xde => Ok(2 * usize::from(r.be16()?)),
        0xdf => Ok(2 * r.be32()? as usize),
        other => Err(CompactError::Marker(other)),
    }
}

fn expand_item(
    strings: &[Arc<[u8]>],
    r: &mut Reader<'_>,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    depth: u32,
) -> Res<()> {
    if depth > MAX_DEPTH {
        return Err(CompactError::TooDeep);
    }
    let start = r.pos;
    let m = r.u8()?;
    if m == STRING {
        scratch.clear();
        let segments = r.varint()?;
        for i in 0..segments {
            if i > 0 {
                scratch.push(b'/');
            }
            let header = r.varint()?;
            match header & 3 {
                INTERNED => {
                    let id = header >> 2;
                    let s = strings.get(id as usize).ok_or(CompactError::Unknown(id))?;
                    scratch.extend_from_slice(s);
                }
                LITERAL => scratch.extend_from_slice(r.take((header >> 2) as usize)?),
                HEX => unpack_hex(r.array()?, scratch),
                _ => return Err(CompactError::Marker(STRING)),
            }
        }
        write_str_header(out, scratch.len());
        out.extend_from_slice(scratch);
        return Ok(());
    }
    let children = match m {
        0xa0..=0xbf | 0xd9..=0xdb => {
            r.string(m)?;
            0
        }
        _ => skip_header(r, m)?,
    };
    out.extend_from_slice(&r.data[start..r.pos]);
    for _ in 0..children {
        expand_item(strings, r, out, scratch, depth + 1)?;
    }
    Ok(())
}

fn write_str_header(out: &mut Vec<u8>, len: usize) {
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else if len <= usize::from(u8::MAX) {
        out.extend_from_slice(&[0xd9, len as u8]);
    } else if len <= usize::from(u16::MAX) {
        out.push(0xda);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

fn varint(out: &mut Vec<u8>, mut n: u32) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// The 16 bytes of a 32-character lowercase hex string.
pub fn pack_hex(s: &[u8]) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut packed = [0u8; 16];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        packed[i] = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
    }
    Some(packed)
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends the 32 lowercase hex characters of 16 packed bytes.
pub fn unpack_hex(packed: [u8; 16], out: &mut Vec<u8>) {
    for b in packed {
        out.push(HEX_DIGITS[usize::from(b >> 4)]);
        out.push(HEX_DIGITS[usize::from(b & 0x0f)]);
    }
}

#[derive(Clone)]
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(CompactError::Truncated)?;
        let s = self
            .data
            .get(self.pos..end)
            .ok_or(CompactError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Res<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn peek(&self) -> Res<u8> {
        self.data
            .get(self.pos)
            .copied()
            .ok_or(CompactError::Truncated)
    }

    fn u8(&mut self) -> Res<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    fn be16(&mut self) -> Res<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn be32(&mut self) -> Res<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// The bytes of a string whose marker `m` was just read.
    fn string(&mut self, m: u8) -> Res<&'a [u8]> {
        let n = match m {
            0xa0..=0xbf => usize::from(m & 0x1f),
            0xd9 => usize::from(self.u8()?),
            0xda => usize::from(self.be16()?),
            _ => self.be32()? as usize,
        };
        self.take(n)
    }

    fn varint(&mut self) -> Res<u32> {
        let mut n: u32 = 0;
        for shift in (0..35).step_by(7) {
            let b = self.u8()?;
            n |= u32::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(CompactError::Truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_messages::arn::ArnScope;
    use berth_messages::codec;
    use berth_messages::model::{
        Allocation, Container, ContainerOverride, KeyValuePair, NetworkBinding, StopCode, Tag,
        Task, TaskOverride, TaskStatus,
    };

    /// A task as RunTask writes it, with a container per id given.
    fn task(task_id: &str, containers: &[&str]) -> Task {
        let scope = ArnScope::default();
        let task_arn = scope.task("reads", task_id);
        Task {
            task_arn: task_arn.clone(),
            cluster_arn: scope.cluster("reads"),
            task_definition_arn: scope.task_definition("bench-seed", 1),
            container_instance_arn: scope
                .container_instance("reads", "6f1c9b7e2d4a4e0f9a3b1c2d3e4f5a6b"),
            last_status: TaskStatus::Running,
            desired_status: TaskStatus::Running,
            containers: containers
                .iter()
                .map(|id| Container {
                    container_arn: scope.container("reads", task_id, id),
                    task_arn: task_arn.clone(),
                    name: "app".into(),
                    image: Some("busybox".into()),
                    last_status: "RUNNING".into(),
                    cpu: Some("10".into()),
                    memory: Some("16".into()),
                    ..Default::default()
                })
                .collect(),
            group: "family:bench-seed".into(),
            started_by: Some("berth-bench".into()),
            created_at: 1_767_000_000.123,
            started_at: Some(1_767_000_001.5),
            cpu: Some("10".into()),
            memory: Some("16".into()),
            launch_type: "EC2".into(),
            allocation: Allocation {
                cpu: 10,
                memory: 16,
                ports: Vec::new(),
                ports_udp: Vec::new(),
                group: None,
                claim: None,
            },
            ..Default::default()
        }
    }

    fn round_trip(interner: &Interner, record: &[u8]) -> Box<[u8]> {
        let compact = interner.encoder().compact(record, |_, _| {}).unwrap();
        let expanded = interner.expand(&compact).unwrap();
        assert_eq!(
            expanded, record,
            "expansion gives the same MessagePack back"
        );
        compact
    }

    /// Records compacted one after the other by one encoder (its memo in play).
    #[test]
    fn records_in_a_row_round_trip() {
        let interner = Interner::default();
        let mut encoder = interner.encoder();
        let mut records = Vec::new();
        for (i, id) in [
            "0123456789abcdef0123456789abcdef",
            "not-hex",
            "fedcba9876543210fedcba9876543210",
        ]
        .into_iter()
        .enumerate()
        {
            let mut t = task(id, &["a1b2c3d4e5f60718293a4b5c6d7e8f90"]);
            if i == 1 {
                t.group = "family:other".into();
                t.started_by = None;
                t.containers[0].name = "taskArn".into();
            }
            records.push((t.clone(), codec::encode_record(&t).unwrap()));
        }
        records.push(records[0].clone());
        let compacts: Vec<Box<[u8]>> = records
            .iter()
            .map(|(_, r)| encoder.compact(r, |_, _| {}).unwrap())
            .collect();
        drop(encoder);
        for ((t, record), compact) in records.iter().zip(&compacts) {
            let expanded = interner.expand(compact).unwrap();
            assert_eq!(&expanded, record);
            let back: Task = codec::decode_record(&expanded).unwrap();
            assert_eq!(&back, t);
        }
        assert_eq!(compacts[0], compacts[3]);
    }

    #[test]
    fn task_records_round_trip_and_shrink() {
        let interner = Interner::default();
        let ids = [
            "0123456789abcdef0123456789abcdef",
            "fedcba9876543210fedcba9876543210",
        ];
        let mut sizes = Vec::new();
        for id in ids {
            let t = task(id, &["a1b2c3d4e5f60718293a4b5c6d7e8f90"]);
            let record = codec::encode_record(&t).unwrap();
            let compact = round_trip(&interner, &record);
            let back: Task = codec::decode_record(&interner.expand(&compact).unwrap()).unwrap();
            assert_eq!(back, t);
            sizes.push((record.len(), compact.len()));
        }
        // The second record shares every interned string with the first.
        let (full, compact) = sizes[1];
        assert!(compact * 3 < full, "{compact} of {full} bytes");

        // Everything a task can carry, odd ids and text included.
        let mut t = task(
            "not-hex-Task-Id",
            &["0123", "A1B2C3D4E5F60718293A4B5C6D7E8F90"],
        );
        t.last_status = TaskStatus::Stopped;
        t.stop_code = Some(StopCode::EssentialContainerExited);
        t.stopped_reason = Some("exit 137 / killed: «OOM» ".repeat(20));
        t.stopped_at = Some(-1.25);
        t.containers[0].exit_code = Some(-1);
        t.containers[0].network_bindings = vec![NetworkBinding {
            bind_ip: Some("0.0.0.0".into()),
            container_port: Some(8080),
            host_port: Some(65535),
            protocol: Some("tcp".into()),
        }];
        t.overrides = TaskOverride {
            container_overrides: vec![ContainerOverride {
                name: Some("app".into()),
                command: Some(vec![
                    "".into(),
                    "/".into(),
                    "//a//".into(),
                    "x".repeat(70_000),
                ]),
                environment: vec![KeyValuePair {
                    name: Some("K".into()),
                    value: Some(String::new()),
                }],
                memory: Some(i64::MIN),
                cpu: Some(i64::MAX),
                ..Default::default()
            }],
            ..Default::default()
        };
        t.tags = vec![Tag {
            key: Some("k".into()),
            value: Some("v".into()),
        }];
        t.allocation.ports = vec![80, 65535];
        t.started_by = None;
        let record = codec::encode_record(&t).unwrap();
        let compact = round_trip(&interner, &record);
        let back: Task = codec::decode_record(&interner.expand(&compact).unwrap()).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn every_marker_round_trips() {
        let interner = Interner::default();
        let mut record = vec![0xdc, 0, 17]; // array16 of 17
        record.extend_from_slice(&[0x00, 0x7f, 0xe0, 0xff, 0xc0, 0xc2, 0xc3]);
        record.extend_from_slice(&[0xc4, 2, 0xc1, 0xc1]); // bin8 holding the string marker
        record.extend_from_slice(&[0xc7, 1, 5, 9, 0xd4, 1, 2, 0xd8, 3]);
        record.extend_from_slice(&[0u8; 16]);
        record.extend_from_slice(&[0xca, 1, 2, 3, 4, 0xcb, 1, 2, 3, 4, 5, 6, 7, 8]);
        record.extend_from_slice(&[0xcf, 1, 2, 3, 4, 5, 6, 7, 8, 0xd3, 1, 2, 3, 4, 5, 6, 7, 8]);
        // map16 with a non-string key (strings come back with the smallest header, as
        // every MessagePack writer makes them)
        record.extend_from_slice(&[0xde, 0, 1, 0x01, 0xa3, b'a', b'/', b'b']);
        // invalid UTF-8 in a string
        record.extend_from_slice(&[0xa2, 0xff, 0xfe]);
        round_trip(&interner, &record);

        for bad in [&[0xc1][..], &[0x92, 0x01], &[0xd9, 5, b'a'], &[0x01, 0x02]] {
            assert!(interner.encoder().compact(bad, |_, _| {}).is_err());
        }
        let mut deep = vec![0x91; 100];
        deep.push(0x01);
        assert_eq!(
            interner.encoder().compact(&deep, |_, _| {}),
            Err(CompactError::TooDeep)
        );
    }

    #[test]
    fn top_level_fields_are_reported() {
        let interner = Interner::default();
        let mut t = task("0123456789abcdef0123456789abcdef", &[]);
        t.stopped_at = Some(12.5);
        let record = codec::encode_record(&t).unwrap();
        let mut seen = Vec::new();
        interner
            .encoder()
            .compact(&record, |k, v| {
                if let Field::Str(s) = v {
                    seen.push((k.to_vec(), Some(s.to_vec()), None));
                } else if let Field::Number(n) = v {
                    seen.push((k.to_vec(), None, Some(n)));
                }
            })
            .unwrap();
        let find = |k: &str| seen.iter().find(|(key, _, _)| key == k.as_bytes()).cloned();
        assert_eq!(
            find("lastStatus").and_then(|f| f.1),
            Some(b"RUNNING".to_vec())
        );
        assert_eq!(find("stoppedAt").and_then(|f| f.2), Some(12.5));
        assert_eq!(
            find("taskArn").and_then(|f| f.1),
            Some(t.task_arn.into_bytes())
        );
    }
}
