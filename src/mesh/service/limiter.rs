//! Rate limits: fixed one-minute windows per (limit, client address), in memory per pod
//! (the Python NA's default is in memory too).

use std::collections::HashMap;
use std::sync::Mutex;

use time::OffsetDateTime;

/// (limit name, client) → (minute, requests in it).
type Windows = HashMap<(&'static str, String), (i64, u32)>;

#[derive(Default)]
pub(super) struct Limiter {
    windows: Mutex<Windows>,
}

impl Limiter {
    fn minute() -> i64 {
        OffsetDateTime::now_utc().unix_timestamp() / 60
    }

    /// Requests counted for `who` under `bucket` this minute.
    pub fn count(&self, bucket: &'static str, who: &str) -> u32 {
        let w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        match w.get(&(bucket, who.to_string())) {
            Some((m, n)) if *m == Self::minute() => *n,
            _ => 0,
        }
    }

    /// Counts one; the count this minute.
    pub fn add(&self, bucket: &'static str, who: &str) -> u32 {
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let minute = Self::minute();
        if w.len() > 100_000 {
            w.retain(|_, (m, _)| *m == minute);
        }
        let e = w.entry((bucket, who.to_string())).or_insert((minute, 0));
        if e.0 != minute {
            *e = (minute, 0);
        }
        e.1 += 1;
        e.1
    }

    /// Counts a request; `false` once `limit` is passed this minute.
    pub fn allow(&self, bucket: &'static str, who: &str, limit: u32) -> bool {
        self.add(bucket, who) <= limit
    }
}
