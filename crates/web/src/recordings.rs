//! Searching recordings, for the API and the UI alike: filters, the
//! caller's scope, keyset (cursor) pagination and a total count.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use model::{RecordingMeta, RecordingState};
use serde::Deserialize;
use serde_json::json;
use store::{ClusterIndex, ListQuery};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::principal::Principal;
use crate::{Problem, Web};

pub fn routes() -> Router<Arc<Web>> {
    Router::new().route("/api/v1/recordings", get(search_route))
}

/// Totals are counted up to this many; beyond, the answer says "at least".
pub const COUNT_CAP: u64 = 10_000;

/// Longest text filter, and the largest page.
pub const MAX_FILTER_LEN: usize = 128;
pub const MAX_LIMIT: u32 = 10_000;

/// Search filters, as query parameters (every one optional; unknown ones
/// are refused).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    /// RFC 3339; started at or after.
    pub since: Option<String>,
    /// RFC 3339; started before.
    pub until: Option<String>,
    /// Substring of a party's number, name or AOR.
    pub party: Option<String>,
    /// `inbound` or `outbound`.
    pub direction: Option<String>,
    pub state: Option<String>,
    /// `siprec`, `forked` or `plain`.
    pub source: Option<String>,
    pub node: Option<String>,
    /// Call-ID, SIPREC session id, x-refci, UCID ... (exact).
    pub id: Option<String>,
    /// Seconds (an empty value, as a form sends, is no filter).
    pub min_duration_s: Option<String>,
    pub max_duration_s: Option<String>,
    /// The cursor of the next page (`next` of the previous answer).
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

fn text(name: &str, v: &Option<String>) -> Result<Option<String>, Problem> {
    match v.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) if s.chars().count() > MAX_FILTER_LEN => {
            Err(Problem::bad_request(format!("{name} is at most {MAX_FILTER_LEN} characters")))
        }
        Some(s) => Ok(Some(s.to_owned())),
        None => Ok(None),
    }
}

fn seconds(name: &str, v: &Option<String>) -> Result<Option<u64>, Problem> {
    match v.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => s.parse().map(Some).map_err(|_| Problem::bad_request(format!("{name} is a number of seconds"))),
        None => Ok(None),
    }
}

fn when(name: &str, v: &Option<String>) -> Result<Option<OffsetDateTime>, Problem> {
    match v.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => OffsetDateTime::parse(s, &Rfc3339)
            .or_else(|_| OffsetDateTime::parse(&format!("{s}:00Z"), &Rfc3339))
            .map(Some)
            .map_err(|_| Problem::bad_request(format!("{name} must be an RFC 3339 time"))),
        None => Ok(None),
    }
}

/// A cursor is `<started ms>.<id>` of the last row shown.
pub fn cursor_of(m: &RecordingMeta) -> String {
    format!("{}.{}", (m.started_at.unix_timestamp_nanos() / 1_000_000) as i64, m.id)
}

fn parse_cursor(c: &str) -> Result<(i64, String), Problem> {
    let bad = || Problem::bad_request("cursor is not one this server gave");
    let (ms, id) = c.split_once('.').ok_or_else(bad)?;
    let id: model::RecordingId = id.parse().map_err(|_| bad())?;
    Ok((ms.parse().map_err(|_| bad())?, id.to_string()))
}

impl SearchParams {
    pub fn query(&self, p: &Principal) -> Result<ListQuery, Problem> {
        let state = match text("state", &self.state)? {
            Some(s) => Some(s.parse::<RecordingState>().map_err(Problem::bad_request)?),
            None => None,
        };
        let direction = text("direction", &self.direction)?;
        if direction.as_deref().is_some_and(|d| d != "inbound" && d != "outbound") {
            return Err(Problem::bad_request("direction is inbound or outbound"));
        }
        let source = text("source", &self.source)?;
        if source.as_deref().is_some_and(|s| !matches!(s, "siprec" | "forked" | "plain")) {
            return Err(Problem::bad_request("source is siprec, forked or plain"));
        }
        let limit = self.limit.unwrap_or(100);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(Problem::bad_request(format!("limit is 1..={MAX_LIMIT}")));
        }
        Ok(ListQuery {
            state,
            since: when("since", &self.since)?,
            until: when("until", &self.until)?,
            party: text("party", &self.party)?,
            direction,
            min_duration_ms: seconds("min_duration_s", &self.min_duration_s)?.map(|s| s.saturating_mul(1000)),
            max_duration_ms: seconds("max_duration_s", &self.max_duration_s)?.map(|s| s.saturating_mul(1000)),
            source,
            node: text("node", &self.node)?,
            identifier: text("id", &self.id)?,
            scope: p.search_scope(),
            before: text("cursor", &self.cursor)?.map(|c| parse_cursor(&c)).transpose()?,
            limit,
            offset: 0,
        })
    }
}

/// One page of a search.
#[derive(Debug)]
pub struct Page {
    pub recordings: Vec<RecordingMeta>,
    /// Matches, counted up to [`COUNT_CAP`].
    pub total: u64,
    /// `total` is every match (not a lower bound).
    pub total_exact: bool,
    pub next: Option<String>,
}

pub async fn search(web: &Web, p: &Principal, params: &SearchParams) -> Result<Page, Problem> {
    let q = params.query(p)?;
    let (recordings, total) = tokio::try_join!(web.index.list(&q), web.index.count(&q, COUNT_CAP))
        .map_err(|e| Problem::internal("index", e))?;
    let next = (recordings.len() as u32 == q.limit).then(|| recordings.last().map(cursor_of)).flatten();
    Ok(Page { recordings, total, total_exact: total < COUNT_CAP, next })
}

/// A recording as the API shows it: its metadata, where its audio is and
/// the copies of the same call on other nodes.
pub async fn describe(web: &Web, meta: &RecordingMeta) -> serde_json::Value {
    describe_on(web.index.as_ref(), &web.node_id, meta).await
}

/// [`describe`] for a node `me` whose index is `index` (the node's own
/// detail route uses it too).
pub async fn describe_on(index: &dyn ClusterIndex, me: &str, meta: &RecordingMeta) -> serde_json::Value {
    let mut v = serde_json::to_value(meta).expect("metadata serializes");
    let here = index.audio_here(meta.id).await.ok().flatten();
    v["audio_here"] = json!(here.unwrap_or(true));
    v["audio_at"] = json!(if here == Some(false) { meta.node_id.0.clone() } else { me.to_owned() });
    if let Some(key) = &meta.call_key {
        if let Ok(copies) = index.call_copies(key).await {
            v["copies"] = json!(copies);
        }
    }
    v
}

async fn search_route(
    State(web): State<Arc<Web>>,
    Extension(p): Extension<Principal>,
    q: Result<Query<SearchParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(params) = q.map_err(crate::api::bad_query)?;
    let page = search(&web, &p, &params).await?;
    let mut out = Vec::with_capacity(page.recordings.len());
    for m in &page.recordings {
        out.push(describe(&web, m).await);
    }
    Ok(Json(json!({ "recordings": out, "total": page.total, "total_exact": page.total_exact, "next": page.next }))
        .into_response())
}
