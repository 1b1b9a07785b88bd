//! A model of the cluster's lease protocol for one partition: PostgreSQL's lease row
//! (expiry by the database's clock, a token that grows at each acquisition), the
//! destination's fence (`may_claim` before a run reads the checkpoint, `may_commit` in each
//! batch's transaction), and workers that crash, pause past their TTL and read their own
//! skewed clocks. Whatever happens, a batch under a token lands only if no newer token
//! claimed the partition before it: the new holder, which reads the checkpoint after its
//! claim, never misses a write and is never overwritten by a stale worker.

use proptest::prelude::*;
use waymark_engine::lease::{may_claim, may_commit};

/// The lease TTL, ms.
const TTL: u64 = 3_000;
/// The clock skew a worker may have, ms (either way).
const SKEW: i64 = 500;

#[derive(Clone, Debug)]
enum Op {
    /// The database's clock moves on.
    Advance(u64),
    /// A worker's round: renew what it holds, else take the lease if free or expired.
    Tick(usize),
    /// A worker starts a run under the lease it believes it holds.
    Start(usize),
    /// A worker commits a batch of its run.
    Write(usize),
    /// A worker stops for a while (GC pause, SIGSTOP, a partition).
    Pause(usize, u64),
    /// A worker crashes: it forgets everything.
    Crash(usize),
}

fn op(workers: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u64..2_500).prop_map(Op::Advance),
        (0..workers).prop_map(Op::Tick),
        (0..workers).prop_map(Op::Start),
        (0..workers).prop_map(Op::Write),
        ((0..workers), (1u64..3 * TTL)).prop_map(|(w, ms)| Op::Pause(w, ms)),
        (0..workers).prop_map(Op::Crash),
    ]
}

#[derive(Default)]
struct Worker {
    /// The token it believes it holds, and when it believes it expires (its clock).
    held: Option<(u64, i64)>,
    /// The token its run claimed.
    run: Option<u64>,
    paused_until: u64,
    skew: i64,
}

#[derive(Default)]
struct World {
    now: u64,
    /// The lease row: holder, token, expiry (the database's clock).
    lease: Option<(usize, u64, u64)>,
    last_token: u64,
    /// The destination's fence.
    fence: Option<u64>,
    /// (token, step) of every claim and every landed batch.
    claims: Vec<(u64, usize)>,
    landed: Vec<(u64, usize)>,
    refused: usize,
}

impl World {
    fn local(&self, w: &Worker) -> i64 {
        i64::try_from(self.now).unwrap_or(i64::MAX) + w.skew
    }

    fn step(&mut self, workers: &mut [Worker], op: &Op, step: usize) {
        let awake = |w: &Worker, now: u64| w.paused_until <= now;
        match *op {
            Op::Advance(ms) => self.now += ms,
            Op::Pause(i, ms) => workers[i].paused_until = self.now + ms,
            Op::Crash(i) => {
                workers[i] = Worker {
                    skew: workers[i].skew,
                    ..Worker::default()
                }
            }
            Op::Tick(i) if awake(&workers[i], self.now) => {
                let now = self.now;
                let until = i64::try_from(TTL).unwrap_or(0);
                match self.lease {
                    Some((holder, token, expires)) if holder == i && expires > now => {
                        self.lease = Some((i, token, now + TTL));
                        let local = self.local(&workers[i]);
                        workers[i].held = Some((token, local + until));
                    }
                    Some((_, _, expires)) if expires > now => workers[i].held = None,
                    _ => {
                        self.last_token += 1;
                        self.lease = Some((i, self.last_token, now + TTL));
                        let local = self.local(&workers[i]);
                        workers[i].held = Some((self.last_token, local + until));
                    }
                }
            }
            Op::Start(i) if awake(&workers[i], self.now) => {
                let local = self.local(&workers[i]);
                if let Some((token, expires)) = workers[i].held {
                    // It believes its lease valid by its own clock, skewed or not.
                    if local < expires && may_claim(self.fence, token) {
                        self.fence = Some(token);
                        self.claims.push((token, step));
                        workers[i].run = Some(token);
                    }
                }
            }
            Op::Write(i) if awake(&workers[i], self.now) => {
                if let Some(token) = workers[i].run {
                    match may_commit(self.fence, token) {
                        true => self.landed.push((token, step)),
                        false => {
                            self.refused += 1;
                            workers[i].run = None;
                        }
                    }
                }
            }
            // A paused worker does nothing; what it had in flight happens once it wakes.
            Op::Tick(_) | Op::Start(_) | Op::Write(_) => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn a_fenced_write_never_lands(
        skews in proptest::collection::vec(-SKEW..=SKEW, 3),
        ops in proptest::collection::vec(op(3), 1..300),
    ) {
        let mut workers: Vec<Worker> = skews
            .iter()
            .map(|&skew| Worker { skew, ..Worker::default() })
            .collect();
        let mut world = World::default();
        for (step, op) in ops.iter().enumerate() {
            world.step(&mut workers, op, step);
            // At most one unexpired lease, and tokens only grow.
            if let Some((_, token, _)) = world.lease {
                prop_assert_eq!(token, world.last_token);
            }
        }
        // Claims only ever raise the fence.
        for pair in world.claims.windows(2) {
            prop_assert!(pair[0].0 <= pair[1].0, "claims {:?}", world.claims);
        }
        // Every landed batch was under the newest claim at the time it landed.
        for &(token, at) in &world.landed {
            let newer = world.claims.iter().find(|(t, step)| *t > token && *step < at);
            prop_assert!(newer.is_none(), "batch of token {} at step {} after claim {:?}", token, at, newer);
        }
        // Batches land in token order.
        for pair in world.landed.windows(2) {
            prop_assert!(pair[0].0 <= pair[1].0, "landed {:?}", world.landed);
        }
    }
}

#[test]
fn a_worker_paused_past_its_ttl_is_refused_after_a_takeover() {
    let mut workers: Vec<Worker> = (0..2).map(|_| Worker::default()).collect();
    let mut world = World::default();
    let script = [
        Op::Tick(0),
        Op::Start(0),
        Op::Write(0),
        Op::Pause(0, 2 * TTL),
        Op::Advance(TTL + 1),
        Op::Tick(1),
        Op::Start(1),
        Op::Write(1),
        Op::Advance(TTL),
        Op::Write(0),
    ];
    for (step, op) in script.iter().enumerate() {
        world.step(&mut workers, op, step);
    }
    assert_eq!(world.claims, [(1, 1), (2, 6)]);
    assert_eq!(world.landed, [(1, 2), (2, 7)]);
    assert_eq!(world.refused, 1);
}
