//! The ledger digest, kept as it changes: the sum (mod 2^256) of the SHA-256 of every record
//! and of every serial -> identity pair. A sum does not depend on order, so it is updated per
//! applied command by taking a record's old hash out and its new one in, and `/status` and the
//! admin API read it without going over a million records. Equal on two members exactly when
//! their ledgers are (short of a SHA-256 collision).

use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::state::Record;

/// A 256-bit sum, little-endian limbs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sum([u64; 4]);

impl Sum {
    fn of(bytes: &[u8]) -> Sum {
        let h = Sha256::digest(bytes);
        let mut limbs = [0u64; 4];
        for (limb, chunk) in limbs.iter_mut().zip(h.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *limb = u64::from_le_bytes(b);
        }
        Sum(limbs)
    }

    pub fn record(rec: &Record) -> Sum {
        Sum::of(&serde_json::to_vec(rec).unwrap_or_default())
    }

    /// The term of a record whose JSON encoding (as [`Sum::record`] makes it) is `json`.
    pub fn encoded_record(json: &[u8]) -> Sum {
        Sum::of(json)
    }

    pub fn serial(serial: &str, identity: &str) -> Sum {
        Sum::of(format!("serial {serial} {identity}").as_bytes())
    }

    pub fn add(&mut self, o: Sum) {
        let mut carry = false;
        for (a, b) in self.0.iter_mut().zip(o.0) {
            let (s1, c1) = a.overflowing_add(b);
            let (s2, c2) = s1.overflowing_add(u64::from(carry));
            *a = s2;
            carry = c1 || c2;
        }
    }

    pub fn sub(&mut self, o: Sum) {
        let mut borrow = false;
        for (a, b) in self.0.iter_mut().zip(o.0) {
            let (d1, b1) = a.overflowing_sub(b);
            let (d2, b2) = d1.overflowing_sub(u64::from(borrow));
            *a = d2;
            borrow = b1 || b2;
        }
    }

    /// 64 hex digits, most significant first.
    pub fn hex(&self) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(64);
        for limb in self.0.iter().rev() {
            let _ = write!(out, "{limb:016x}");
        }
        out
    }
}

/// The running digest of one ledger; `None` until first asked for (and after a change it
/// could not follow), when it is computed once over the whole ledger.
#[derive(Debug, Default)]
pub struct Running(Mutex<Option<Sum>>);

impl Running {
    pub fn get(&self) -> Option<Sum> {
        self.0.lock().map(|g| *g).unwrap_or(None)
    }

    pub fn set(&self, s: Option<Sum>) {
        if let Ok(mut g) = self.0.lock() {
            *g = s;
        }
    }

    /// Applies `f` when the digest is being kept.
    pub fn update(&self, f: impl FnOnce(&mut Sum)) {
        if let Ok(mut g) = self.0.lock() {
            if let Some(s) = g.as_mut() {
                f(s);
            }
        }
    }
}

/// A record's own term in the digest, kept with the record so that changing it takes the old
/// term out without encoding the old record again. Not part of the record's value: two
/// records are equal whatever their cached terms.
#[derive(Debug, Default, Clone, Copy)]
pub struct Term(Option<Sum>);

impl Term {
    pub fn get(&self) -> Option<Sum> {
        self.0
    }

    pub fn set(&mut self, s: Sum) {
        self.0 = Some(s);
    }
}

impl PartialEq for Term {
    fn eq(&self, _: &Term) -> bool {
        true
    }
}

impl Eq for Term {}

/// Copies start over: the copy computes its own when asked.
impl Clone for Running {
    fn clone(&self) -> Self {
        Running(Mutex::new(self.get()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_do_not_depend_on_order_and_undo_exactly() {
        let (a, b, c) = (Sum::of(b"a"), Sum::of(b"b"), Sum::of(b"c"));
        let mut x = Sum::default();
        x.add(a);
        x.add(b);
        x.add(c);
        let mut y = Sum::default();
        y.add(c);
        y.add(a);
        y.add(b);
        assert_eq!(x, y);
        x.sub(b);
        y.sub(b);
        assert_eq!(x, y);
        x.sub(a);
        x.sub(c);
        assert_eq!(x, Sum::default());
        assert_eq!(x.hex().len(), 64);
        // carries cross limbs
        let mut m = Sum([u64::MAX, u64::MAX, 0, 0]);
        m.add(Sum([1, 0, 0, 0]));
        assert_eq!(m, Sum([0, 0, 1, 0]));
        m.sub(Sum([1, 0, 0, 0]));
        assert_eq!(m, Sum([u64::MAX, u64::MAX, 0, 0]));
    }
}
