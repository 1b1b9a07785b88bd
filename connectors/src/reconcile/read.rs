//! Reading every page of a source over a window, retrying as a run would.

use std::time::Duration;

use waymark_engine::decision::{backoff, Jitter};
use waymark_engine::source::{PageRequest, Source};
use waymark_engine::{Clock, RetryPolicy, Window};

use super::error::Error;

/// Reads every page of a source over `window` from `cursor` (`None`: the first page),
/// retrying as the run would (backoff with jitter, `Retry-After` as a floor) but giving up
/// on a wait beyond `max_wait`; `each` sees each page's records and may stop the reading
/// with an error.
pub async fn read_source<S: Source>(
    source: &mut S,
    window: Window,
    mut cursor: Option<String>,
    policy: &RetryPolicy,
    clock: &dyn Clock,
    mut each: impl FnMut(&[String]) -> Result<(), Error>,
) -> Result<u64, Error> {
    let mut page = 1;
    let mut attempts = 0u32;
    let mut jitter = Jitter::new(clock.now().0);
    loop {
        let request = PageRequest {
            page,
            cursor: cursor.as_deref(),
            window,
        };
        match source.fetch(request).await {
            Ok(p) => {
                attempts = 0;
                each(&p.records)?;
                match p.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => return Ok(page),
                }
                page += 1;
            }
            Err(e) if !e.retryable() => return Err(e.into()),
            Err(mut e) => {
                attempts += 1;
                let wait = e.retry_after.unwrap_or_default().max(backoff(
                    policy,
                    attempts - 1,
                    jitter.next_sample(),
                ));
                if attempts >= policy.max_attempts || wait > policy.max_wait {
                    e.message = format!("page {page} after {attempts} attempts: {}", e.message);
                    return Err(e.into());
                }
                tracing::info!(
                    "reading the source: page {page} attempt {attempts} failed ({}); retrying \
                     in {} ms",
                    e.message,
                    wait.as_millis()
                );
                clock.sleep(wait.max(Duration::from_millis(10))).await;
            }
        }
    }
}
