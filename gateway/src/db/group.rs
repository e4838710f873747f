//! Group commit (issue 12): concurrent `meter_consumption` calls of one caller — the same role and
//! claims — share one transaction, through `mec.meter_consumption_batch`, which answers each
//! event exactly as a call of its own would have been answered, in order of arrival; a refused or
//! failing event changes no other's answer (pg_mec's `ops/batch_setwise.rs`).
//!
//! The first call of a group leads it: when other calls of its caller are in flight it waits up to
//! the window (`MEC_GROUP_COMMIT_US`), until the group is full (`MEC_GROUP_COMMIT_MAX`), or until
//! half of its caller's calls in flight have joined (one group runs while the next fills), runs the
//! batch, and hands each call its answer. A call with nobody to share with runs alone at once, so
//! a lone client pays nothing. When the batch's transaction fails as a whole (a lost connection, a
//! serialization failure), every call of the group runs alone, as it would have without grouping:
//! their keys make a retry of anything that did commit a replay. A group that never got a
//! connection answers each call the 503 it would have had alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::Value;
use tokio::sync::{oneshot, Notify};

use crate::db::{self, Caller, Pools, RequestCtx};
use crate::error::{ApiError, PgErrorInfo};
use crate::infra::auth::Claims;

/// What one call of a group got.
pub enum Outcome {
    /// Its `meter_consumption` result.
    Recorded(Value),
    /// The error the call alone would have raised.
    Rejected(PgErrorInfo),
    /// Not grouped (nobody to share with), or the group's transaction failed: run it alone.
    Alone,
    /// The group never got a connection (pool timeout, database unreachable): what a call alone
    /// would have been told after its own wait.
    Unavailable(ApiError),
}

struct Waiting {
    /// The event as `meter_consumption_batch` takes it (JSON text, numbers exact).
    event: String,
    reply: oneshot::Sender<Outcome>,
}

#[derive(Default)]
struct Group {
    calls: Mutex<Vec<Waiting>>,
    full: Notify,
}

/// The open groups, one per caller.
pub struct GroupCommit {
    window: Duration,
    max: usize,
    open: Mutex<HashMap<String, Arc<Group>>>,
    /// Grouped calls in flight, per caller.
    in_flight: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    /// Groups run, and the calls they answered (`/metrics`).
    commits: AtomicU64,
    calls: AtomicU64,
}

/// A grouped call in flight: counted for its caller until the request is answered (dropped),
/// however it is answered — in a group or alone.
pub struct Ticket {
    key: String,
    count: Arc<AtomicUsize>,
    /// How many other calls of the caller were in flight when this one came.
    others: usize,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl GroupCommit {
    /// `None` when grouping is off (a zero window).
    pub fn new(window: Duration, max: usize) -> Option<GroupCommit> {
        (!window.is_zero() && max > 1).then(|| GroupCommit {
            window,
            max,
            open: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            commits: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        })
    }

    /// (groups run, calls they answered).
    pub fn stats(&self) -> (u64, u64) {
        (
            self.commits.load(Ordering::Relaxed),
            self.calls.load(Ordering::Relaxed),
        )
    }

    /// Counts a call of `claims` in flight until the returned ticket is dropped.
    pub fn enter(&self, claims: &Claims) -> Ticket {
        let key = claims.to_json();
        let count = {
            let mut m = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if m.len() > 10_000 {
                m.retain(|_, c| c.load(Ordering::Acquire) > 0);
            }
            m.entry(key.clone()).or_default().clone()
        };
        let others = count.fetch_add(1, Ordering::AcqRel);
        Ticket { key, count, others }
    }

    /// Meters `event` (a batch event's JSON text) for `claims` in a group, when other calls of the
    /// same caller are in flight; else [`Outcome::Alone`].
    pub async fn submit(
        &self,
        ticket: &Ticket,
        pools: &Pools,
        claims: &Claims,
        headers: &HeaderMap,
        event: String,
    ) -> Outcome {
        let key = &ticket.key;
        let (tx, rx) = oneshot::channel();
        let waiting = Waiting { event, reply: tx };
        let (group, leader) = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            match open.get(key).cloned() {
                Some(g) => {
                    let n = {
                        let mut calls = g.calls.lock().unwrap_or_else(|p| p.into_inner());
                        calls.push(waiting);
                        calls.len()
                    };
                    // Full, or half of this caller's calls in flight have joined: this group
                    // runs while the rest fill the next one (waiting for all would leave the
                    // database one batch at a time, and waiting out the window would idle).
                    if n >= self.max || n * 2 >= ticket.count.load(Ordering::Acquire) {
                        open.remove(key);
                        g.full.notify_one();
                    }
                    (g, false)
                }
                None if ticket.others == 0 => return Outcome::Alone,
                None => {
                    let g = Arc::new(Group::default());
                    g.calls
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(waiting);
                    open.insert(key.clone(), g.clone());
                    (g, true)
                }
            }
        };
        if leader {
            // Should this request be dropped while it waits (its client gone, its timeout), the
            // guard closes the group and sends its calls alone: none waits for a leader that left.
            let mut closing = Closing {
                gc: self,
                key,
                group: &group,
            };
            tokio::select! {
                _ = tokio::time::sleep(self.window) => {}
                _ = group.full.notified() => {}
            }
            let calls = closing.close();
            let n = calls.len() as u64;
            if run(pools, claims, headers, calls).await {
                self.commits.fetch_add(1, Ordering::Relaxed);
                self.calls.fetch_add(n, Ordering::Relaxed);
            }
        }
        rx.await.unwrap_or(Outcome::Alone)
    }
}

/// A leader's open group: [`Closing::close`] takes it out of the map with its calls; dropped
/// before that, it answers every call [`Outcome::Alone`].
struct Closing<'a> {
    gc: &'a GroupCommit,
    key: &'a str,
    group: &'a Arc<Group>,
}

impl Closing<'_> {
    fn close(&mut self) -> Vec<Waiting> {
        {
            let mut open = self.gc.open.lock().unwrap_or_else(|p| p.into_inner());
            if open
                .get(self.key)
                .is_some_and(|g| Arc::ptr_eq(g, self.group))
            {
                open.remove(self.key);
            }
        }
        std::mem::take(&mut *self.group.calls.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        // After close() the calls are gone and this sends nothing; their replies, dropped with a
        // run that never finished, read as Alone too.
        for w in self.close() {
            let _ = w.reply.send(Outcome::Alone);
        }
    }
}

/// Runs one group's batch and answers each of its calls; false when they must run alone.
async fn run(pools: &Pools, claims: &Claims, headers: &HeaderMap, calls: Vec<Waiting>) -> bool {
    let events = format!(
        "[{}]",
        calls
            .iter()
            .map(|w| w.event.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    let ctx = RequestCtx {
        caller: Caller::Token(claims),
        method: "POST",
        path: "/rpc/meter_consumption",
        headers,
        read_only: false,
    };
    let answer = db::call_json(
        pools,
        &ctx,
        "SELECT mec.meter_consumption_batch($1::text::jsonb)::text",
        &[Some(events)],
        "meter_consumption_batch",
    )
    .await;
    let results = match answer {
        Ok(v) => v
            .get("results")
            .and_then(Value::as_array)
            .cloned()
            .filter(|r| r.len() == calls.len()),
        // No connection was had, nothing ran: each call gets the 503 it would have got alone,
        // rather than a second wait in the same queue.
        Err(ApiError::Unavailable {
            status,
            code: code @ ("PGRST000" | "PGRST003"),
            message,
            cause,
        }) => {
            for w in calls {
                let _ = w.reply.send(Outcome::Unavailable(ApiError::Unavailable {
                    status,
                    code,
                    message,
                    cause: cause.clone(),
                }));
            }
            return false;
        }
        Err(e) => {
            tracing::warn!(error = %e, calls = calls.len(), "group commit failed; its calls run alone");
            None
        }
    };
    let Some(results) = results else {
        for w in calls {
            let _ = w.reply.send(Outcome::Alone);
        }
        return false;
    };
    for (w, r) in calls.into_iter().zip(results) {
        let _ = w.reply.send(outcome(r));
    }
    true
}

/// One batch result as the call alone would have had it.
fn outcome(mut r: Value) -> Outcome {
    let rejected = r.get("status").and_then(Value::as_str) == Some("rejected");
    let Some(o) = r.as_object_mut() else {
        return Outcome::Alone;
    };
    if !rejected {
        o.remove("index");
        o.remove("status");
        return Outcome::Recorded(r);
    }
    let Some(err) = o.get("error") else {
        return Outcome::Alone;
    };
    let text = |k: &str| -> Option<String> {
        match err.get(k) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => Some(v.to_string()),
        }
    };
    match (text("code"), text("message")) {
        // The batch's own reading of an event ("event 0: quantity …") words an error as a call
        // alone would not: that call runs alone.
        (Some(_), Some(message)) if message.starts_with("event ") => Outcome::Alone,
        (Some(code), Some(message)) => Outcome::Rejected(PgErrorInfo {
            code,
            message,
            details: text("details"),
            hint: text("hint"),
        }),
        _ => Outcome::Alone,
    }
}
