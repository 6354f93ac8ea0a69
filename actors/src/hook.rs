//! Pipeline hooks: functions that see every page's events, with their metadata
//! ([`EventMeta`](crate::event::EventMeta): `__inputId`, `__source`, `__final`, `__isBroken`),
//! right before the sinks, and may change, drop or add events (Cribl's pre-processing pipeline).
//!
//! Hooks run in the order given, once per page fetched, and only for pages with events, on the
//! thread of the blocking pool that parsed the page, as soon as it is parsed (pages are fetched
//! ahead, so possibly before the pages before it are delivered, and two pages at once). A page
//! fetched again (after a crash, a re-query, or pages ahead dropped while a sink refused one) is
//! seen again: a hook should transform, not count delivered rows. The page is acknowledged (and
//! the checkpoint moves) once the sinks have what the hooks left; an empty result is acknowledged
//! at once. A hook that panics fails the delivery of that page
//! like a failed sink: nothing is acknowledged, and the page is delivered again by a later run.
//!
//! # Examples
//!
//! ```
//! use msgtrace_actors::hook::{self, Hook};
//! use std::sync::Arc;
//!
//! // Drop events of rows that could not be understood, tag the others.
//! let tag: Hook = Arc::new(|events| {
//!     events.retain(|e| !e.meta.is_broken);
//!     for e in events.iter_mut() {
//!         e.fields.insert("pipeline".into(), "mail".into());
//!     }
//! });
//! let mut events = Vec::new();
//! hook::apply(&[tag], &mut events).unwrap();
//! ```

use crate::event::Event;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// A pipeline hook: sees a page's events and edits the list in place.
pub type Hook = Arc<dyn Fn(&mut Vec<Event>) + Send + Sync>;

/// A hook panicked: which one (counted from 1) and with what message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("pipeline hook {hook} panicked ({message}); the page was not delivered")]
pub struct HookPanicked {
    /// The hook's place in the list, from 1.
    pub hook: usize,
    /// What it panicked with.
    pub message: String,
}

/// Runs `hooks` in order over `events`. A panic in a hook is caught and returned as an error
/// (the page is then not delivered, so not acknowledged).
pub fn apply(hooks: &[Hook], events: &mut Vec<Event>) -> Result<(), HookPanicked> {
    for (i, hook) in hooks.iter().enumerate() {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| hook(events))) {
            return Err(HookPanicked {
                hook: i + 1,
                message: panic_message(&*panic),
            });
        }
    }
    Ok(())
}

/// The message a panic was raised with ("no message" when it is not a string).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: i64) -> Event {
        let mut fields = serde_json::Map::new();
        fields.insert("n".into(), n.into());
        let mut e = Event::new(fields, Arc::from("a"), Arc::from("u"));
        e.meta.is_broken = n == 2;
        e
    }

    #[test]
    fn hooks_run_in_order_and_may_drop_or_add() {
        let drop_broken: Hook = Arc::new(|e| e.retain(|e| !e.meta.is_broken));
        let add: Hook = Arc::new(|e| {
            let len = e.len() as i64;
            e.push(ev(100 + len))
        });
        let mut events = vec![ev(1), ev(2), ev(3)];
        apply(&[drop_broken, add], &mut events).unwrap();
        let ns: Vec<i64> = events
            .iter()
            .map(|e| e.fields["n"].as_i64().unwrap())
            .collect();
        assert_eq!(ns, vec![1, 3, 102]);
    }

    #[test]
    fn a_panicking_hook_is_an_error() {
        let bad: Hook = Arc::new(|_| panic!("boom"));
        let err = apply(&[bad], &mut vec![ev(1)]).unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        assert_eq!(err.hook, 1);
    }
}
