//! The values stored in sled, each wrapped in a versioned envelope.
//!
//! Stored form: `{"version":"1", ...fields}` (serde's internally tagged enum, as vector's
//! checkpointer does). A future layout adds a `V2` variant and an upgrade from `V1`; old state
//! directories stay readable.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where a source (or a backfill) stands: the commit point of every page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// End (exclusive) of the last window that was delivered completely. `None` before the first
    /// window completes: the next run starts at the configured `start`.
    pub cursor: Option<DateTime<Utc>>,
    /// The slice being collected, when a run stopped in the middle of one: the next run resumes
    /// it from `next_link` instead of starting it over.
    pub in_flight: Option<InFlight>,
    /// Pages delivered over the life of this cursor.
    pub pages_total: u64,
    /// Rows delivered over the life of this cursor.
    pub rows_total: u64,
    /// When this checkpoint was written.
    pub updated_at: DateTime<Utc>,
    /// Start of the very first window of this cursor: re-reads never go before it.
    #[serde(default)]
    pub origin: Option<DateTime<Utc>>,
}

/// A slice whose pages are partly delivered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// The job that started the slice.
    pub job_id: String,
    /// Slice start (inclusive).
    pub slice_start: DateTime<Utc>,
    /// Slice end (exclusive).
    pub slice_end: DateTime<Utc>,
    /// The API's link to the first page not yet delivered; `None` = the slice's first page.
    pub next_link: Option<String>,
    /// Pages of this slice delivered so far.
    pub pages: u64,
    /// Rows of this slice delivered so far.
    pub rows: u64,
    /// Set when a next link was abandoned and the slice re-queried: the inclusive end of the
    /// re-query (the oldest row time delivered before it).
    #[serde(default)]
    pub query_end: Option<DateTime<Utc>>,
    /// The oldest row time delivered in this slice so far (rows come newest first).
    #[serde(default)]
    pub oldest: Option<DateTime<Utc>>,
    /// Identities (trace id, recipient) of the delivered rows at exactly `oldest`: a re-query
    /// that includes that instant skips them.
    #[serde(default)]
    pub oldest_ids: Vec<(String, String)>,
    /// Re-queries of this slice so far.
    #[serde(default)]
    pub requeries: u32,
}

/// Why a job ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Fired by the schedule.
    Scheduled,
    /// `msgtrace run --once` or an embedding host's `run_once`.
    Once,
    /// `msgtrace backfill`.
    Backfill,
}

/// A job's or task's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Not started yet.
    Pending,
    /// In progress.
    Running,
    /// Every slice delivered.
    Succeeded,
    /// Stopped by an error; the checkpoint keeps the place.
    Failed,
    /// Stopped by a shutdown or timeout; the checkpoint keeps the place.
    Cancelled,
    /// The process died while it was running (found so at the next start).
    Interrupted,
}

impl JobState {
    /// Whether the job will not change any more.
    pub fn is_finished(self) -> bool {
        !matches!(self, JobState::Pending | JobState::Running)
    }
}

/// One slice of a job: the unit the API is asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Slice start (inclusive).
    pub start: DateTime<Utc>,
    /// Slice end (exclusive).
    pub end: DateTime<Utc>,
    /// State of this slice.
    pub state: JobState,
    /// Pages delivered.
    pub pages: u64,
    /// Rows delivered.
    pub rows: u64,
    /// Rows dropped by the time filter.
    pub dropped: u64,
    /// Requests retried.
    pub retries: u64,
    /// Next links abandoned and the slice re-queried.
    #[serde(default)]
    pub requeries: u32,
    /// Times the task was run again after a non-fatal failure.
    #[serde(default)]
    pub reschedules: u32,
    /// The last error, if any (never contains a secret).
    pub error: Option<String>,
}

/// One run of a source: what the job inspector shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Unique, sortable id: `<source>-<start yyyymmddThhmmss>-<seq>`.
    pub id: String,
    /// The source (input id).
    pub source: String,
    /// Why it ran.
    pub kind: JobKind,
    /// Lifecycle state.
    pub state: JobState,
    /// The window the job set out to collect (start inclusive).
    pub window_start: Option<DateTime<Utc>>,
    /// The window's end (exclusive).
    pub window_end: Option<DateTime<Utc>>,
    /// The slices, in the order they are collected.
    pub tasks: Vec<TaskRecord>,
    /// Pages delivered.
    pub pages: u64,
    /// Rows delivered.
    pub rows: u64,
    /// Rows dropped by the time filter.
    pub dropped: u64,
    /// Requests retried.
    pub retries: u64,
    /// 429 answers received.
    #[serde(default)]
    pub throttled: u64,
    /// Rows skipped because they were delivered before with the same status (re-reads).
    #[serde(default)]
    pub known: u64,
    /// Rows delivered again because their status changed (marked `_update`).
    #[serde(default)]
    pub updates: u64,
    /// Rows whose details this job fetched and delivered (`details`, by `--once` and backfill
    /// jobs; under `msgtrace run` the detail worker does it beside the jobs).
    #[serde(default)]
    pub detail_rows: u64,
    /// Detail events this job delivered.
    #[serde(default)]
    pub detail_events: u64,
    /// Spans that could not be collected (older than the API keeps), `[start, end)`.
    #[serde(default)]
    pub gaps: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    /// Errors met (one line each, never a secret).
    pub errors: Vec<String>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
}

impl JobRecord {
    /// A new running job.
    pub fn new(source: &str, id: &str, kind: JobKind, now: DateTime<Utc>) -> JobRecord {
        JobRecord {
            id: id.into(),
            source: source.into(),
            kind,
            state: JobState::Running,
            window_start: None,
            window_end: None,
            tasks: Vec::new(),
            pages: 0,
            rows: 0,
            dropped: 0,
            retries: 0,
            throttled: 0,
            known: 0,
            updates: 0,
            detail_rows: 0,
            detail_events: 0,
            gaps: Vec::new(),
            errors: Vec::new(),
            started_at: now,
            finished_at: None,
        }
    }

    /// Marks the job finished.
    pub fn finish(&mut self, state: JobState, now: DateTime<Utc>) {
        self.state = state;
        self.finished_at = Some(now);
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "version")]
enum CheckpointRecord {
    #[serde(rename = "1")]
    V1(Checkpoint),
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "version")]
enum JobRecordEnvelope {
    #[serde(rename = "1")]
    V1(JobRecord),
}

/// How far a file sink wrote its file: the file (by path and identity) and its length after the
/// sink's last acknowledged write. On reopening, only bytes past `len` of that same file may be
/// cut (a line torn by a crash): everything before it, or in another file, is not the sink's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMark {
    /// The configured path.
    pub path: String,
    /// Device of the file (`st_dev`; 0 where there is none).
    pub dev: u64,
    /// Inode of the file (`st_ino`): a file replaced under the same path is another file.
    pub ino: u64,
    /// Length after the last acknowledged write (or at opening, for a file found there).
    pub len: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "version")]
enum FileMarkRecord {
    #[serde(rename = "1")]
    V1(FileMark),
}

/// A stored record that cannot be read: not the JSON of a known version of its type (the
/// state directory was written by a newer msgtrace, or damaged).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(#[from] serde_json::Error);

/// Encodes a file sink's mark with its version tag.
pub fn encode_file_mark(mark: &FileMark) -> Vec<u8> {
    serde_json::to_vec(&FileMarkRecord::V1(mark.clone())).expect("file mark serializes")
}

/// Decodes a file sink's mark.
pub fn decode_file_mark(bytes: &[u8]) -> Result<FileMark, DecodeError> {
    match serde_json::from_slice::<FileMarkRecord>(bytes) {
        Ok(FileMarkRecord::V1(m)) => Ok(m),
        Err(e) => Err(DecodeError(e)),
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "version")]
enum SeenRecord {
    #[serde(rename = "1")]
    V1 { status: String },
}

/// Encodes an identity index value (the status delivered) with its version tag.
pub fn encode_seen(status: &str) -> Vec<u8> {
    serde_json::to_vec(&SeenRecord::V1 {
        status: status.to_owned(),
    })
    .expect("seen record serializes")
}

/// Decodes an identity index value.
pub fn decode_seen(bytes: &[u8]) -> Result<String, DecodeError> {
    match serde_json::from_slice::<SeenRecord>(bytes) {
        Ok(SeenRecord::V1 { status }) => Ok(status),
        Err(e) => Err(DecodeError(e)),
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "version")]
enum DetailEntryRecord {
    #[serde(rename = "1")]
    V1(crate::DetailEntry),
}

/// Encodes a details backlog entry with its version tag.
pub fn encode_detail_entry(entry: &crate::DetailEntry) -> Vec<u8> {
    serde_json::to_vec(&DetailEntryRecord::V1(entry.clone())).expect("detail entry serializes")
}

/// Decodes a details backlog entry.
pub fn decode_detail_entry(bytes: &[u8]) -> Result<crate::DetailEntry, DecodeError> {
    match serde_json::from_slice::<DetailEntryRecord>(bytes) {
        Ok(DetailEntryRecord::V1(e)) => Ok(e),
        Err(e) => Err(DecodeError(e)),
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "version")]
enum DetailSeenRecord {
    #[serde(rename = "1")]
    V1 {},
}

/// The value of a delivered detail record's identity (its key says everything): a version tag.
pub fn encode_detail_seen() -> Vec<u8> {
    serde_json::to_vec(&DetailSeenRecord::V1 {}).expect("detail identity serializes")
}

/// Encodes a checkpoint with its version tag.
pub fn encode_checkpoint(cp: &Checkpoint) -> Vec<u8> {
    serde_json::to_vec(&CheckpointRecord::V1(cp.clone())).expect("checkpoint serializes")
}

/// Decodes a versioned checkpoint.
pub fn decode_checkpoint(bytes: &[u8]) -> Result<Checkpoint, DecodeError> {
    match serde_json::from_slice::<CheckpointRecord>(bytes) {
        Ok(CheckpointRecord::V1(cp)) => Ok(cp),
        Err(e) => Err(DecodeError(e)),
    }
}

/// Encodes a job record with its version tag.
pub fn encode_job(job: &JobRecord) -> Vec<u8> {
    serde_json::to_vec(&JobRecordEnvelope::V1(job.clone())).expect("job record serializes")
}

/// Decodes a versioned job record.
pub fn decode_job(bytes: &[u8]) -> Result<JobRecord, DecodeError> {
    match serde_json::from_slice::<JobRecordEnvelope>(bytes) {
        Ok(JobRecordEnvelope::V1(j)) => Ok(j),
        Err(e) => Err(DecodeError(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_carries_version() {
        let cp = Checkpoint {
            cursor: None,
            in_flight: None,
            pages_total: 0,
            rows_total: 0,
            updated_at: DateTime::from_timestamp(0, 0).unwrap(),
            origin: None,
        };
        let bytes = encode_checkpoint(&cp);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["version"], "1");
        assert_eq!(decode_checkpoint(&bytes).unwrap(), cp);
    }

    #[test]
    fn unknown_version_is_an_error() {
        let err = decode_checkpoint(br#"{"version":"9","cursor":null}"#).unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{err}");
    }
}
