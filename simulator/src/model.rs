//! The deterministic tenant: which message trace rows exist, derived from a seed and a rate.
//!
//! Time is cut into UTC hours. Hour `h` (hours since the Unix epoch) holds exactly
//! `messages_per_hour` messages; message `k` of that hour is received at
//! `h * 3600 s + k * spacing + jitter(h, k)` where `spacing = 3600 s / messages_per_hour` (in 100 ns
//! ticks, rounded down) and the jitter is smaller than the spacing. Message times are therefore
//! strictly increasing with `k`, have 100 ns precision, and the position of any time in the sequence
//! is known without generating anything. A message has 1..=`max_recipients` recipients, each one a
//! row; the rows of one message share its received time and its trace id.
//!
//! Rows are reported newest first: hours descending, messages descending, then recipients in
//! ascending index (the fixed tiebreak). A [`Position`] (hour, message, recipient) names one row of
//! that sequence, which is what makes paging cost O(page size).

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use serde_json::Value;

/// 100 ns ticks per second (the precision of Microsoft's timestamps).
pub const TICKS_PER_SEC: i64 = 10_000_000;
/// 100 ns ticks per hour.
pub const TICKS_PER_HOUR: i64 = 3600 * TICKS_PER_SEC;

/// The simulated tenant's mail flow: everything needed to regenerate every row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantModel {
    /// Seed of every derived value; two models with the same fields produce the same rows.
    pub seed: u64,
    /// Messages received in every UTC hour (0 = an empty tenant).
    pub messages_per_hour: u32,
    /// Upper bound of recipients per message (each recipient is one row); 0 is treated as 1.
    pub max_recipients: u32,
    /// The tenant's own mail domain (`contoso.com`): internal addresses and message ids use it.
    pub organization: String,
}

impl Default for TenantModel {
    /// Seed 42, 600 messages per hour, up to 3 recipients, `contoso.com`.
    fn default() -> Self {
        TenantModel {
            seed: 42,
            messages_per_hour: 600,
            max_recipients: 3,
            organization: "contoso.com".to_string(),
        }
    }
}

/// One simulated message trace row (one message × one recipient).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimRow {
    /// Message trace id (a GUID), one per message: shared by the rows of its recipients.
    pub trace_id: String,
    /// Internet message id, `<…@organization>`.
    pub message_id: String,
    /// When the message was received, UTC, whole 100 ns ticks.
    pub received: DateTime<Utc>,
    /// Sender address.
    pub sender: String,
    /// Recipient address; unique within a message, so (trace_id, recipient) identifies a row.
    pub recipient: String,
    /// Subject line.
    pub subject: String,
    /// Delivery status in RWS casing (`Delivered`, `FilteredAsSpam`…); Graph output lower-cases the
    /// first letter (`delivered`, `filteredAsSpam`).
    pub status: String,
    /// Connecting IP address (documentation ranges only).
    pub from_ip: String,
    /// Destination IP address; `None` for inbound and internal mail (RWS `null`, Graph `""`).
    pub to_ip: Option<String>,
    /// Message size in bytes (same for every recipient of a message).
    pub size: u64,
    /// The tenant's organization (`Organization` field of RWS rows).
    pub organization: String,
}

/// Late publishing and status changes, as Microsoft's message trace does.
///
/// Whether a row is late, its delay, and whether its status changes all derive from the model's
/// seed and the row's identity (trace id, recipient) only, never from the clock, so a test can
/// compute them (see [`TenantModel::late_delay_ms`], [`TenantModel::is_changing`],
/// [`TenantModel::row_visible_at`], [`TenantModel::status_at`],
/// [`TenantModel::expected_visible`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LateRows {
    /// Per mille of rows published late (0..=1000).
    pub late_per_mille: u32,
    /// A late row becomes visible `1..=max_delay_ms` after its received time (deterministic per row).
    pub max_delay_ms: u64,
    /// Per mille of rows whose status is "Pending"/"pending"/"GettingStatus" at first and changes to their final status.
    pub changing_per_mille: u32,
    /// The status changes this long after the received time.
    pub status_change_after_ms: u64,
}

impl LateRows {
    /// Longest delay of any row, in ticks (0 when no row can be late).
    fn max_delay_ticks(&self) -> i64 {
        if self.late_per_mille == 0 {
            0
        } else {
            ms_ticks(self.max_delay_ms)
        }
    }

    /// Milliseconds after which every row received at or before an instant is visible with its
    /// final status: `max(max_delay_ms, status_change_after_ms)`.
    pub fn settle_ms(&self) -> u64 {
        self.max_delay_ms.max(self.status_change_after_ms)
    }
}

/// Milliseconds as 100 ns ticks (saturating).
fn ms_ticks(ms: u64) -> i64 {
    i64::try_from(ms)
        .unwrap_or(i64::MAX)
        .saturating_mul(TICKS_PER_SEC / 1000)
}

/// Status shown by a changing row before its change (RWS casing; Graph `pending`).
const INTERIM_STATUS: &str = "Pending";
/// Final status of a changing row whose model status is itself transient.
const SETTLED_STATUS: &str = "Delivered";

/// A row's place in the newest-first sequence: hour since the epoch, message index within the
/// hour, recipient index within the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// Hours since 1970-01-01T00:00:00Z (floor).
    pub hour: i64,
    /// Message index in the hour, `0..messages_per_hour`, increasing with time.
    pub message: u32,
    /// Recipient index in the message, `0..recipients`.
    pub recipient: u32,
}

/// The derived properties of one message (shared by its rows).
#[derive(Clone, Debug)]
struct Message {
    hour: i64,
    index: u32,
    ticks: i64,
    hash: u64,
    recipients: u32,
    direction: Direction,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Inbound,
    Outbound,
    Internal,
}

/// splitmix64: the whole source of "randomness" (bijective finalizer over a golden-ratio step).
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The inverse of [`splitmix64`]: every step of it is a bijection of `u64` (an addition,
/// xor-shifts, multiplications by odd constants), undone in reverse order.
pub(crate) fn unsplitmix64(z: u64) -> u64 {
    /// The inverse of an odd `m` modulo 2^64 (Newton's iteration doubles the correct bits).
    const fn inverse(m: u64) -> u64 {
        let mut x = m;
        let mut i = 0;
        while i < 5 {
            x = x.wrapping_mul(2u64.wrapping_sub(m.wrapping_mul(x)));
            i += 1;
        }
        x
    }
    let mut z = z ^ (z >> 31) ^ (z >> 62);
    z = z.wrapping_mul(inverse(0x94D0_49BB_1331_11EB));
    z = z ^ (z >> 27) ^ (z >> 54);
    z = z.wrapping_mul(inverse(0xBF58_476D_1CE4_E5B9));
    z = z ^ (z >> 30) ^ (z >> 60);
    z.wrapping_sub(0x9E37_79B9_7F4A_7C15)
}

/// Hash of a seed and three values with a salt that separates the uses of one (h, k) pair.
fn hash4(seed: u64, salt: u64, a: u64, b: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(seed ^ splitmix64(salt)) ^ a) ^ b)
}

const SALT_MESSAGE: u64 = 1;
const SALT_JITTER: u64 = 2;
const SALT_ROW: u64 = 3;
const SALT_GUID: u64 = 4;
const SALT_LATE: u64 = 5;

const INTERNAL_USERS: &[&str] = &[
    "adele.vance",
    "alex.wilber",
    "diego.siciliani",
    "grady.archie",
    "henrietta.mueller",
    "isaiah.langer",
    "johanna.lorenz",
    "joni.sherman",
    "lee.gu",
    "lidia.holloway",
    "lynne.robbins",
    "megan.bowen",
    "miriam.graham",
    "nestor.wilke",
    "patti.fernandez",
    "pradeep.gupta",
    "christie.cline",
    "enrico.cattaneo",
    "irvin.sayers",
    "allan.deyoung",
];

const EXTERNAL_USERS: &[&str] = &[
    "noreply",
    "newsletter",
    "billing",
    "support",
    "jane.doe",
    "john.smith",
    "sales",
    "alerts",
    "m.garcia",
    "k.tanaka",
    "orders",
    "hr",
];

const EXTERNAL_DOMAINS: &[&str] = &[
    "fabrikam.com",
    "northwindtraders.com",
    "adventure-works.com",
    "tailspintoys.com",
    "wingtiptoys.com",
    "litwareinc.com",
    "example.net",
    "example.org",
];

const SUBJECTS: &[&str] = &[
    "Quarterly report",
    "Invoice",
    "Re: Project update",
    "Meeting request: planning",
    "Your order has shipped",
    "Weekly digest",
    "FW: Contract draft",
    "Password expiry notice",
    "Out of office",
    "Action required: review pending",
    "Daily report",
    "Lunch on Friday?",
    "Security alert",
    "Monthly newsletter",
    "Re: Re: budget figures",
    "Welcome aboard",
];

/// Status table: (status, weight out of 100).
const STATUSES: &[(&str, u64)] = &[
    ("Delivered", 80),
    ("FilteredAsSpam", 5),
    ("Failed", 4),
    ("Pending", 3),
    ("Quarantined", 3),
    ("GettingStatus", 2),
    ("Expanded", 3),
];

fn pick<'a>(list: &[&'a str], h: u64) -> &'a str {
    list[(h % list.len() as u64) as usize]
}

/// Whole 100 ns ticks since the epoch, rounded down.
pub fn ticks_floor(t: DateTime<Utc>) -> i64 {
    t.timestamp()
        .saturating_mul(TICKS_PER_SEC)
        .saturating_add(i64::from(t.timestamp_subsec_nanos() / 100))
}

/// Whole 100 ns ticks since the epoch, rounded up.
pub fn ticks_ceil(t: DateTime<Utc>) -> i64 {
    let extra = i64::from(t.timestamp_subsec_nanos() % 100).signum();
    ticks_floor(t).saturating_add(extra)
}

/// The instant `ticks` 100 ns ticks after the epoch (clamped to chrono's range).
pub fn from_ticks(ticks: i64) -> DateTime<Utc> {
    let secs = ticks.div_euclid(TICKS_PER_SEC);
    let nanos = (ticks.rem_euclid(TICKS_PER_SEC) * 100) as u32;
    Utc.timestamp_opt(secs, nanos)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `2022-09-05T18:10:13.4907658` (7 fractional digits, no zone: the RWS `Received` shape).
pub fn format_7(t: DateTime<Utc>) -> String {
    format!(
        "{}.{:07}",
        t.format("%Y-%m-%dT%H:%M:%S"),
        t.timestamp_subsec_nanos() / 100
    )
}

/// `2022-09-05T18:10:13.4907658Z` (7 fractional digits and `Z`: the Graph shape).
pub fn format_7z(t: DateTime<Utc>) -> String {
    format!("{}Z", format_7(t))
}

/// `2022-10-21T09:40:10Z` when the time is whole seconds, else 7 fractional digits and `Z`
/// (how RWS echoes the query window in `StartDate`/`EndDate`).
pub fn format_window(t: DateTime<Utc>) -> String {
    if t.timestamp_subsec_nanos() == 0 {
        t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        format_7z(t)
    }
}

/// `/Date(1658751973240)/` (milliseconds since the epoch: the verbose OData shape).
pub fn format_ms_date(t: DateTime<Utc>) -> String {
    format!("/Date({})/", t.timestamp_millis())
}

/// A GUID-shaped string from two 64-bit values.
pub(crate) fn guid(a: u64, b: u64) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

impl TenantModel {
    /// A model from its four parameters.
    pub fn new(
        seed: u64,
        messages_per_hour: u32,
        max_recipients: u32,
        organization: impl Into<String>,
    ) -> Self {
        TenantModel {
            seed,
            messages_per_hour,
            max_recipients,
            organization: organization.into(),
        }
    }

    /// Ticks between two consecutive messages of an hour (at least 1 when the rate is non-zero).
    fn spacing(&self) -> i64 {
        (TICKS_PER_HOUR / i64::from(self.messages_per_hour.max(1))).max(1)
    }

    /// Received time (ticks) of message `k` of hour `h`.
    fn message_ticks(&self, h: i64, k: u32) -> i64 {
        let spacing = self.spacing();
        let jitter = hash4(self.seed, SALT_JITTER, h as u64, u64::from(k)) % spacing as u64;
        h.saturating_mul(TICKS_PER_HOUR)
            .saturating_add(i64::from(k).saturating_mul(spacing))
            .saturating_add(jitter as i64)
    }

    fn message(&self, h: i64, k: u32) -> Message {
        let hash = hash4(self.seed, SALT_MESSAGE, h as u64, u64::from(k));
        let recipients = 1 + ((hash >> 8) % u64::from(self.max_recipients.max(1))) as u32;
        let direction = match hash % 10 {
            0..=4 => Direction::Inbound,
            5..=7 => Direction::Outbound,
            _ => Direction::Internal,
        };
        Message {
            hour: h,
            index: k,
            ticks: self.message_ticks(h, k),
            hash,
            recipients,
            direction,
        }
    }

    /// Number of recipients (rows) of message `k` of hour `h`.
    pub fn recipients_of(&self, h: i64, k: u32) -> u32 {
        self.message(h, k).recipients
    }

    /// Index of the newest message of hour `h` received at or before `t` (ticks), if any.
    fn last_message_le(&self, h: i64, t: i64) -> Option<u32> {
        let rate = self.messages_per_hour;
        if rate == 0 {
            return None;
        }
        let start = h.saturating_mul(TICKS_PER_HOUR);
        if t < start {
            return None;
        }
        let k = ((t - start) / self.spacing()).min(i64::from(rate - 1)) as u32;
        if self.message_ticks(h, k) <= t {
            Some(k)
        } else {
            k.checked_sub(1)
        }
    }

    /// Index of the oldest message of hour `h` received at or after `t` (ticks), if any.
    fn first_message_ge(&self, h: i64, t: i64) -> Option<u32> {
        let rate = self.messages_per_hour;
        if rate == 0 {
            return None;
        }
        let start = h.saturating_mul(TICKS_PER_HOUR);
        if t <= start {
            return Some(0);
        }
        let k = (t - start) / self.spacing();
        if k >= i64::from(rate) {
            return None;
        }
        let k = k as u32;
        if self.message_ticks(h, k) >= t {
            Some(k)
        } else if k + 1 < rate {
            Some(k + 1)
        } else {
            None
        }
    }

    /// Total rows of hour `h` (all its messages' recipients). O(messages_per_hour): cache it.
    pub fn hour_total(&self, h: i64) -> u64 {
        (0..self.messages_per_hour)
            .map(|k| u64::from(self.recipients_of(h, k)))
            .sum()
    }

    /// Rows of hour `h` whose time (ticks) is in `[lo, hi]`; uses `full` for a whole hour.
    fn hour_count(&self, h: i64, lo: i64, hi: i64, full: &mut dyn FnMut(i64) -> u64) -> u64 {
        let start = h.saturating_mul(TICKS_PER_HOUR);
        let end = start.saturating_add(TICKS_PER_HOUR - 1);
        if lo <= start && end <= hi {
            return full(h);
        }
        match (self.first_message_ge(h, lo), self.last_message_le(h, hi)) {
            (Some(a), Some(b)) if a <= b => {
                (a..=b).map(|k| u64::from(self.recipients_of(h, k))).sum()
            }
            _ => 0,
        }
    }

    /// Rows in the tick range `[lo, hi]`, summing whole hours through `full` (a cache).
    pub(crate) fn count_ticks(&self, lo: i64, hi: i64, full: &mut dyn FnMut(i64) -> u64) -> u64 {
        if lo > hi || self.messages_per_hour == 0 {
            return 0;
        }
        let (hl, hh) = (lo.div_euclid(TICKS_PER_HOUR), hi.div_euclid(TICKS_PER_HOUR));
        (hl..=hh).map(|h| self.hour_count(h, lo, hi, full)).sum()
    }

    /// Position of the first (newest) row in `[lo, hi]` ticks, if any.
    pub fn first_position(&self, lo: i64, hi: i64) -> Option<Position> {
        if lo > hi || self.messages_per_hour == 0 {
            return None;
        }
        let h = hi.div_euclid(TICKS_PER_HOUR);
        let pos = match self.last_message_le(h, hi) {
            Some(k) => Position {
                hour: h,
                message: k,
                recipient: 0,
            },
            None => Position {
                hour: h - 1,
                message: self.messages_per_hour - 1,
                recipient: 0,
            },
        };
        let t = self.message_ticks(pos.hour, pos.message);
        (t >= lo).then_some(pos)
    }

    /// Position of the row `offset` rows after the newest row of `[lo, hi]` ticks, if it exists.
    /// Costs O(hours + messages_per_hour) with `full` caching whole-hour totals.
    pub(crate) fn seek(
        &self,
        lo: i64,
        hi: i64,
        mut offset: u64,
        full: &mut dyn FnMut(i64) -> u64,
    ) -> Option<Position> {
        if lo > hi || self.messages_per_hour == 0 {
            return None;
        }
        let (hl, hh) = (lo.div_euclid(TICKS_PER_HOUR), hi.div_euclid(TICKS_PER_HOUR));
        let mut h = hh;
        while h >= hl {
            let n = self.hour_count(h, lo, hi, full);
            if offset < n {
                let (a, b) = (self.first_message_ge(h, lo)?, self.last_message_le(h, hi)?);
                let mut k = b;
                loop {
                    let r = u64::from(self.recipients_of(h, k));
                    if offset < r {
                        return Some(Position {
                            hour: h,
                            message: k,
                            recipient: offset as u32,
                        });
                    }
                    offset -= r;
                    if k == a {
                        return None;
                    }
                    k -= 1;
                }
            }
            offset -= n;
            h -= 1;
        }
        None
    }

    /// Whether `pos` names a row of this model (message and recipient indices in range).
    pub fn is_valid_position(&self, pos: Position) -> bool {
        pos.message < self.messages_per_hour
            && pos.recipient < self.recipients_of(pos.hour, pos.message)
    }

    /// Rows in the tick range `[lo, hi]` (both inclusive), newest first, starting at `from`
    /// (or at the newest row of the range when `None`).
    pub fn rows_ticks(&self, lo: i64, hi: i64, from: Option<Position>) -> SimRows {
        let pos = match from {
            Some(p) if lo <= hi && self.is_valid_position(p) => Some(p),
            Some(_) => None,
            None => self.first_position(lo, hi),
        };
        SimRows {
            model: self.clone(),
            lo,
            hi,
            pos,
            current: None,
            late: None,
            peeked: None,
        }
    }

    /// Rows whose received time t satisfies `start <= t <= end_inclusive` and `t <= now`, newest
    /// first (time descending, then recipient index ascending). Lazy: rows are generated as the
    /// iterator is consumed, so any window can be read a page at a time.
    pub fn rows(
        &self,
        start: DateTime<Utc>,
        end_inclusive: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> SimRows {
        let hi = ticks_floor(end_inclusive).min(ticks_floor(now));
        self.rows_ticks(ticks_ceil(start), hi, None)
    }

    /// Tick bounds of the half-open window `[start, end)` capped at `now`.
    pub(crate) fn half_open(
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> (i64, i64) {
        let hi = ticks_ceil(end).saturating_sub(1).min(ticks_floor(now));
        (ticks_ceil(start), hi)
    }

    /// The identities (trace_id, recipient) of rows in the half-open window `[start, end)` capped
    /// at `now`, newest first: what a collector must deliver exactly once.
    pub fn expected(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Vec<(String, String)> {
        let (lo, hi) = Self::half_open(start, end, now);
        self.rows_ticks(lo, hi, None)
            .map(|r| (r.trace_id, r.recipient))
            .collect()
    }

    /// Number of rows in the half-open window `[start, end)` capped at `now` (same set as
    /// [`TenantModel::expected`]), without generating them.
    pub fn count(&self, start: DateTime<Utc>, end: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
        let (lo, hi) = Self::half_open(start, end, now);
        self.count_ticks(lo, hi, &mut |h| self.hour_total(h))
    }

    /// Hash of a row's identity (trace id, recipient) under the seed: the source of everything
    /// [`LateRows`] decides per row.
    fn row_key(&self, row: &SimRow) -> u64 {
        fn fold(mut h: u64, s: &str) -> u64 {
            for chunk in s.as_bytes().chunks(8) {
                let mut w = [0u8; 8];
                w[..chunk.len()].copy_from_slice(chunk);
                h = splitmix64(h ^ u64::from_le_bytes(w));
            }
            splitmix64(h ^ s.len() as u64)
        }
        let h = hash4(self.seed, SALT_LATE, 0, 0);
        fold(fold(h, &row.trace_id), &row.recipient)
    }

    /// Delay of `row`'s publication after its received time in milliseconds: `1..=max_delay_ms`
    /// for a late row, 0 for a row published on time.
    pub fn late_delay_ms(&self, row: &SimRow, late: &LateRows) -> u64 {
        let key = self.row_key(row);
        if late.max_delay_ms == 0 || splitmix64(key ^ 1) % 1000 >= u64::from(late.late_per_mille) {
            return 0;
        }
        1 + splitmix64(key ^ 2) % late.max_delay_ms
    }

    /// Whether `row` shows `Pending` until `status_change_after_ms` after its received time.
    pub fn is_changing(&self, row: &SimRow, late: &LateRows) -> bool {
        splitmix64(self.row_key(row) ^ 3) % 1000 < u64::from(late.changing_per_mille)
    }

    /// `row`'s status once settled (RWS casing): a changing row whose model status is `Pending`
    /// or `GettingStatus` ends `Delivered`; any other row keeps its model status. `row` must carry
    /// its model status (as [`TenantModel::rows`] and [`TenantModel::row_at`] give it).
    pub fn final_status(&self, row: &SimRow, late: &LateRows) -> String {
        self.settled(row, self.is_changing(row, late)).to_string()
    }

    fn settled<'a>(&self, row: &'a SimRow, changing: bool) -> &'a str {
        match row.status.as_str() {
            "Pending" | "GettingStatus" if changing => SETTLED_STATUS,
            s => s,
        }
    }

    /// Whether `row` is served at `now`: `received + late_delay_ms(row) <= now` (100 ns ticks).
    pub fn row_visible_at(&self, row: &SimRow, now: DateTime<Utc>, late: &LateRows) -> bool {
        let delay = ms_ticks(self.late_delay_ms(row, late));
        ticks_floor(row.received).saturating_add(delay) <= ticks_floor(now)
    }

    /// `row`'s status at `now` (RWS casing): `Pending` while a changing row's
    /// `now < received + status_change_after_ms`, else [`TenantModel::final_status`].
    pub fn status_at(&self, row: &SimRow, now: DateTime<Utc>, late: &LateRows) -> String {
        let mut row = row.clone();
        self.apply_status(&mut row, ticks_floor(now), late);
        row.status
    }

    /// Sets `row.status` to its status at `now_t` ticks.
    fn apply_status(&self, row: &mut SimRow, now_t: i64, late: &LateRows) {
        if !self.is_changing(row, late) {
            return;
        }
        let change =
            ticks_floor(row.received).saturating_add(ms_ticks(late.status_change_after_ms));
        let status = if now_t < change {
            INTERIM_STATUS
        } else {
            self.settled(row, true)
        };
        if status != row.status {
            row.status = status.to_string();
        }
    }

    /// Whether `row` is visible at `now_t` ticks; if so, its status is set to the one at `now_t`.
    fn apply_late(&self, row: &mut SimRow, now_t: i64, late: &LateRows) -> bool {
        let delay = ms_ticks(self.late_delay_ms(row, late));
        if ticks_floor(row.received).saturating_add(delay) > now_t {
            return false;
        }
        self.apply_status(row, now_t, late);
        true
    }

    /// What the server serves at `now` for the half-open window `[start, end)` when `late` is
    /// configured: (trace_id, recipient, status in RWS casing) of the rows visible at `now`,
    /// newest first, each with its status at `now`.
    pub fn expected_visible(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        now: DateTime<Utc>,
        late: &LateRows,
    ) -> Vec<(String, String, String)> {
        let (lo, hi) = Self::half_open(start, end, now);
        self.rows_ticks(lo, hi, None)
            .visible_at(Some(*late), ticks_floor(now))
            .map(|r| (r.trace_id, r.recipient, r.status))
            .collect()
    }

    /// [`TenantModel::seek`] counting only the rows visible at `now_t` ticks (plain `seek` when
    /// `late` is `None`). Rows older than the longest delay are all visible, so only the newest
    /// `max_delay_ms` of the range is iterated; the rest uses `full` as `seek` does.
    pub(crate) fn seek_visible(
        &self,
        lo: i64,
        hi: i64,
        mut offset: u64,
        late: Option<&LateRows>,
        now_t: i64,
        full: &mut dyn FnMut(i64) -> u64,
    ) -> Option<Position> {
        let Some(late) = late else {
            return self.seek(lo, hi, offset, full);
        };
        let hi = hi.min(now_t);
        // Rows received at or before `sure` are visible whatever their delay.
        let sure = now_t.saturating_sub(late.max_delay_ticks());
        if hi > sure {
            let mut recent = self
                .rows_ticks(lo.max(sure.saturating_add(1)), hi, None)
                .visible_at(Some(*late), now_t);
            let want = usize::try_from(offset).unwrap_or(usize::MAX);
            let skipped = recent.by_ref().take(want).count();
            if skipped == want {
                if let Some(p) = recent.peek_position() {
                    return Some(p);
                }
            }
            offset -= skipped as u64;
        }
        self.seek(lo, hi.min(sure), offset, full)
    }

    /// The row of trace `trace_id` to `recipient` (compared case-insensitively), if the model
    /// has it: the trace id encodes the message's hour and index, so no row is generated but
    /// that message's.
    pub fn row_of(&self, trace_id: &str, recipient: &str) -> Option<SimRow> {
        let hex: String = trace_id.chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let unique = u64::from_str_radix(&hex[16..], 16).ok()?;
        let key = unsplitmix64(unique) ^ hash4(self.seed, SALT_GUID, 0, 0);
        let (hour, index) = ((key >> 32) as i64, key as u32);
        if index >= self.messages_per_hour {
            return None;
        }
        let m = self.message(hour, index);
        (0..m.recipients)
            .map(|r| self.build_row(&m, r))
            .find(|row| row.recipient.eq_ignore_ascii_case(recipient))
            .filter(|row| row.trace_id.eq_ignore_ascii_case(trace_id))
    }

    /// The row at `pos` (which must be valid, see [`TenantModel::is_valid_position`]).
    pub fn row_at(&self, pos: Position) -> SimRow {
        let m = self.message(pos.hour, pos.message);
        self.build_row(&m, pos.recipient)
    }

    fn internal_address(&self, i: u64) -> String {
        let n = INTERNAL_USERS.len() as u64;
        let name = INTERNAL_USERS[(i % n) as usize];
        match i / n {
            0 => format!("{name}@{}", self.organization),
            q => format!("{name}{q}@{}", self.organization),
        }
    }

    fn external_address(i: u64, domain_hash: u64) -> String {
        let n = EXTERNAL_USERS.len() as u64;
        let name = EXTERNAL_USERS[(i % n) as usize];
        let domain = pick(EXTERNAL_DOMAINS, domain_hash);
        match i / n {
            0 => format!("{name}@{domain}"),
            q => format!("{name}{q}@{domain}"),
        }
    }

    fn build_row(&self, m: &Message, r: u32) -> SimRow {
        let h = m.hash;
        let h2 = splitmix64(h);
        let h3 = splitmix64(h2);
        let row = hash4(self.seed, SALT_ROW, h, u64::from(r));
        let received = from_ticks(m.ticks);
        // The low half is a bijection of (hour, index): trace ids never collide within a seed.
        let unique = splitmix64(
            ((m.hour as u64) << 32 | u64::from(m.index)) ^ hash4(self.seed, SALT_GUID, 0, 0),
        );
        let trace_id = guid(h2, unique);
        let message_id = format!("<{}@{}>", guid(h3, splitmix64(h3)), self.organization);
        // Recipient local parts come from consecutive indices: distinct within a message.
        let (n_int, n_ext) = (INTERNAL_USERS.len() as u64, EXTERNAL_USERS.len() as u64);
        let (int_index, ext_index) = (
            (h >> 20) % n_int + u64::from(r),
            (h >> 20) % n_ext + u64::from(r),
        );
        let (sender, recipient, from_ip, to_ip) = match m.direction {
            Direction::Inbound => (
                Self::external_address((h >> 28) % n_ext, h >> 40),
                self.internal_address(int_index),
                format!("203.0.113.{}", 1 + (h2 >> 8) % 254),
                None,
            ),
            Direction::Outbound => (
                self.internal_address((h >> 28) % n_int),
                Self::external_address(ext_index, row >> 16),
                format!("198.51.100.{}", 1 + (h2 >> 8) % 254),
                Some(format!("203.0.113.{}", 1 + (row >> 8) % 254)),
            ),
            Direction::Internal => (
                self.internal_address((h >> 28) % n_int),
                self.internal_address(int_index),
                format!("198.51.100.{}", 1 + (h2 >> 8) % 254),
                None,
            ),
        };
        let subject = match (h3 >> 4) % 3 {
            0 => format!("{} #{}", pick(SUBJECTS, h3 >> 12), (h3 >> 24) % 100_000),
            _ => pick(SUBJECTS, h3 >> 12).to_string(),
        };
        let mut roll = row % 100;
        let mut status = STATUSES[0].0;
        for (s, w) in STATUSES {
            if roll < *w {
                status = s;
                break;
            }
            roll -= w;
        }
        SimRow {
            trace_id,
            message_id,
            received,
            sender,
            recipient,
            subject,
            status: status.to_string(),
            from_ip,
            to_ip,
            size: 2_000 + (h2 >> 20) % 250_000,
            organization: self.organization.clone(),
        }
    }
}

/// Lazy newest-first iterator over a model's rows in a tick range (see [`TenantModel::rows`]).
#[derive(Clone, Debug)]
pub struct SimRows {
    model: TenantModel,
    lo: i64,
    hi: i64,
    /// Candidate position of the next row (not yet checked against the range).
    pos: Option<Position>,
    current: Option<Message>,
    /// Late publishing evaluated at this instant (ticks): invisible rows are skipped and
    /// statuses are those at that instant. `None` = every row, model statuses.
    late: Option<(LateRows, i64)>,
    /// The row at `pos`, already built, found visible and given its status (late mode only).
    peeked: Option<SimRow>,
}

impl SimRows {
    /// Only the rows visible at `now_ticks` (100 ns ticks since the epoch) under `late`, with
    /// their statuses at that instant; positions of invisible rows are skipped (also by
    /// [`SimRows::peek_position`]). `None` leaves the iterator unchanged.
    pub fn visible_at(mut self, late: Option<LateRows>, now_ticks: i64) -> SimRows {
        self.late = late.map(|l| (l, now_ticks));
        self.peeked = None;
        self
    }

    /// Position of the next row this iterator would yield, or `None` when it is exhausted.
    pub fn peek_position(&mut self) -> Option<Position> {
        loop {
            let p = self.peek_in_range()?;
            let Some((late, now_t)) = self.late else {
                return Some(p);
            };
            if self.peeked.is_some() {
                return Some(p);
            }
            let m = self.message_at(p);
            let mut row = self.model.build_row(&m, p.recipient);
            let recipients = m.recipients;
            self.current = Some(m);
            if self.model.apply_late(&mut row, now_t, &late) {
                self.peeked = Some(row);
                return Some(p);
            }
            self.advance(p, recipients);
        }
    }

    /// The message of `p`, reusing the cached one when it matches.
    fn message_at(&mut self, p: Position) -> Message {
        match self.current.take() {
            Some(m) if m.hour == p.hour && m.index == p.message => m,
            _ => self.model.message(p.hour, p.message),
        }
    }

    /// Position of the next row in the tick range (visible or not).
    fn peek_in_range(&mut self) -> Option<Position> {
        loop {
            let p = self.pos?;
            if self.model.messages_per_hour == 0 || p.hour < self.lo.div_euclid(TICKS_PER_HOUR) {
                self.pos = None;
                return None;
            }
            let t = self.model.message_ticks(p.hour, p.message);
            if t > self.hi {
                // Only reachable from a foreign position: jump to the newest message in range.
                self.pos = match self.model.last_message_le(p.hour, self.hi) {
                    Some(k) if k < p.message => Some(Position {
                        hour: p.hour,
                        message: k,
                        recipient: 0,
                    }),
                    _ => self.model.first_position(
                        self.lo,
                        self.hi
                            .min(p.hour.saturating_mul(TICKS_PER_HOUR).saturating_sub(1)),
                    ),
                };
                continue;
            }
            if t < self.lo {
                self.pos = None;
                return None;
            }
            return Some(p);
        }
    }

    fn advance(&mut self, p: Position, recipients: u32) {
        self.pos = Some(if p.recipient + 1 < recipients {
            Position {
                recipient: p.recipient + 1,
                ..p
            }
        } else if p.message > 0 {
            Position {
                hour: p.hour,
                message: p.message - 1,
                recipient: 0,
            }
        } else {
            Position {
                hour: p.hour - 1,
                message: self.model.messages_per_hour.saturating_sub(1),
                recipient: 0,
            }
        });
    }
}

impl Iterator for SimRows {
    type Item = SimRow;

    fn next(&mut self) -> Option<SimRow> {
        let p = self.peek_position()?;
        let m = self.message_at(p);
        let row = match self.peeked.take() {
            Some(row) => row,
            None => self.model.build_row(&m, p.recipient),
        };
        self.advance(p, m.recipients);
        self.current = Some(m);
        Some(row)
    }
}

/// A Graph row as serialized (field order as Microsoft's).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GraphRow<'a> {
    id: &'a str,
    sender_address: &'a str,
    recipient_address: &'a str,
    message_id: &'a str,
    received_date_time: String,
    subject: &'a str,
    size: u64,
    #[serde(rename = "fromIP")]
    from_ip: &'a str,
    #[serde(rename = "toIP")]
    to_ip: &'a str,
    status: String,
}

/// The `__metadata` object of a verbose RWS row.
#[derive(Serialize)]
pub(crate) struct RwsMetadata {
    id: String,
    uri: String,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// An RWS row as serialized (JSON light, or verbose with `__metadata` and `/Date(ms)/` dates).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RwsRow<'a> {
    #[serde(rename = "__metadata", skip_serializing_if = "Option::is_none")]
    metadata: Option<RwsMetadata>,
    organization: &'a str,
    message_id: &'a str,
    received: String,
    sender_address: &'a str,
    recipient_address: &'a str,
    subject: &'a str,
    status: &'a str,
    #[serde(rename = "ToIP")]
    to_ip: Option<&'a str>,
    #[serde(rename = "FromIP")]
    from_ip: &'a str,
    size: u64,
    message_trace_id: &'a str,
    start_date: &'a str,
    end_date: &'a str,
    index: u64,
}

impl SimRow {
    /// The Graph row, borrowed, ready to serialize.
    pub(crate) fn graph_row(&self) -> GraphRow<'_> {
        GraphRow {
            id: &self.trace_id,
            sender_address: &self.sender,
            recipient_address: &self.recipient,
            message_id: &self.message_id,
            received_date_time: format_7z(self.received),
            subject: &self.subject,
            size: self.size,
            from_ip: &self.from_ip,
            to_ip: self.to_ip.as_deref().unwrap_or(""),
            status: graph_status(&self.status),
        }
    }

    /// The RWS JSON light row, borrowed; `start`/`end` are the already formatted window echoes.
    pub(crate) fn rws_row<'a>(&'a self, start: &'a str, end: &'a str, index: u64) -> RwsRow<'a> {
        RwsRow {
            metadata: None,
            organization: &self.organization,
            message_id: &self.message_id,
            received: format_7(self.received),
            sender_address: &self.sender,
            recipient_address: &self.recipient,
            subject: &self.subject,
            status: &self.status,
            to_ip: self.to_ip.as_deref(),
            from_ip: &self.from_ip,
            size: self.size,
            message_trace_id: &self.trace_id,
            start_date: start,
            end_date: end,
            index,
        }
    }

    /// The RWS verbose row, borrowed; `start`/`end` are already `/Date(ms)/` strings.
    pub(crate) fn rws_verbose_row<'a>(
        &'a self,
        start: &'a str,
        end: &'a str,
        index: u64,
        service_url: &str,
    ) -> RwsRow<'a> {
        let uri = format!("{service_url}({index})");
        RwsRow {
            metadata: Some(RwsMetadata {
                id: uri.clone(),
                uri,
                kind: "TenantReporting.MessageTrace",
            }),
            received: format_ms_date(self.received),
            ..self.rws_row(start, end, index)
        }
    }

    /// The Graph `messageTraces` shape (camelCase, `receivedDateTime` with 7 digits and `Z`,
    /// `toIP` `""` for inbound, status with a lower-case first letter).
    pub fn to_graph_json(&self) -> Value {
        serde_json::to_value(self.graph_row()).unwrap_or_default()
    }

    /// The RWS JSON light row (PascalCase, `Received` with 7 digits and no zone, `ToIP` null for
    /// inbound, the query window echoed in `StartDate`/`EndDate`, `Index` = row index in the query).
    pub fn to_rws_json(&self, start: DateTime<Utc>, end: DateTime<Utc>, index: u64) -> Value {
        let (start, end) = (format_window(start), format_window(end));
        serde_json::to_value(self.rws_row(&start, &end, index)).unwrap_or_default()
    }

    /// The RWS verbose row (`$format=json`): a `__metadata` object whose `id`/`uri` are
    /// `{service_url}({index})`, and `/Date(ms)/` dates. `service_url` is the absolute
    /// `…/Reporting.svc/MessageTrace` URL.
    pub fn to_rws_verbose_json(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        index: u64,
        service_url: &str,
    ) -> Value {
        let (start, end) = (format_ms_date(start), format_ms_date(end));
        serde_json::to_value(self.rws_verbose_row(&start, &end, index, service_url))
            .unwrap_or_default()
    }
}

/// `Delivered` → `delivered`, `FilteredAsSpam` → `filteredAsSpam` (Graph enum casing).
fn graph_status(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test time")
            .with_timezone(&Utc)
    }

    fn model() -> TenantModel {
        TenantModel::new(7, 120, 4, "contoso.com")
    }

    #[test]
    fn same_seed_same_rows_other_seed_other_rows() {
        let (s, e, now) = (
            t("2024-07-09T10:00:00Z"),
            t("2024-07-09T13:00:00Z"),
            t("2030-01-01T00:00:00Z"),
        );
        let a: Vec<SimRow> = model().rows(s, e, now).collect();
        let b: Vec<SimRow> = model().rows(s, e, now).collect();
        assert_eq!(a, b);
        assert!(!a.is_empty());
        let other = TenantModel { seed: 8, ..model() };
        let c: Vec<SimRow> = other.rows(s, e, now).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn rows_are_newest_first_with_a_total_order_and_unique_identities() {
        let m = model();
        let rows: Vec<SimRow> = m
            .rows(
                t("2024-07-09T10:17:00Z"),
                t("2024-07-09T14:03:00Z"),
                t("2030-01-01T00:00:00Z"),
            )
            .collect();
        for w in rows.windows(2) {
            assert!(w[0].received >= w[1].received, "not newest first");
            if w[0].received == w[1].received {
                assert_eq!(
                    w[0].trace_id, w[1].trace_id,
                    "equal times belong to one message"
                );
            }
        }
        let ids: HashSet<_> = rows.iter().map(|r| (&r.trace_id, &r.recipient)).collect();
        assert_eq!(ids.len(), rows.len(), "identities must be unique");
        let per_hour = rows
            .iter()
            .filter(|r| {
                r.received >= t("2024-07-09T11:00:00Z") && r.received < t("2024-07-09T12:00:00Z")
            })
            .map(|r| &r.trace_id)
            .collect::<HashSet<_>>();
        assert_eq!(
            per_hour.len(),
            120,
            "exactly messages_per_hour messages per hour"
        );
        assert!(rows
            .iter()
            .all(|r| r.received.timestamp_subsec_nanos() % 100 == 0));
    }

    #[test]
    fn count_matches_expected_for_many_windows() {
        let m = model();
        let now = t("2030-01-01T00:00:00Z");
        let base = t("2024-07-09T00:00:00Z");
        for (a, b) in [
            (0i64, 3600i64),
            (17, 3599),
            (1800, 9000),
            (3600, 3600),
            (5, 4 * 3600 + 7),
            (100, 50),
        ] {
            let s = base + chrono::Duration::seconds(a);
            let e = base + chrono::Duration::seconds(b);
            let exp = m.expected(s, e, now);
            assert_eq!(m.count(s, e, now), exp.len() as u64, "window {a}..{b}");
            let total: u64 =
                m.count_ticks(ticks_ceil(s), ticks_ceil(e) - 1, &mut |h| m.hour_total(h));
            assert_eq!(total, exp.len() as u64);
        }
        let s = base;
        let e = base + chrono::Duration::hours(2);
        assert_eq!(
            m.count(s, e, now),
            m.hour_total(ticks_floor(s) / TICKS_PER_HOUR)
                + m.hour_total(ticks_floor(s) / TICKS_PER_HOUR + 1)
        );
    }

    #[test]
    fn bounds_inclusive_for_rows_half_open_for_expected() {
        let m = model();
        let now = t("2030-01-01T00:00:00Z");
        let probe = m
            .rows(t("2024-07-09T10:00:00Z"), t("2024-07-09T10:30:00Z"), now)
            .nth(5)
            .expect("row");
        let at = probe.received;
        let at_rows: Vec<SimRow> = m.rows(at, at, now).collect();
        assert!(at_rows.contains(&probe), "rows() is inclusive on both ends");
        assert!(at_rows.iter().all(|r| r.received == at));
        let tick = chrono::Duration::nanoseconds(100);
        let id = (probe.trace_id.clone(), probe.recipient.clone());
        assert!(
            m.expected(at, at + tick, now).contains(&id),
            "start is inclusive"
        );
        assert!(
            !m.expected(at - tick, at, now).contains(&id),
            "end is exclusive"
        );
        assert!(m
            .expected(at - tick, at + chrono::Duration::nanoseconds(1), now)
            .contains(&id));
        assert!(!m
            .expected(at + chrono::Duration::nanoseconds(1), at + tick, now)
            .contains(&id));
    }

    #[test]
    fn nothing_after_now() {
        let m = model();
        let now = t("2024-07-09T10:20:00.5Z");
        let rows: Vec<SimRow> = m
            .rows(t("2024-07-09T09:00:00Z"), t("2024-07-09T12:00:00Z"), now)
            .collect();
        assert!(!rows.is_empty());
        assert!(rows.iter().all(|r| r.received <= now));
        assert_eq!(
            m.count(t("2024-07-09T09:00:00Z"), t("2024-07-09T12:00:00Z"), now),
            m.count(
                t("2024-07-09T09:00:00Z"),
                now + chrono::Duration::nanoseconds(100),
                now
            )
        );
        assert!(m
            .expected(
                now + chrono::Duration::seconds(1),
                now + chrono::Duration::hours(1),
                now
            )
            .is_empty());
    }

    #[test]
    fn seek_and_resume_agree_with_a_full_scan() {
        let m = model();
        let (lo, hi) = (
            ticks_floor(t("2024-07-09T10:17:00Z")),
            ticks_floor(t("2024-07-09T13:03:00Z")),
        );
        let all: Vec<SimRow> = m.rows_ticks(lo, hi, None).collect();
        for offset in [0usize, 1, 2, 77, 500, all.len() - 1] {
            let pos = m
                .seek(lo, hi, offset as u64, &mut |h| m.hour_total(h))
                .expect("in range");
            assert_eq!(m.row_at(pos), all[offset]);
            let rest: Vec<SimRow> = m.rows_ticks(lo, hi, Some(pos)).collect();
            assert_eq!(rest, all[offset..]);
        }
        assert_eq!(
            m.seek(lo, hi, all.len() as u64, &mut |h| m.hour_total(h)),
            None
        );
        let mut it = m.rows_ticks(lo, hi, None);
        let _ = it.by_ref().take(10).count();
        let p = it.peek_position().expect("more rows");
        assert_eq!(m.row_at(p), all[10]);
    }

    #[test]
    fn empty_rate_and_reversed_window_yield_nothing() {
        let now = t("2030-01-01T00:00:00Z");
        let empty = TenantModel {
            messages_per_hour: 0,
            ..model()
        };
        assert_eq!(
            empty
                .rows(t("2024-07-09T00:00:00Z"), t("2024-07-10T00:00:00Z"), now)
                .count(),
            0
        );
        assert_eq!(
            empty.count(t("2024-07-09T00:00:00Z"), t("2024-07-10T00:00:00Z"), now),
            0
        );
        assert_eq!(
            model()
                .rows(t("2024-07-10T00:00:00Z"), t("2024-07-09T00:00:00Z"), now)
                .count(),
            0
        );
    }

    #[test]
    fn large_window_is_lazy() {
        // 10 days at 5000 messages/hour: taking a page from the middle must not generate the rest.
        let m = TenantModel::new(1, 5000, 3, "contoso.com");
        let (lo, hi) = (
            ticks_floor(t("2024-07-01T00:00:00Z")),
            ticks_floor(t("2024-07-11T00:00:00Z")),
        );
        let started = std::time::Instant::now();
        let pos = m
            .seek(lo, hi, 1_000_000, &mut |h| m.hour_total(h))
            .expect("row");
        let page: Vec<SimRow> = m.rows_ticks(lo, hi, Some(pos)).take(5000).collect();
        assert_eq!(page.len(), 5000);
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn splitmix64_is_undone() {
        for x in [0, 1, 42, u64::MAX, 0x9E37_79B9_7F4A_7C15, 1 << 63] {
            assert_eq!(unsplitmix64(splitmix64(x)), x);
            assert_eq!(splitmix64(unsplitmix64(x)), x);
        }
    }

    #[test]
    fn a_row_is_found_by_its_trace_id_and_recipient() {
        let m = model();
        let rows: Vec<SimRow> = m
            .rows(
                t("2024-07-09T10:00:00Z"),
                t("2024-07-09T12:00:00Z"),
                t("2030-01-01T00:00:00Z"),
            )
            .collect();
        for row in &rows {
            assert_eq!(m.row_of(&row.trace_id, &row.recipient).as_ref(), Some(row));
            assert_eq!(
                m.row_of(&row.trace_id.to_uppercase(), &row.recipient.to_uppercase())
                    .as_ref(),
                Some(row)
            );
        }
        let r = &rows[0];
        assert_eq!(m.row_of(&r.trace_id, "nobody@contoso.com"), None);
        assert_eq!(m.row_of("not-a-guid", &r.recipient), None);
        let mut other = r.trace_id.clone();
        other.replace_range(0..1, if other.starts_with('0') { "1" } else { "0" });
        assert_eq!(m.row_of(&other, &r.recipient), None, "another GUID");
        let other_seed = TenantModel { seed: 8, ..model() };
        assert_eq!(other_seed.row_of(&r.trace_id, &r.recipient), None);
    }

    #[test]
    fn json_shapes_follow_the_fixtures() {
        let row = model()
            .rows(
                t("2024-07-09T10:00:00Z"),
                t("2024-07-09T11:00:00Z"),
                t("2030-01-01T00:00:00Z"),
            )
            .find(|r| r.to_ip.is_none())
            .expect("an inbound row");
        let g = row.to_graph_json();
        let keys: Vec<&str> = g
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        for k in [
            "id",
            "senderAddress",
            "recipientAddress",
            "messageId",
            "receivedDateTime",
            "subject",
            "size",
            "fromIP",
            "toIP",
            "status",
        ] {
            assert!(keys.contains(&k), "graph key {k}");
        }
        assert_eq!(g["toIP"], "");
        let received = g["receivedDateTime"].as_str().expect("string");
        assert_eq!(received.len(), "2024-07-09T10:00:00.1234567Z".len());
        assert!(received.ends_with('Z'));
        let s = t("2024-07-09T10:00:00Z");
        let r = row.to_rws_json(s, t("2024-07-09T11:00:00.5Z"), 3);
        assert_eq!(r["ToIP"], Value::Null);
        assert_eq!(r["Index"], 3);
        assert_eq!(r["StartDate"], "2024-07-09T10:00:00Z");
        assert_eq!(r["EndDate"], "2024-07-09T11:00:00.5000000Z");
        assert_eq!(
            r["Received"].as_str().expect("string").len(),
            "2022-09-05T18:10:13.4907658".len()
        );
        assert_eq!(r["Organization"], "contoso.com");
        let v = row.to_rws_verbose_json(
            s,
            s,
            0,
            "http://h/ecp/ReportingWebService/Reporting.svc/MessageTrace",
        );
        assert_eq!(v["__metadata"]["type"], "TenantReporting.MessageTrace");
        assert_eq!(v["StartDate"], format!("/Date({})/", s.timestamp_millis()));
        assert!(row.message_id.starts_with('<') && row.message_id.ends_with("@contoso.com>"));
    }
}
