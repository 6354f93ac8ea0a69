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
    /// Appends the event as one JSON line (with `\n`).
    pub fn write_ndjson(&self, out: &mut Vec<u8>) {
        // A Map of Values always serializes.
        serde_json::to_writer(&mut *out, &self.fields).expect("event serializes");
        out.push(b'\n');
    }
}

/// The events of one page, shared by every sink without copying.
#[derive(Clone, Debug)]
pub struct Batch {
    /// The source id.
    pub source: Arc<str>,
    /// The events.
    pub events: Arc<Vec<Event>>,
}

impl Batch {
    /// All events as NDJSON.
    pub fn to_ndjson(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.events.len() * 512);
        self.write_ndjson(&mut out);
        out
    }

    /// Replaces the contents of `out` with all events as NDJSON. A sink that keeps `out` from
    /// page to page reuses its memory: no multi-megabyte allocation (and page faults) per page.
    pub fn write_ndjson(&self, out: &mut Vec<u8>) {
        out.clear();
        for e in self.events.iter() {
            e.write_ndjson(out);
        }
    }
}
