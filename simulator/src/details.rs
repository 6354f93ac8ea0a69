//! The route of a simulated message to one recipient, as Graph's `getDetailsByRecipient` answers
//! it: Receive, Submit, then what the row's status says (Deliver, Fail, Quarantine, Spam,
//! Expand; Defer while pending). Deterministic from the row (and, for a row whose status
//! changes, from the time asked): a test computes the records a collector must deliver with
//! [`TenantModel::details`] and [`TenantModel::expected_details`].
//!
//! Times: Receive at the received time, Submit 10 to 99 ms after it, the last event 100 to
//! 999 ms after it. A row whose status changes ([`LateRows`]) shows Receive, Submit and Defer
//! (10 to 99 ms after Submit) while it is pending, and its final event too from the change on,
//! at the change's time: a detail request after the change answers the earlier records again,
//! plus the new one.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::model::{format_7z, splitmix64, LateRows, SimRow, TenantModel};

/// One detail record of a simulated row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimDetail {
    /// The trace id (every record of a trace carries it, as in Microsoft's sample).
    pub trace_id: String,
    /// The recipient the records were asked for (not a field of the record: the collector adds
    /// it from the summary row).
    pub recipient: String,
    /// The message id.
    pub message_id: String,
    /// When it happened.
    pub date_time: DateTime<Utc>,
    /// `Receive`, `Submit`, `Defer`, `Deliver`, `Fail`, `Quarantine`, `Spam` or `Expand`.
    pub event: &'static str,
    /// What a rule or filter did (empty for most events).
    pub action: &'static str,
    /// One line about the event.
    pub description: String,
    /// The event's XML data.
    pub data: String,
}

/// A detail record as Graph serializes it (field order as Microsoft's sample).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GraphDetail<'a> {
    id: &'a str,
    message_id: &'a str,
    date_time: String,
    event: &'a str,
    action: &'a str,
    description: &'a str,
    data: &'a str,
}

impl SimDetail {
    /// The record as Graph serializes it, borrowed.
    pub(crate) fn graph_detail(&self) -> GraphDetail<'_> {
        GraphDetail {
            id: &self.trace_id,
            message_id: &self.message_id,
            date_time: format_7z(self.date_time),
            event: self.event,
            action: self.action,
            description: &self.description,
            data: &self.data,
        }
    }

    /// The record's JSON (`id`, `messageId`, `dateTime` with 7 digits and `Z`, `event`,
    /// `action`, `description`, `data`).
    pub fn to_graph_json(&self) -> serde_json::Value {
        serde_json::to_value(self.graph_detail()).unwrap_or_default()
    }

    /// What identifies the record: (trace id, recipient, `dateTime` as served, event).
    pub fn identity(&self) -> (String, String, String, String) {
        (
            self.trace_id.clone(),
            self.recipient.clone(),
            format_7z(self.date_time),
            self.event.to_owned(),
        )
    }
}

/// The last event of a route to a row in this status (RWS casing): (event, action,
/// description). `None`: the route ends with Submit (the status is still being found out).
fn final_event(status: &str) -> Option<(&'static str, &'static str, &'static str)> {
    Some(match status {
        "Delivered" => ("Deliver", "", "The message was successfully delivered."),
        "Expanded" => (
            "Expand",
            "",
            "The distribution group was expanded to its members.",
        ),
        "Failed" => (
            "Fail",
            "",
            "Reason: [{LED=550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup}]",
        ),
        "Quarantined" => (
            "Quarantine",
            "Quarantine",
            "The message was quarantined by the anti-phishing policy.",
        ),
        "FilteredAsSpam" => (
            "Spam",
            "MoveToJmf",
            "The message was marked as spam and moved to the Junk Email folder.",
        ),
        "Pending" => (
            "Defer",
            "",
            "The message was deferred: 451 4.4.0 DNS query failed. The server will retry.",
        ),
        _ => return None,
    })
}

impl TenantModel {
    /// The detail records Graph answers for `row` at `now`, oldest first. Without `late` the
    /// row's status is its model status; with it, its status at `now`
    /// ([`TenantModel::status_at`]).
    pub fn details(
        &self,
        row: &SimRow,
        now: DateTime<Utc>,
        late: Option<&LateRows>,
    ) -> Vec<SimDetail> {
        let h = splitmix64(row.size ^ splitmix64(row.received.timestamp_micros() as u64));
        let ms = |n: u64| Duration::milliseconds(n as i64);
        let received = row.received;
        let submit = received + ms(10 + h % 90);
        let record = |at, (event, action, description): (&'static str, &'static str, &str)| {
            SimDetail {
                trace_id: row.trace_id.clone(),
                recipient: row.recipient.clone(),
                message_id: row.message_id.clone(),
                date_time: at,
                event,
                action,
                description: description.to_owned(),
                data: format!(
                    "<root><MEP Name=\"Event\" String=\"{event}\" /><MEP Name=\"Recipient\" String=\"{}\" /></root>",
                    row.recipient
                ),
            }
        };
        let mut out = vec![
            record(
                received,
                (
                    "Receive",
                    "",
                    &format!("Message received by: {}", server_name(h)),
                ),
            ),
            record(
                submit,
                (
                    "Submit",
                    "",
                    "The message was submitted to the Microsoft 365 transport.",
                ),
            ),
        ];
        match late.filter(|l| self.is_changing(row, l)) {
            Some(late) => {
                let defer = submit + ms(10 + (h >> 8) % 90);
                out.extend(final_event("Pending").map(|e| record(defer, e)));
                let status = self.status_at(row, now, late);
                if status != "Pending" {
                    let change = (received + ms(late.status_change_after_ms)).max(defer + ms(1));
                    out.extend(final_event(&status).map(|e| record(change, e)));
                }
            }
            None => {
                let last = received + ms(100 + (h >> 16) % 900);
                out.extend(final_event(&row.status).map(|e| record(last, e)));
            }
        }
        out
    }

    /// The detail records of every row of the half-open window `[start, end)` capped at `now`
    /// whose status (at `now`) passes `wants`, as [`TenantModel::details`] gives them at `now`:
    /// what a collector with `details` on must deliver, each once.
    pub fn expected_details(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        now: DateTime<Utc>,
        late: Option<&LateRows>,
        wants: impl Fn(&str) -> bool,
    ) -> Vec<SimDetail> {
        let (lo, hi) = Self::half_open(start, end, now);
        self.rows_ticks(lo, hi, None)
            .filter(|r| late.is_none_or(|l| self.row_visible_at(r, now, l)))
            .filter(|r| {
                let status = match late {
                    Some(l) => self.status_at(r, now, l),
                    None => r.status.clone(),
                };
                wants(&status)
            })
            .flat_map(|r| self.details(&r, now, late))
            .collect()
    }
}

/// A plausible Exchange Online server name.
fn server_name(h: u64) -> String {
    format!(
        "MN{}PR{:02}MB{:04}.namprd{:02}.prod.outlook.com",
        2 + h % 7,
        (h >> 4) % 20,
        (h >> 12) % 10_000,
        (h >> 28) % 20
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn model() -> TenantModel {
        TenantModel::new(7, 200, 3, "contoso.com")
    }

    fn rows() -> Vec<SimRow> {
        model()
            .rows(
                t("2024-07-09T10:00:00Z"),
                t("2024-07-09T12:00:00Z"),
                t("2030-01-01T00:00:00Z"),
            )
            .collect()
    }

    #[test]
    fn each_status_has_its_route_after_the_received_time() {
        let now = t("2030-01-01T00:00:00Z");
        let mut seen = std::collections::HashSet::new();
        for row in rows() {
            let d = model().details(&row, now, None);
            let events: Vec<&str> = d.iter().map(|r| r.event).collect();
            let tail: &[&str] = match row.status.as_str() {
                "Delivered" => &["Deliver"],
                "Expanded" => &["Expand"],
                "Failed" => &["Fail"],
                "Quarantined" => &["Quarantine"],
                "FilteredAsSpam" => &["Spam"],
                "Pending" => &["Defer"],
                "GettingStatus" => &[],
                other => panic!("status {other}"),
            };
            assert_eq!(&events[..2], ["Receive", "Submit"]);
            assert_eq!(&events[2..], tail, "{}", row.status);
            assert_eq!(d[0].date_time, row.received);
            for w in d.windows(2) {
                assert!(w[0].date_time < w[1].date_time, "{d:?}");
            }
            assert!(d.iter().all(|r| r.trace_id == row.trace_id
                && r.recipient == row.recipient
                && r.message_id == row.message_id));
            assert_eq!(d, model().details(&row, now, None), "deterministic");
            seen.insert(row.status.clone());
        }
        assert_eq!(seen.len(), 7, "every status met: {seen:?}");
    }

    #[test]
    fn a_changing_row_answers_its_earlier_records_again_plus_the_new_one() {
        let late = LateRows {
            late_per_mille: 0,
            max_delay_ms: 0,
            changing_per_mille: 1000,
            status_change_after_ms: 60_000,
        };
        let m = model();
        let row = rows()
            .into_iter()
            .find(|r| r.status == "Failed")
            .expect("a failed row");
        let before = m.details(&row, row.received + Duration::seconds(30), Some(&late));
        let after = m.details(&row, row.received + Duration::seconds(61), Some(&late));
        let events = |d: &[SimDetail]| d.iter().map(|r| r.event).collect::<Vec<_>>();
        assert_eq!(events(&before), ["Receive", "Submit", "Defer"]);
        assert_eq!(events(&after), ["Receive", "Submit", "Defer", "Fail"]);
        assert_eq!(after[..3], before[..]);
        assert_eq!(after[3].date_time, row.received + Duration::seconds(60));
    }

    #[test]
    fn expected_details_are_those_of_the_wanted_rows_of_the_window() {
        let m = model();
        let (s, e, now) = (
            t("2024-07-09T10:00:00Z"),
            t("2024-07-09T11:00:00Z"),
            t("2030-01-01T00:00:00Z"),
        );
        let failed = m.expected_details(s, e, now, None, |st| st == "Failed");
        assert!(!failed.is_empty());
        assert!(failed.iter().all(|d| d.date_time >= s));
        let rows: Vec<SimRow> = m.rows(s, e, now).filter(|r| r.received < e).collect();
        let n = rows.iter().filter(|r| r.status == "Failed").count();
        assert_eq!(failed.len(), 3 * n, "Receive, Submit, Fail each");
        let all = m.expected_details(s, e, now, None, |_| true);
        let ids: std::collections::HashSet<_> = all.iter().map(SimDetail::identity).collect();
        assert_eq!(ids.len(), all.len(), "identities are unique");
        let json = all[0].to_graph_json();
        for k in [
            "id",
            "messageId",
            "dateTime",
            "event",
            "action",
            "description",
            "data",
        ] {
            assert!(json.get(k).is_some(), "{k}");
        }
        assert!(json.get("recipientAddress").is_none());
    }
}
