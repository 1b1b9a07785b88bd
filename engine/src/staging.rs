//! Staged pages: a fetched page's records, on disk, before they are written.
//!
//! sled 0.34 keeps values above a few KB as blob files that it never deletes (spacejam/sled
//! #786), so page bytes stay out of the journal. A run stages into three block files of
//! ours, `<staging>/<run-id>/block-<(page / GROUP) % 3>.pages` ([`GROUP`] pages a block):
//! a page is appended to its block's file (rewritten from the start when the file held an
//! older block), and the pages a step staged are synced together, with one `fdatasync` a
//! file, before their `PageFetched` are journaled. No create, rename or unlink a page. At
//! most `2 × GROUP` pages are ever pending (the driver's fetch ahead), so a block file is
//! reused only once every page of the block it held is durably committed. Each read is
//! checked by CRC-32 against the journal's `PageFetched`, so a replayed write sees exactly
//! the bytes the crashed run saw, and a reused file is never taken for an older block.
//! (`slot-<page % 2>.page` and `<page>.page` files of older versions are still read.)
//!
//! ```text
//! block file = [b"WMPB"][version: u8][block: u64 LE] { entry }*
//! entry      = [page: u64 LE][page bytes: u64 LE] page
//! page       = [b"WMPG"][version: u8][records: u64 LE][crc32 of body: u32 LE][body]
//! body       = { [len: u32 LE][record JSON] }*
//! ```
//!
//! A write a crash cut short leaves a torn entry at a file's end: it fails its checksum,
//! and the first append of a process cuts the file back to its last whole entry.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::durability::Durability;
use crate::group::GROUP;
use crate::run_id::RunId;

const MAGIC: &[u8; 4] = b"WMPG";
const VERSION: u8 = 1;
const HEADER: usize = 4 + 1 + 8 + 4;

const BLOCK_MAGIC: &[u8; 4] = b"WMPB";
const BLOCK_VERSION: u8 = 1;
const BLOCK_HEADER: usize = 4 + 1 + 8;
const ENTRY_HEADER: usize = 8 + 8;
/// Block files a run stages into, used in turn.
const BLOCK_FILES: u64 = 3;

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

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { path, source }
}

/// What staging a page produced, for the `PageFetched` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staged {
    /// The staged page's size in bytes.
    pub bytes: u64,
    /// CRC-32 of the body.
    pub checksum: u32,
}

/// The staging directory.
#[derive(Debug, Clone)]
pub struct Staging {
    dir: PathBuf,
    /// Pages are synced to disk before their fetch is journaled (off for a run of
    /// `process` durability, and in the bench-only unjournaled mode).
    durable: bool,
}

impl Staging {
    /// Staging under `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<Self, Error> {
        fs::create_dir_all(dir).map_err(io(dir))?;
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

    /// What stages `run`'s pages: one per running run.
    pub fn stager(&self, run: RunId) -> Stager {
        Stager {
            staging: self.clone(),
            run,
            files: Vec::new(),
        }
    }

    fn run_dir(&self, run: RunId) -> PathBuf {
        self.dir.join(run.to_string())
    }

    fn block_path(&self, run: RunId, block: u64) -> PathBuf {
        self.run_dir(run)
            .join(format!("block-{}.pages", block % BLOCK_FILES))
    }

    /// Where older versions staged a page: two slot files, or one file per page.
    fn older_paths(&self, run: RunId, page: u64) -> [PathBuf; 2] {
        let dir = self.run_dir(run);
        [
            dir.join(format!("slot-{}.page", page % 2)),
            dir.join(format!("{page}.page")),
        ]
    }

    /// Reads a staged page back, checking it against the checksum its journal entry holds.
    pub fn read(&self, run: RunId, page: u64, checksum: u32) -> Result<Vec<String>, Error> {
        let corrupt = |detail: String| Error::Corrupt { run, page, detail };
        let path = self.block_path(run, page / GROUP);
        let found = match read_all(&path)? {
            Some(bytes) => {
                let staged = entries(&bytes, page / GROUP)
                    .filter(|e| e.page == page && e.checksum == checksum)
                    .last();
                match staged {
                    Some(e) => return decode(e.bytes, checksum).map_err(corrupt),
                    None => format!("{} does not hold it", path.display()),
                }
            }
            None => format!("{} is missing", path.display()),
        };
        for older in self.older_paths(run, page) {
            if let Some(bytes) = read_all(&older)? {
                if let Ok(records) = decode(&bytes, checksum) {
                    return Ok(records);
                }
            }
        }
        Err(corrupt(found))
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

/// A file's bytes, `None` if it does not exist.
fn read_all(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    let mut buf = Vec::new();
    match File::open(path).and_then(|mut f| f.read_to_end(&mut buf)) {
        Ok(_) => Ok(Some(buf)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Stages one run's pages: appends each to its block's file, and syncs what it appended
/// when asked. Only one stager may write a run's files (the run's driver).
#[derive(Debug)]
pub struct Stager {
    staging: Staging,
    run: RunId,
    /// The block files this stager opened.
    files: Vec<BlockFile>,
}

#[derive(Debug)]
struct BlockFile {
    path: PathBuf,
    file: File,
    block: u64,
    /// The end of its last whole entry: where the next one goes.
    end: u64,
    /// Appended to since the last sync.
    dirty: bool,
    /// Opened by this stager and not synced yet: its directory entry is synced too.
    entry_unsynced: bool,
}

impl Stager {
    /// Appends a page's records to its block's file (not synced: see [`Stager::sync`]),
    /// and returns its size and checksum.
    pub fn stage(&mut self, page: u64, records: &[String]) -> Result<Staged, Error> {
        let mut buf = Vec::new();
        buf.extend_from_slice(&page.to_le_bytes());
        buf.extend_from_slice(&[0; 8]);
        let checksum = encode_into(&mut buf, records).ok_or(Error::RecordTooLarge { page })?;
        let bytes = (buf.len() - ENTRY_HEADER) as u64;
        buf[8..ENTRY_HEADER].copy_from_slice(&bytes.to_le_bytes());

        let file = self.file(page / GROUP)?;
        let at = file.end;
        let path = &file.path;
        file.file.seek(SeekFrom::Start(at)).map_err(io(path))?;
        // A write cut short is overwritten by the next append, and cut on the next open.
        file.file.write_all(&buf).map_err(io(path))?;
        file.end = at + buf.len() as u64;
        file.dirty = true;
        Ok(Staged { bytes, checksum })
    }

    /// Makes every page staged since the last call durable (when the run's durability
    /// asks for it): one `fdatasync` a file written.
    pub fn sync(&mut self) -> Result<(), Error> {
        let durable = self.staging.durable;
        let dir = self.staging.run_dir(self.run);
        for file in self.files.iter_mut().filter(|f| f.dirty) {
            if durable {
                file.file.sync_data().map_err(io(&file.path))?;
                if file.entry_unsynced {
                    File::open(&dir)
                        .and_then(|d| d.sync_all())
                        .map_err(io(&dir))?;
                    file.entry_unsynced = false;
                }
            }
            file.dirty = false;
        }
        Ok(())
    }

    /// The file of `block`, open at the end of its last whole entry; a file that held an
    /// older block starts again.
    fn file(&mut self, block: u64) -> Result<&mut BlockFile, Error> {
        let slot = block % BLOCK_FILES;
        let found = self
            .files
            .iter()
            .position(|f| f.block % BLOCK_FILES == slot);
        let index = match found {
            Some(i) => i,
            None => {
                let opened = self.open(block)?;
                self.files.push(opened);
                self.files.len() - 1
            }
        };
        let file = &mut self.files[index];
        if file.block != block {
            restart(file, block)?;
        }
        Ok(file)
    }

    fn open(&self, block: u64) -> Result<BlockFile, Error> {
        let path = self.staging.block_path(self.run, block);
        let dir = self.staging.run_dir(self.run);
        if !path.exists() {
            fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io(&path))?;
        // Its directory entry is synced with the first sync, whoever created it (a process
        // that died before its first sync leaves one never synced).
        let mut opened = BlockFile {
            path,
            file,
            block,
            end: 0,
            dirty: false,
            entry_unsynced: true,
        };
        match holds(&bytes, block) {
            true => {
                // Cut a write a crash cut short.
                let end = entries(&bytes, block)
                    .last()
                    .map_or(BLOCK_HEADER, |e| e.end);
                opened.end = end as u64;
                if end < bytes.len() {
                    opened.file.set_len(opened.end).map_err(io(&opened.path))?;
                }
            }
            false => restart(&mut opened, block)?,
        }
        Ok(opened)
    }
}

/// Empties a block file for `block`.
fn restart(file: &mut BlockFile, block: u64) -> Result<(), Error> {
    let mut header = Vec::with_capacity(BLOCK_HEADER);
    header.extend_from_slice(BLOCK_MAGIC);
    header.push(BLOCK_VERSION);
    header.extend_from_slice(&block.to_le_bytes());
    let path = &file.path;
    file.file.set_len(0).map_err(io(path))?;
    file.file.seek(SeekFrom::Start(0)).map_err(io(path))?;
    file.file.write_all(&header).map_err(io(path))?;
    file.block = block;
    file.end = BLOCK_HEADER as u64;
    file.dirty = true;
    Ok(())
}

/// One whole staged page of a block file.
struct Entry<'a> {
    page: u64,
    checksum: u32,
    /// The staged page.
    bytes: &'a [u8],
    /// Where the entry ends in the file.
    end: usize,
}

/// The whole entries of a block file's bytes, if it holds `block`: up to the first one
/// torn or damaged.
fn entries(bytes: &[u8], block: u64) -> impl Iterator<Item = Entry<'_>> {
    let mut at = match holds(bytes, block) {
        true => BLOCK_HEADER,
        false => bytes.len(),
    };
    std::iter::from_fn(move || {
        let header = bytes.get(at..at + ENTRY_HEADER)?;
        let page = u64::from_le_bytes(header[..8].try_into().ok()?);
        let len = usize::try_from(u64::from_le_bytes(header[8..].try_into().ok()?)).ok()?;
        let start = at + ENTRY_HEADER;
        let staged = bytes.get(start..start.checked_add(len)?)?;
        let checksum = whole(staged)?;
        at = start + len;
        Some(Entry {
            page,
            checksum,
            bytes: staged,
            end: at,
        })
    })
}

/// True when a block file's bytes start with this version's header for `block`.
fn holds(bytes: &[u8], block: u64) -> bool {
    bytes.len() >= BLOCK_HEADER
        && bytes[..4] == *BLOCK_MAGIC
        && bytes[4] == BLOCK_VERSION
        && bytes[5..13] == block.to_le_bytes()
}

/// The checksum of a staged page whose body matches it.
fn whole(staged: &[u8]) -> Option<u32> {
    let header = staged.get(..HEADER)?;
    let stored = u32::from_le_bytes(header[13..HEADER].try_into().ok()?);
    (header[..4] == *MAGIC && crc32fast::hash(&staged[HEADER..]) == stored).then_some(stored)
}

/// A page's records in the staged format, and the checksum of its body (`None`: a record
/// is over 4 GiB).
pub fn encode(records: &[String]) -> Option<(Vec<u8>, u32)> {
    let mut buf = Vec::new();
    let checksum = encode_into(&mut buf, records)?;
    Some((buf, checksum))
}

/// Appends a page's records in the staged format to `buf`: the checksum of its body.
fn encode_into(buf: &mut Vec<u8>, records: &[String]) -> Option<u32> {
    let body_len: usize = records.iter().map(|r| 4 + r.len()).sum();
    let start = buf.len();
    buf.reserve(HEADER + body_len);
    buf.extend_from_slice(MAGIC);
    buf.push(VERSION);
    buf.extend_from_slice(&(records.len() as u64).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    for record in records {
        let len = u32::try_from(record.len()).ok()?;
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(record.as_bytes());
    }
    let checksum = crc32fast::hash(&buf[start + HEADER..]);
    buf[start + 13..start + HEADER].copy_from_slice(&checksum.to_le_bytes());
    Some(checksum)
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

    fn page(n: u64) -> Vec<String> {
        (0..n)
            .map(|i| format!(r#"{{"id":{i},"n":"é{n}"}}"#))
            .collect()
    }

    #[test]
    fn stages_reads_back_and_detects_damage() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("waymark-staging-{}", RunId::new()));
        let staging = Staging::open(&dir)?;
        let run = RunId::new();
        let mut stager = staging.stager(run);
        let three = stager.stage(3, &page(3))?;
        let four = stager.stage(4, &page(4))?;
        stager.sync()?;
        assert_eq!(staging.read(run, 3, three.checksum)?, page(3));
        assert_eq!(staging.read(run, 4, four.checksum)?, page(4));
        assert_eq!(
            three.bytes,
            encode(&page(3)).map_or(0, |e| e.0.len() as u64)
        );

        // A checksum other than the journal's is refused.
        assert!(matches!(
            staging.read(run, 3, three.checksum ^ 1),
            Err(Error::Corrupt { .. })
        ));

        // A flipped bit in page 4 (the file's last entry) is refused; page 3 is intact.
        let path = staging.block_path(run, 0);
        let whole = fs::read(&path)?;
        let mut bytes = whole.clone();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x40;
        fs::write(&path, &bytes)?;
        assert!(matches!(
            staging.read(run, 4, four.checksum),
            Err(Error::Corrupt { .. })
        ));
        assert_eq!(staging.read(run, 3, three.checksum)?, page(3));

        // A torn append (a crash) is cut by the next process's first append, which goes
        // where the torn one began; a page staged again is read from its last copy.
        fs::write(&path, &whole[..whole.len() - 10])?;
        let mut next = staging.stager(run);
        let again = next.stage(4, &page(2))?;
        next.sync()?;
        assert_eq!(staging.read(run, 4, again.checksum)?, page(2));
        assert_eq!(staging.read(run, 3, three.checksum)?, page(3));
        assert!(matches!(
            staging.read(run, 4, four.checksum),
            Err(Error::Corrupt { .. })
        ));
        assert_eq!(fs::metadata(&path)?.len(), {
            let before = whole.len() as u64 - (four.bytes + ENTRY_HEADER as u64);
            before + again.bytes + ENTRY_HEADER as u64
        });

        // Truncation of the whole file is refused.
        fs::write(&path, &whole[..10])?;
        assert!(matches!(
            staging.read(run, 3, three.checksum),
            Err(Error::Corrupt { .. })
        ));
        staging.remove_run(run)?;
        fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn a_block_file_is_reused_three_blocks_later() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("waymark-staging-{}", RunId::new()));
        let staging = Staging::open(&dir)?;
        let run = RunId::new();
        let mut stager = staging.stager(run);
        let mut staged = Vec::new();
        for p in 1..=4 * GROUP {
            staged.push((p, stager.stage(p, &page(p % 5 + 1))?));
            stager.sync()?;
        }
        // Three block files, whatever the number of pages.
        assert_eq!(fs::read_dir(staging.run_dir(run))?.count(), 3);
        for (p, s) in staged {
            let read = staging.read(run, p, s.checksum);
            match p / GROUP {
                // Block 0's file holds block 3, block 1's block 4 (page 4 × GROUP).
                0 | 1 => assert!(matches!(read, Err(Error::Corrupt { .. })), "page {p}"),
                _ => assert_eq!(read?, page(p % 5 + 1), "page {p}"),
            }
        }
        // A file holding another block is started again by a new stager too.
        let mut next = staging.stager(run);
        let p = 6 * GROUP;
        let s = next.stage(p, &page(1))?;
        next.sync()?;
        assert_eq!(staging.read(run, p, s.checksum)?, page(1));
        let start = 3 * GROUP;
        assert!(staging.read(run, start, 0).is_err());
        // A file of another version, even for the same block, is started again too.
        let path = staging.block_path(run, p / GROUP);
        let mut other = fs::read(&path)?;
        other[4] = BLOCK_VERSION + 1;
        fs::write(&path, &other)?;
        let mut next = staging.stager(run);
        let s = next.stage(p + 1, &page(2))?;
        next.sync()?;
        assert_eq!(staging.read(run, p + 1, s.checksum)?, page(2));
        assert_eq!(fs::read(&path)?[4], BLOCK_VERSION);
        fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn pages_staged_by_older_versions_are_read() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("waymark-staging-{}", RunId::new()));
        let staging = Staging::open(&dir)?;
        let run = RunId::new();
        fs::create_dir_all(staging.run_dir(run))?;
        let [slot, per_page] = staging.older_paths(run, 5);
        let (five, five_sum) = encode(&page(5)).ok_or("encode")?;
        fs::write(&slot, &five)?;
        assert_eq!(staging.read(run, 5, five_sum)?, page(5));
        fs::remove_file(&slot)?;
        fs::write(&per_page, &five)?;
        assert_eq!(staging.read(run, 5, five_sum)?, page(5));
        // A slot file holding another page is refused.
        let [slot7, _] = staging.older_paths(run, 7);
        fs::write(&slot7, &five)?;
        assert!(matches!(
            staging.read(run, 7, five_sum ^ 1),
            Err(Error::Corrupt { .. })
        ));
        staging.remove_run(run)?;
        assert!(!per_page.exists());
        fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
