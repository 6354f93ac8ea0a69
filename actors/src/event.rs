//! Events: one per API row, with the metadata that travels with it.

use crate::dialect::Row;
use std::sync::Arc;

/// Internal fields that travel with an event to hooks and sinks (Cribl's `__inputId`,
/// `__source`, `__final`, `__isBroken`); not written by the built-in sinks.
#[derive(Clone, Debug, PartialEq)]
pub struct EventMeta {
    /// The source (input) id.
    pub input_id: Arc<str>,
    /// The API URL the row came from (without query).
    pub source: Arc<str>,
    /// Whether this is the last event of its window.
    pub is_final: bool,
    /// Whether the row could not be fully understood (no parsable time or identity).
    pub is_broken: bool,
}

/// One event: the API row with its original field names, plus `_time` and static fields.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The fields written by sinks.
    pub fields: Row,
    /// Metadata for hooks and sinks.
    pub meta: EventMeta,
}

impl Event {
    /// An event of these fields from `input_id`'s `source`, neither final nor broken (a hook that
    /// adds events may start from it).
    pub fn new(fields: Row, input_id: Arc<str>, source: Arc<str>) -> Event {
        Event {
            fields,
            meta: EventMeta {
                input_id,
                source,
                is_final: false,
                is_broken: false,
            },
        }
    }

    /// Appends the event as one JSON line (with `\n`).
    pub fn write_ndjson(&self, out: &mut Vec<u8>) {
        // A Map of Values always serializes.
        serde_json::to_writer(&mut *out, &self.fields).expect("event serializes");
        out.push(b'\n');
    }
}

/// What identifies a page across a crash: a page delivered again after a kill (its checkpoint was
/// not written) has the same key, so a sink that names what it writes by the key (the
/// `object_store` sink) overwrites instead of adding a copy.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PageKey {
    /// The cursor the page's commit advances: the source id, or a backfill's
    /// `backfill/<source>/<start>-<end>`.
    pub cursor: String,
    /// The URL the page was asked for: the slice's first page (built from its bounds), or the next
    /// link the page before it gave (the one the checkpoint keeps, so a restart asks for it again).
    pub url: String,
    /// A re-read: the same URL as the page read before, but only the rows that are new or changed
    /// since, so the URL alone does not tell it from that page (nor from a later re-read of it).
    pub reread: bool,
}

/// The events of one page, shared by every sink without copying.
#[derive(Clone, Debug)]
pub struct Batch {
    /// The source id.
    pub source: Arc<str>,
    /// Which page this is ([`PageKey`]); `None` in a batch made elsewhere ([`Batch::new`]).
    pub page: Option<Arc<PageKey>>,
    /// The events. Empty when every sink of the source takes NDJSON only
    /// ([`SinkInput::Ndjson`](crate::sink::SinkInput::Ndjson)): the events were then encoded into
    /// [`encoded`](Batch::encoded) and freed on the thread that parsed the page.
    pub events: Arc<Vec<Event>>,
    /// The events as NDJSON, encoded once on the thread that parsed the page when a sink of the
    /// source takes NDJSON; `None` in a batch made elsewhere ([`Batch::new`]).
    /// [`Batch::ndjson`] reads it, or encodes the events when it is `None`.
    pub encoded: Option<Arc<Ndjson>>,
    /// Whether the sink makes this batch durable before it acknowledges it (`true`, as every
    /// [`Batch::new`]), or may leave that to a later batch of the same source or to
    /// [`Sink::flush`](crate::sink::Sink::flush) (`false`). The fetcher sets `false` on a page
    /// whose next page is already in, and commits no checkpoint covering it before a synced
    /// batch or a flush: pages that arrive back to back share one `fsync` of a file sink. A sink
    /// whose every acknowledgement is durable anyway (HTTP, object stores) ignores it.
    pub sync: bool,
}

impl Batch {
    /// A batch of these events (not yet encoded).
    pub fn new(source: Arc<str>, events: Vec<Event>) -> Batch {
        Batch {
            source,
            page: None,
            events: Arc::new(events),
            encoded: None,
            sync: true,
        }
    }

    /// All events as NDJSON.
    pub fn to_ndjson(&self) -> Vec<u8> {
        match &self.encoded {
            Some(bytes) => bytes.to_vec(),
            None => {
                let mut out = Vec::with_capacity(self.events.len() * 512);
                self.ndjson(&mut out);
                out
            }
        }
    }

    /// The events as NDJSON: the bytes encoded where the page was parsed, or else the events
    /// encoded into `buf` (its contents replaced). A sink that keeps `buf` from page to page
    /// reuses its memory: no multi-megabyte allocation (and page faults) per page.
    pub fn ndjson<'a>(&'a self, buf: &'a mut Vec<u8>) -> &'a [u8] {
        match &self.encoded {
            Some(bytes) => bytes,
            None => {
                buf.clear();
                for e in self.events.iter() {
                    e.write_ndjson(buf);
                }
                buf
            }
        }
    }
}

/// A page's events as NDJSON lines, in a buffer taken from [`crate::buffers`] and given back
/// when dropped.
pub struct Ndjson(Vec<u8>);

impl Ndjson {
    /// NDJSON lines written elsewhere, in a buffer from [`crate::buffers`].
    pub fn from_buffer(lines: Vec<u8>) -> Ndjson {
        Ndjson(lines)
    }

    /// Encodes `events`, one JSON line each, into a buffer from the pool.
    pub fn encode(events: &[Event]) -> Ndjson {
        let mut buf = crate::buffers::take(0);
        for e in events {
            e.write_ndjson(&mut buf);
        }
        Ndjson(buf)
    }
}

impl std::ops::Deref for Ndjson {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Ndjson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ndjson({} bytes)", self.0.len())
    }
}

impl Drop for Ndjson {
    fn drop(&mut self) {
        crate::buffers::give(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u64) -> Event {
        let mut fields = serde_json::Map::new();
        fields.insert("n".into(), n.into());
        Event::new(fields, Arc::from("s"), Arc::from("u"))
    }

    #[test]
    fn encoded_and_unencoded_batches_read_the_same() {
        let events: Vec<Event> = (0..3).map(event).collect();
        let plain = Batch::new(Arc::from("s"), events.clone());
        let mut buf = b"left over".to_vec();
        assert_eq!(plain.ndjson(&mut buf), b"{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n");
        let encoded = Batch {
            encoded: Some(Arc::new(Ndjson::encode(&events))),
            events: Arc::new(Vec::new()),
            ..plain.clone()
        };
        assert_eq!(encoded.ndjson(&mut Vec::new()), plain.to_ndjson());
    }

    #[test]
    fn a_buffer_taken_after_one_was_dropped_starts_empty() {
        let one = Ndjson::encode(&[event(1)]);
        drop(one);
        // Another test may take it first; either way a buffer starts empty.
        let two = Ndjson::encode(&[event(2)]);
        assert_eq!(&*two, b"{\"n\":2}\n");
    }
}
