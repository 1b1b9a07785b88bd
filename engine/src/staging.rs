//! Staged pages: a fetched page's records, on disk, before they are written.
//!
//! sled 0.34 keeps values above a few KB as blob files that it never deletes (spacejam/sled
//! #786), so page bytes stay out of the journal. A run stages into two slot files of ours,
//! `<staging>/<run-id>/slot-<page % 2>.page`, created once and rewritten in place (one
//! fdatasync a page, no create, rename or unlink): at most two pages are ever pending (one
//! fetched ahead), and a slot is reused only once its previous page is durably committed.
//! Each read is checked by CRC-32 against the journal's `PageFetched`, so a replayed write
//! sees exactly the bytes the crashed run saw, and a reused slot is never taken for an older
//! page. (`<page>.page` files of older versions are still read and removed.)
//!
//! ```text
//! [b"WMPG"][version: u8][records: u64 LE][crc32 of body: u32 LE][body]
//! body = { [len: u32 LE][record JSON] }*
//! ```

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::durability::Durability;
use crate::run_id::RunId;

const MAGIC: &[u8; 4] = b"WMPG";
const VERSION: u8 = 1;
const HEADER: usize = 4 + 1 + 8 + 4;

/// A staging failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The filesystem refused.
    #[error("staging file {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A staged page is damaged or does not match its journal entry.
    #[error(
        "staged page {page} of run {run} is damaged: {detail}. `waymark run <workflow> --fresh` \
         abandons the run and continues from its last committed checkpoint"
    )]
    Corrupt {
        /// The run.
        run: RunId,
        /// The page.
        page: u64,
        /// What is wrong.
        detail: String,
    },
    /// A record is too large to stage (over 4 GiB).
    #[error("a record of page {page} is larger than 4 GiB")]
    RecordTooLarge {
        /// The page.
        page: u64,
    },
}

/// What staging a page produced, for the `PageFetched` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staged {
    /// File size in bytes.
    pub bytes: u64,
    /// CRC-32 of the body.
    pub checksum: u32,
}

/// The staging directory.
#[derive(Debug, Clone)]
pub struct Staging {
    dir: PathBuf,
    /// Pages are synced to disk before `stage` returns (off for a run of `process`
    /// durability, and in the bench-only unjournaled mode).
    durable: bool,
}

impl Staging {
    /// Staging under `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<Self, Error> {
        fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Staging {
            dir: dir.to_path_buf(),
            durable: true,
        })
    }

    /// Staging under `dir`, to read only (nothing is created).
    pub fn at(dir: &Path) -> Self {
        Staging {
            dir: dir.to_path_buf(),
            durable: true,
        }
    }

    /// The same staging, its pages synced only if `durability` asks for it.
    pub fn with_durability(&self, durability: Durability) -> Staging {
        Staging {
            dir: self.dir.clone(),
            durable: self.durable && durability.syncs(),
        }
    }

    /// The same staging without fsyncs: for measuring what durability costs, never for use.
    #[cfg(feature = "bench-unjournaled")]
    pub fn without_fsync(self) -> Self {
        Staging {
            durable: false,
            ..self
        }
    }

    fn run_dir(&self, run: RunId) -> PathBuf {
        self.dir.join(run.to_string())
    }

    fn path(&self, run: RunId, page: u64) -> PathBuf {
        self.run_dir(run).join(format!("slot-{}.page", page % 2))
    }

    /// Where an older version staged a page (one file per page).
    fn legacy_path(&self, run: RunId, page: u64) -> PathBuf {
        self.run_dir(run).join(format!("{page}.page"))
    }

    /// Writes a page's records durably and returns its size and checksum.
    pub fn stage(&self, run: RunId, page: u64, records: &[String]) -> Result<Staged, Error> {
        let (buf, checksum) = encode(records).ok_or(Error::RecordTooLarge { page })?;

        let dir = self.run_dir(run);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        let path = self.path(run, page);
        let created = !path.exists();
        if created {
            fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        // Rewritten in place: a torn write fails its checksum, and the page it replaces is
        // committed already.
        file.write_all(&buf).map_err(io(&path))?;
        file.set_len(buf.len() as u64).map_err(io(&path))?;
        if self.durable {
            file.sync_data().map_err(io(&path))?;
            if created {
                File::open(&dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io(&dir))?;
            }
        }
        Ok(Staged {
            bytes: buf.len() as u64,
            checksum,
        })
    }

    /// Reads a staged page back, checking it against the checksum its journal entry holds.
    pub fn read(&self, run: RunId, page: u64, checksum: u32) -> Result<Vec<String>, Error> {
        match self.read_file(&self.path(run, page), run, page, checksum) {
            Err(e @ Error::Corrupt { .. }) => {
                let legacy = self.legacy_path(run, page);
                match legacy.exists() {
                    true => self.read_file(&legacy, run, page, checksum),
                    false => Err(e),
                }
            }
            other => other,
        }
    }

    fn read_file(
        &self,
        path: &Path,
        run: RunId,
        page: u64,
        checksum: u32,
    ) -> Result<Vec<String>, Error> {
        let path = path.to_path_buf();
        let corrupt = |detail: String| Error::Corrupt { run, page, detail };
        let mut buf = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => corrupt(format!("{} is missing", path.display())),
                _ => Error::Io {
                    path: path.clone(),
                    source,
                },
            })?;
        decode(&buf, checksum).map_err(corrupt)
    }

    /// The runs with staged pages.
    pub fn runs(&self) -> Vec<RunId> {
        fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
            .collect()
    }

    /// Deletes every staged page of a run.
    pub fn remove_run(&self, run: RunId) -> Result<(), Error> {
        let path = self.run_dir(run);
        match fs::remove_dir_all(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }
}

/// A page's records in the staged format, and the checksum of its body (`None`: a record
/// is over 4 GiB).
pub fn encode(records: &[String]) -> Option<(Vec<u8>, u32)> {
    let body_len: usize = records.iter().map(|r| 4 + r.len()).sum();
    let mut buf = Vec::with_capacity(HEADER + body_len);
    buf.extend_from_slice(MAGIC);
    buf.push(VERSION);
    buf.extend_from_slice(&(records.len() as u64).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    for record in records {
        let len = u32::try_from(record.len()).ok()?;
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(record.as_bytes());
    }
    let checksum = crc32fast::hash(&buf[HEADER..]);
    buf[13..HEADER].copy_from_slice(&checksum.to_le_bytes());
    Some((buf, checksum))
}

/// The records of a staged page's bytes, if they match `checksum` (the journal's); else
/// what is wrong. Only the bytes [`encode`] makes are read: `encode(decode(b)) == b`.
pub fn decode(buf: &[u8], checksum: u32) -> Result<Vec<String>, String> {
    if buf.len() < HEADER || &buf[..4] != MAGIC {
        return Err("not a staged page (bad header)".into());
    }
    if buf[4] != VERSION {
        return Err(format!("unknown staging version {}", buf[4]));
    }
    let stored = u32::from_le_bytes([buf[13], buf[14], buf[15], buf[16]]);
    let computed = crc32fast::hash(&buf[HEADER..]);
    if stored != checksum || computed != checksum {
        return Err(format!(
            "checksum {computed:#010x}, header {stored:#010x}, journal {checksum:#010x}"
        ));
    }
    let mut count = [0u8; 8];
    count.copy_from_slice(&buf[5..13]);
    let count = u64::from_le_bytes(count);
    let mut records = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(1 << 20));
    let mut body = &buf[HEADER..];
    while body.len() >= 4 {
        let len = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
        let Some(bytes) = body.get(4..4 + len) else {
            return Err("a record runs past the end".into());
        };
        let record = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
        records.push(record.to_owned());
        body = &body[4 + len..];
    }
    if !body.is_empty() || records.len() as u64 != count {
        return Err(format!("{} records found, {count} expected", records.len()));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_reads_back_and_detects_damage() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("waymark-staging-{}", RunId::new()));
        let staging = Staging::open(&dir)?;
        let run = RunId::new();
        let records = vec![r#"{"id":1}"#.to_string(), r#"{"id":2,"n":"é"}"#.to_string()];
        let staged = staging.stage(run, 3, &records)?;
        assert_eq!(staging.read(run, 3, staged.checksum)?, records);

        // A checksum other than the journal's is refused.
        assert!(matches!(
            staging.read(run, 3, staged.checksum ^ 1),
            Err(Error::Corrupt { .. })
        ));

        // A flipped bit in the body is refused.
        let path = staging.path(run, 3);
        let mut bytes = fs::read(&path)?;
        let last = bytes.len() - 2;
        bytes[last] ^= 0x40;
        fs::write(&path, &bytes)?;
        assert!(matches!(
            staging.read(run, 3, staged.checksum),
            Err(Error::Corrupt { .. })
        ));

        // Truncation is refused.
        fs::write(&path, &bytes[..10])?;
        assert!(matches!(
            staging.read(run, 3, staged.checksum),
            Err(Error::Corrupt { .. })
        ));

        // Page 4 has the other slot; page 5 reuses page 3's, whose checksum then fails.
        let four = staging.stage(run, 4, &records[..1])?;
        staging.stage(run, 3, &records)?;
        staging.stage(run, 5, &records[1..])?;
        assert_eq!(staging.read(run, 4, four.checksum)?, records[..1]);
        assert!(matches!(
            staging.read(run, 3, staged.checksum),
            Err(Error::Corrupt { .. })
        ));
        // A page file of an older version is still read (page 8's slot holds page 4).
        fs::write(staging.legacy_path(run, 8), fs::read(staging.path(run, 5))?)?;
        let legacy = crc32fast::hash(&fs::read(staging.legacy_path(run, 8))?[HEADER..]);
        assert_eq!(staging.read(run, 8, legacy)?, records[1..]);
        // It goes with the run's other staged pages.
        staging.remove_run(run)?;
        assert!(!staging.legacy_path(run, 8).exists());
        fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
