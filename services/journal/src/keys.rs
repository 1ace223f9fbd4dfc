//! Compact keys of the view's task indexes: task ids as 16 bytes when they are 32-hex (every
//! id Berth mints), and small per-cluster symbols for the strings many tasks share
//! (instance ids, families, groups, `startedBy`). Both keep the order of the strings they
//! stand for where order matters (task ids: paging is by task id).

use crate::compact::{pack_hex, unpack_hex, FastMap};
use std::cmp::Ordering;
use std::sync::Arc;

/// A task id; orders exactly as the id strings do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TaskKey {
    /// A 32-character lowercase hex id, packed.
    Hex([u8; 16]),
    /// Any other id.
    Other(Box<str>),
}

impl TaskKey {
    pub fn new(id: &str) -> Self {
        match pack_hex(id.as_bytes()) {
            Some(packed) => Self::Hex(packed),
            None => Self::Other(id.into()),
        }
    }

    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match self {
            Self::Hex(packed) => {
                let mut buf = Vec::with_capacity(32);
                unpack_hex(*packed, &mut buf);
                f(&buf)
            }
            Self::Other(s) => f(s.as_bytes()),
        }
    }
}

impl std::fmt::Display for TaskKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Hex(packed) => {
                let mut buf = Vec::with_capacity(32);
                unpack_hex(*packed, &mut buf);
                // Hex digits are ASCII.
                f.write_str(std::str::from_utf8(&buf).map_err(|_| std::fmt::Error)?)
            }
            Self::Other(s) => f.write_str(s),
        }
    }
}

impl Ord for TaskKey {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            // Big-endian nibbles order as their hex digits do.
            (Self::Hex(a), Self::Hex(b)) => u128::from_be_bytes(*a).cmp(&u128::from_be_bytes(*b)),
            (Self::Other(a), Self::Other(b)) => a.cmp(b),
            _ => self.with_bytes(|a| other.with_bytes(|b| a.cmp(b))),
        }
    }
}

impl PartialOrd for TaskKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A string interned in a cluster's [`Symbols`].
pub type Sym = u32;
/// No string (an absent optional field).
pub const NO_SYM: Sym = Sym::MAX;

/// Reference-counted interning of the strings tasks share within a cluster.
#[derive(Default)]
pub struct Symbols {
    ids: FastMap<Arc<str>, Sym>,
    slots: Vec<(Arc<str>, u32)>,
    free: Vec<Sym>,
}

impl Symbols {
    pub fn get(&self, name: &str) -> Option<Sym> {
        self.ids.get(name).copied()
    }

    pub fn name(&self, sym: Sym) -> &str {
        self.slots.get(sym as usize).map_or("", |(name, _)| name)
    }

    /// Takes one reference to `name`.
    pub fn acquire(&mut self, name: &str) -> Sym {
        if let Some(&sym) = self.ids.get(name) {
            self.slots[sym as usize].1 += 1;
            return sym;
        }
        let name: Arc<str> = Arc::from(name);
        let sym = match self.free.pop() {
            Some(sym) => {
                self.slots[sym as usize] = (name.clone(), 1);
                sym
            }
            None => {
                self.slots.push((name.clone(), 1));
                (self.slots.len() - 1) as Sym
            }
        };
        self.ids.insert(name, sym);
        sym
    }

    /// Drops one reference; the symbol is freed with its last one.
    pub fn release(&mut self, sym: Sym) {
        let Some(slot) = self.slots.get_mut(sym as usize) else {
            return;
        };
        slot.1 = slot.1.saturating_sub(1);
        if slot.1 == 0 {
            let name = std::mem::replace(&mut slot.0, Arc::from(""));
            self.ids.remove(&name);
            self.free.push(sym);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_keys_order_as_strings() {
        let ids = [
            "",
            "0",
            "00000000000000000000000000000000",
            "0000000000000000000000000000000",
            "000000000000000000000000000000000",
            "0123456789abcdef0123456789abcdef",
            "0123456789abcdef0123456789abcdeg",
            "9fffffffffffffffffffffffffffffff",
            "A0000000000000000000000000000000",
            "a0000000000000000000000000000000",
            "ffffffffffffffffffffffffffffffff",
            "g",
            "t1",
            "zz",
        ];
        for a in ids {
            assert_eq!(TaskKey::new(a).to_string(), a);
            for b in ids {
                assert_eq!(TaskKey::new(a).cmp(&TaskKey::new(b)), a.cmp(b), "{a} {b}");
                assert_eq!(TaskKey::new(a) == TaskKey::new(b), a == b);
            }
        }
        assert!(matches!(
            TaskKey::new("a0000000000000000000000000000000"),
            TaskKey::Hex(_)
        ));
        assert!(matches!(
            TaskKey::new("A0000000000000000000000000000000"),
            TaskKey::Other(_)
        ));
    }

    #[test]
    fn symbols_are_counted() {
        let mut s = Symbols::default();
        let a = s.acquire("a");
        assert_eq!(s.acquire("a"), a);
        let b = s.acquire("b");
        assert_ne!(a, b);
        assert_eq!(s.name(b), "b");
        s.release(a);
        assert_eq!(s.get("a"), Some(a));
        s.release(a);
        assert_eq!(s.get("a"), None);
        let c = s.acquire("c");
        assert_eq!(c, a, "freed slots are reused");
        assert_eq!(s.name(c), "c");
        assert_eq!(s.acquire("b"), b);
        s.release(b);
        assert_eq!(s.get("b"), Some(b));
    }
}
