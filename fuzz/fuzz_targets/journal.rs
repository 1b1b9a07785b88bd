//! Any bytes as journal entries (a run's head, an event, a stream checkpoint): every read
//! and `verify` reports damage, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waymark_engine::journal::{Backend, MemoryBackend, Op};
use waymark_engine::Journal;

fuzz_target!(|data: &[u8]| {
    // [prefix selector][16-byte run id][value…], repeated through the input by a length byte.
    let backend = MemoryBackend::new();
    let mut ops = Vec::new();
    let mut rest = data;
    while rest.len() > 18 {
        let kind = [b'h', b'e', b'c', b'a'][usize::from(rest[0] % 4)];
        let len = usize::from(rest[1]).min(rest.len() - 18);
        let mut key = vec![kind];
        key.extend_from_slice(&rest[2..18]);
        if kind == b'e' {
            key.extend_from_slice(&u64::from(rest[0] / 4).to_be_bytes());
        }
        ops.push(Op::Put(key, rest[18..18 + len].to_vec()));
        rest = &rest[18 + len..];
    }
    if backend.commit(ops).is_err() {
        return;
    }
    let journal = Journal::new(backend);
    let heads: Vec<_> = journal.runs().collect();
    for head in heads.into_iter().flatten() {
        let _ = journal.load(head.run_id());
        let _ = journal.events(head.run_id()).count();
    }
    let _ = journal.verify();
});
