//! Any bytes as a staged page: decoded to records or refused, never a panic; what decodes
//! is exactly what encoding those records writes (one reading of a file, so a replay sees
//! the bytes the crashed run saw).
#![no_main]

use libfuzzer_sys::fuzz_target;
use waymark_engine::staging::{decode, encode};

fuzz_target!(|data: &[u8]| {
    // The journal's checksum is the body's CRC-32 half the time (so the fuzzer gets past
    // it), the header's own field otherwise.
    let body = data.get(17..).unwrap_or_default();
    let checksum = match data.first().map(|b| b % 2) {
        Some(0) => crc32fast::hash(body),
        _ => data
            .get(13..17)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0),
    };
    if let Ok(records) = decode(data, checksum) {
        let (again, sum) = encode(&records).expect("decoded records fit");
        assert_eq!(sum, checksum, "decoded with another checksum");
        assert_eq!(again, data, "two byte strings decode to the same records");
    }
    // And any records read from the input survive the trip.
    let records: Vec<String> = data
        .split(|b| *b == b'\n')
        .map(|line| String::from_utf8_lossy(line).into_owned())
        .collect();
    let (bytes, sum) = encode(&records).expect("small records fit");
    assert_eq!(decode(&bytes, sum).as_ref(), Ok(&records));
});
