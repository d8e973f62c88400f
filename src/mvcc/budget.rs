//! The memory budget of unary reads (`limits.read_memory_bytes`): one per process, shared
//! by every Range and read-only Txn. A read charges each row to its [`Reservation`] as it
//! reads it, before it keeps it, for what the row will cost until the reply has been
//! written out: the row itself and its copy in the encoded reply (tonic encodes the whole
//! message into one buffer while the rows are still held). When the budget cannot take a
//! row the reservation is *refused*: the read stops keeping rows and only goes on adding
//! up what it would need, until it knows the whole need or that it exceeds the budget.
//! The replica (`core::read`) then waits for that much or refuses the request.
//!
//! Permits are counted in KiB, so a budget of any size fits tokio's semaphore and one
//! wait (`acquire_many` takes a `u32`) covers up to 4 TiB.

use std::sync::Arc;

use tokio::sync::{AcquireError, Semaphore};

/// Bytes per permit.
const UNIT: u64 = 1024;

/// What a row costs beyond its key and value bytes: the `KeyValue` in the reply's
/// vector (80 bytes, up to twice that while the vector grows by doubling), the
/// allocator's rounding of its key and value, and the protobuf tags and lengths of its
/// encoded copy (measured: docs/architecture.md, "Memory budget of unary reads").
const ROW_OVERHEAD: u64 = 224;

/// The memory a row of `key_len` + `value_len` bytes costs a unary reply until it has
/// been written out: held once as read and once encoded, plus the allocator's rounding.
pub fn row_cost(key_len: usize, value_len: usize) -> u64 {
    let data = (key_len + value_len) as u64;
    2 * data + data / 8 + ROW_OVERHEAD
}

/// The process-wide budget: `limit` bytes that unary reads may hold at once.
#[derive(Debug, Clone)]
pub struct ReadBudget {
    permits: Arc<Semaphore>,
    limit: u64,
}

impl ReadBudget {
    pub fn new(limit: u64) -> ReadBudget {
        let units = (limit / UNIT).max(1) as usize;
        ReadBudget {
            permits: Arc::new(Semaphore::new(units.min(Semaphore::MAX_PERMITS))),
            limit,
        }
    }

    /// The configured size of the budget, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes held by reservations now.
    pub fn in_use(&self) -> u64 {
        let total = (self.limit / UNIT).max(1);
        (total - (self.permits.available_permits() as u64).min(total)) * UNIT
    }

    /// An empty reservation that takes from the budget, without waiting, as rows are
    /// charged to it.
    pub fn reservation(&self) -> Reservation {
        Reservation {
            permits: Some(self.permits.clone()),
            limit: self.limit,
            held_units: 0,
            charged: 0,
            refused: false,
        }
    }

    /// Waits (first come, first served) until `bytes` of the budget are free and holds
    /// them. `bytes` above the whole budget waits for the whole budget: the caller
    /// refuses such reads before waiting.
    pub async fn reserve(&self, bytes: u64) -> Result<Reservation, AcquireError> {
        let mut r = self.reservation();
        let units = bytes.min(self.limit).div_ceil(UNIT).min(u32::MAX as u64) as u32;
        if units > 0 {
            self.permits.acquire_many(units).await?.forget();
            r.hold(units as u64);
        }
        Ok(r)
    }
}

/// A read's share of the budget, given back when it is dropped (for a unary reply: once
/// its last byte has been handed to HTTP/2).
#[derive(Debug)]
pub struct Reservation {
    /// `None`: not metered (reads inside the state machine, internal reads, RangeStream
    /// chunks, which bound themselves).
    permits: Option<Arc<Semaphore>>,
    limit: u64,
    held_units: u64,
    /// Bytes charged so far (also after a refusal: what the read needs).
    charged: u64,
    refused: bool,
}

impl Reservation {
    /// A reservation that accepts every charge and holds nothing.
    pub fn unmetered() -> Reservation {
        Reservation {
            permits: None,
            limit: u64::MAX,
            held_units: 0,
            charged: 0,
            refused: false,
        }
    }

    fn hold(&mut self, units: u64) {
        self.held_units += units;
        crate::metrics::READ_MEMORY_IN_USE.add((units * UNIT) as i64);
    }

    /// Charges `bytes` to the read. True when the read may keep what it charged for;
    /// false once the budget could not take it (from then on every charge is refused,
    /// and only counted, so that [`Reservation::needed`] says what the read needs).
    pub fn charge(&mut self, bytes: u64) -> bool {
        self.charged = self.charged.saturating_add(bytes);
        let Some(permits) = &self.permits else { return true };
        if self.refused {
            return false;
        }
        if self.charged > self.limit {
            self.refused = true;
            return false;
        }
        let want = self.charged.div_ceil(UNIT).saturating_sub(self.held_units);
        if want == 0 {
            return true;
        }
        let taken = match u32::try_from(want).ok().map(|w| permits.try_acquire_many(w)) {
            Some(Ok(p)) => {
                p.forget();
                true
            }
            _ => false,
        };
        if taken {
            self.hold(want);
        } else {
            self.refused = true;
        }
        taken
    }

    /// The budget could not take a row: what was read is incomplete.
    pub fn refused(&self) -> bool {
        self.refused
    }

    /// The read needs more than the whole budget: reading on cannot change the answer.
    pub fn exceeds_budget(&self) -> bool {
        self.charged > self.limit
    }

    /// Bytes charged: after a refusal, what the read needs (at least).
    pub fn needed(&self) -> u64 {
        self.charged
    }

    /// Bytes held from the budget.
    pub fn held(&self) -> u64 {
        self.held_units * UNIT
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(permits) = &self.permits {
            if self.held_units > 0 {
                permits.add_permits(self.held_units as usize);
                crate::metrics::READ_MEMORY_IN_USE.sub((self.held_units * UNIT) as i64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn charges_take_from_the_budget_and_dropping_gives_them_back() {
        let budget = ReadBudget::new(MIB);
        let mut a = budget.reservation();
        assert!(a.charge(100));
        assert_eq!(a.held(), 1024, "rounded up to whole KiB");
        assert!(a.charge(924), "still within the first KiB");
        assert_eq!(a.held(), 1024);
        assert!(a.charge(1));
        assert_eq!(a.held(), 2048);
        assert_eq!(budget.in_use(), 2048);
        drop(a);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn a_charge_the_budget_cannot_take_refuses_and_counts_on() {
        let budget = ReadBudget::new(MIB);
        let mut a = budget.reservation();
        assert!(a.charge(700 * 1024));
        let mut b = budget.reservation();
        assert!(b.charge(200 * 1024));
        assert!(!b.charge(200 * 1024), "700 + 400 KiB exceed 1 MiB");
        assert!(b.refused() && !b.exceeds_budget());
        assert!(!b.charge(1), "refused stays refused, even for what would fit");
        assert_eq!(b.needed(), 400 * 1024 + 1);
        assert_eq!(b.held(), 200 * 1024, "the refused charge took nothing");
        assert_eq!(budget.in_use(), 900 * 1024);
        drop(b);
        assert_eq!(budget.in_use(), 700 * 1024);
        drop(a);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn a_read_bigger_than_the_whole_budget_is_refused_even_when_idle() {
        let budget = ReadBudget::new(MIB);
        let mut r = budget.reservation();
        assert!(r.charge(MIB));
        assert!(!r.charge(1));
        assert!(r.refused() && r.exceeds_budget());
    }

    #[test]
    fn unmetered_accepts_everything_and_holds_nothing() {
        let mut r = Reservation::unmetered();
        assert!(r.charge(u64::MAX / 2));
        assert!(r.charge(u64::MAX / 2));
        assert!(!r.refused());
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn row_cost_covers_the_row_and_its_encoded_copy() {
        assert_eq!(row_cost(0, 0), ROW_OVERHEAD);
        assert!(row_cost(10, 10 * 1024) >= 2 * (10 + 10 * 1024));
    }

    #[tokio::test]
    async fn a_waiting_reservation_gets_the_bytes_once_they_are_given_back() {
        let budget = ReadBudget::new(MIB);
        let mut first = budget.reservation();
        assert!(first.charge(MIB));
        let b = budget.clone();
        let waiter = tokio::spawn(async move { b.reserve(512 * 1024).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(first);
        let mut second = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter gets the budget once it is free")
            .expect("task")
            .expect("semaphore open");
        assert_eq!(second.held(), 512 * 1024);
        assert!(second.charge(512 * 1024), "charges use what was reserved first");
        assert_eq!(second.held(), 512 * 1024);
        assert!(second.charge(1), "then take more");
        assert_eq!(budget.in_use(), 512 * 1024 + 1024);
    }

    #[tokio::test]
    async fn waiters_are_served_in_order() {
        let budget = ReadBudget::new(MIB);
        let mut hog = budget.reservation();
        assert!(hog.charge(MIB));
        let b = budget.clone();
        let big = tokio::spawn(async move { b.reserve(MIB).await });
        tokio::task::yield_now().await;
        // A small read that arrives later does not overtake the waiting big one.
        let mut small = budget.reservation();
        drop(hog);
        let big = tokio::time::timeout(std::time::Duration::from_secs(5), big)
            .await
            .expect("served")
            .expect("task")
            .expect("open");
        assert_eq!(big.held(), MIB);
        assert!(!small.charge(1));
    }
}
