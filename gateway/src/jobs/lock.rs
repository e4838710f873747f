//! One run of a job per namespace at a time, in every replica: a session advisory lock on a
//! connection of the worker pool, released at the end (or when the connection goes, with the
//! process). A connection that may still hold the lock is never given back to the pool.

use deadpool_postgres::Object;

use crate::error::ApiError;
use crate::AppState;

/// Which job a lock is for: the first key of `pg_try_advisory_lock(int4, int4)`.
#[derive(Clone, Copy)]
pub enum Job {
    StripeUsage = 1_835_361_122,
    Webhooks = 1_835_361_123,
    Purge = 1_835_361_124,
}

const TRY_LOCK: &str = "SELECT pg_try_advisory_lock($1::text::int4, hashtext($2::text))";
const UNLOCK: &str = "SELECT pg_advisory_unlock($1::text::int4, hashtext($2::text))";

pub struct RunLock {
    obj: Option<Object>,
    job: String,
    key: String,
}

impl RunLock {
    /// The lock of `job` for namespace `ns`, or `None` when another run holds it.
    pub async fn acquire(
        state: &AppState,
        job: Job,
        ns: uuid::Uuid,
    ) -> Result<Option<RunLock>, ApiError> {
        let obj = state.pools.worker().get().await?;
        let job = (job as i32).to_string();
        let key = ns.to_string();
        let got: bool = obj
            .query_one(TRY_LOCK, &[&job, &key])
            .await
            .map_err(ApiError::from)?
            .try_get(0)
            .map_err(|e| ApiError::Internal(format!("advisory lock: {e}")))?;
        Ok(got.then_some(RunLock {
            obj: Some(obj),
            job,
            key,
        }))
    }

    pub async fn release(mut self) {
        if let Some(obj) = self.obj.take() {
            if obj
                .query_one(UNLOCK, &[&self.job, &self.key])
                .await
                .is_err()
            {
                drop(Object::take(obj));
            }
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if let Some(obj) = self.obj.take() {
            // Never pool a connection that may still hold the lock.
            drop(Object::take(obj));
        }
    }
}
