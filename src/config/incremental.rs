//! Compiling a file table by table, and a reload that compiles only the tables that changed.
//!
//! A file is cut before each line that starts with `[users.`: the head (everything before the
//! first cut) and one piece per user table. Each piece is parsed on its own (on every core), its
//! user compiled at once and its parse tree dropped, so a million users never exist as one
//! TOML tree. A reload compares each piece's digest with the previous snapshot's `SourceIndex`:
//! when the head is the same, only the pieces whose text changed are parsed and compiled, and
//! every other user, its slot, its keys and the pages and shards holding them are taken from
//! the previous snapshot.
//!
//! Whenever the pieces could mean anything other than the whole file (a piece that is not
//! exactly one user table, a user id twice, users in the head, an error anywhere), the whole
//! text is compiled by `whole::compile_whole` instead, so results and errors are always
//! exactly those of one parse of the whole file.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::ops::Range;
use std::path::Path;

use memchr::memmem;
use toml::Spanned;

use super::compile::{Head, UserPiece, compile_admins, compile_head, compile_user};
use super::diff::ChangeSummary;
use super::error::{ConfigError, ConfigErrors, Locator};
use super::raw::{RawConfig, RawUser};
use super::whole::{assemble, compile_whole, in_file_order};
use crate::snapshot::{KeyDigest, Snapshot, SourceIndex, UserIndex, shard_selector};

/// A compiled file, and what changed if the compile was an incremental one.
pub struct Compiled {
    pub snapshot: Snapshot,
    /// `None` when the file was compiled in full: then `ChangeSummary::between` says.
    pub changes: Option<ChangeSummary>,
}

/// Compiles the whole file (table by table when it can).
pub fn compile_full(file: &Path, text: &str) -> Result<Snapshot, ConfigErrors> {
    match by_tables(file, text) {
        Some(result) => result,
        None => compile_whole(file, text),
    }
}

/// Compiles `text`, taking from `previous` every user whose table did not change.
pub fn compile_after(
    file: &Path,
    text: &str,
    previous: &Snapshot,
) -> Result<Compiled, ConfigErrors> {
    match reload_after(file, text, previous)? {
        Some(compiled) => Ok(compiled),
        // The same text: compiled again, as asked.
        None => compile_full(file, text).map(|snapshot| Compiled {
            snapshot,
            changes: None,
        }),
    }
}

/// `compile_after` for a reload: `None` when the text is, table for table, the one `previous`
/// was compiled from (then there is nothing to do, and nothing is built).
pub fn reload_after(
    file: &Path,
    text: &str,
    previous: &Snapshot,
) -> Result<Option<Compiled>, ConfigErrors> {
    match only_changed_tables(file, text, previous) {
        Some(Incremental::Same) => return Ok(None),
        Some(Incremental::Compiled(compiled)) => return Ok(Some(*compiled)),
        None => {}
    }
    compile_full(file, text).map(|snapshot| {
        Some(Compiled {
            snapshot,
            changes: None,
        })
    })
}

/// What a reload that streams the file (`reload_streamed`) found.
pub enum Streamed {
    /// The file is, table for table, the one the snapshot serving was compiled from.
    Same,
    Compiled(Box<Compiled>),
    /// Only the whole text can say (the head changed, a table is not one user, an error
    /// anywhere, no user table, the file could not be read): read it whole and compile it with
    /// `reload_after`, which gives the errors with their lines.
    Whole,
}

/// The buffer each part of a streamed reload reads the file through (it grows for a table
/// larger than it).
const STREAM_BUFFER: usize = 1 << 20;

/// A file smaller than this is read by one thread: splitting it would cost more than it saves.
const PARALLEL_FROM: usize = 4 << 20;

/// `reload_after` without the whole text in memory: the file is read through small buffers, cut
/// into tables and each table digested as it goes, by one thread per core, each over its own
/// part of the file; the digests are then matched with the previous file's, and only the text
/// of the head and of the tables that changed is read again and kept. So a revocation among a
/// million users allocates and validates (as UTF-8) a few tables, not the file, and the read
/// (the kernel's copy of 243 MiB, most of the time) is spread over the cores. The file is read,
/// not mapped: a mapping would fault (SIGBUS) if the file were truncated in place.
pub fn reload_streamed(file: &Path, previous: &Snapshot) -> Streamed {
    // (Only how many threads read it: the file may be replaced again before it is opened.)
    let len = std::fs::metadata(file).map_or(0, |m| m.len() as usize);
    let parts = if len < PARALLEL_FROM {
        1
    } else {
        std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(8)
    };
    stream_with(file, previous, STREAM_BUFFER, parts)
}

fn stream_with(file: &Path, previous: &Snapshot, buffer: usize, parts: usize) -> Streamed {
    let Some(index) = previous.source_index.as_ref() else {
        return Streamed::Whole;
    };
    let started = std::time::Instant::now();
    let Ok(Some(kept)) = stream_tables(file, index, buffer, parts) else {
        return Streamed::Whole;
    };
    let scanned = started.elapsed();
    let Kept {
        head,
        digests,
        matched,
        found,
        text,
        tables,
    } = kept;
    // A file without user tables may be blank, which the whole-text path refuses as such.
    if digests.is_empty() {
        return Streamed::Whole;
    }
    // Tables whose digest is the previous file's are that file's text, which was valid UTF-8;
    // a cut is before an ASCII `[`, so the kept pieces are valid exactly when the file is.
    let (Ok(head), Ok(text)) = (String::from_utf8(head), String::from_utf8(text)) else {
        return Streamed::Whole;
    };
    let changed = tables
        .iter()
        .map(|(start, range)| (*start, &text[range.clone()]))
        .collect();
    let cut = Cut {
        head: &head,
        digests,
        matched,
        found,
        changed,
    };
    let compiling = thread_cpu_ns();
    let outcome = match compile_changed(file, cut, previous) {
        Some(Incremental::Same) => Streamed::Same,
        Some(Incremental::Compiled(compiled)) => Streamed::Compiled(compiled),
        None => Streamed::Whole,
    };
    tracing::debug!(
        parts,
        tables_changed = tables.len(),
        scan_and_match_us = scanned.as_micros() as u64,
        compile_us = (started.elapsed() - scanned).as_micros() as u64,
        compile_cpu_us = thread_cpu_ns().saturating_sub(compiling) / 1000,
        "streamed reload"
    );
    outcome
}

/// What `stream_tables` keeps of a file.
struct Kept {
    head: Vec<u8>,
    digests: Vec<u128>,
    matched: Vec<Option<usize>>,
    found: Vec<bool>,
    /// The changed tables' text, one after the other.
    text: Vec<u8>,
    /// Each changed table: where it starts in the file, and where its text is in `text`.
    tables: Vec<(usize, Range<usize>)>,
}

/// Reads the file in `parts` parts at once, each through a buffer of `buffer` bytes, cutting it
/// as `tables` does; `None` as soon as the head is not the previous file's (then the parts stop
/// reading), or when the parts do not fit together (the file changed while it was read: its
/// next event reloads it again).
fn stream_tables(
    file: &Path,
    index: &SourceIndex,
    buffer: usize,
    parts: usize,
) -> std::io::Result<Option<Kept>> {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, Ordering};

    let reader = std::fs::File::open(file)?;
    let len = reader.metadata()?.len() as usize;
    let parts = parts.max(1);
    let each = len.div_ceil(parts).max(1);
    let stop = AtomicBool::new(false);
    let scan = |t: usize| -> std::io::Result<Part> {
        let lo = (t * each).min(len);
        let hi = if t + 1 == parts {
            usize::MAX
        } else {
            ((t + 1) * each).min(len)
        };
        let cpu = thread_cpu_ns();
        let mut part = scan_part(&reader, lo, hi, buffer, &stop)?;
        part.cpu_ns = thread_cpu_ns().saturating_sub(cpu);
        if t == 0 && part.head.as_deref().map(xxhash_rust::xxh3::xxh3_128) != Some(index.head) {
            stop.store(true, Ordering::Relaxed);
        }
        Ok(part)
    };
    let scanned: Vec<std::io::Result<Part>> = if parts == 1 {
        vec![scan(0)]
    } else {
        std::thread::scope(|scope| {
            let scan = &scan;
            let handles: Vec<_> = (1..parts).map(|t| scope.spawn(move || scan(t))).collect();
            let mut all = vec![scan(0)];
            all.extend(handles.into_iter().map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            }));
            all
        })
    };
    if stop.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let mut scanned = scanned
        .into_iter()
        .collect::<std::io::Result<Vec<Part>>>()?;
    let Some(head) = scanned[0].head.take() else {
        return Ok(None);
    };
    // The parts fit together: each part's first table starts where the one before ended (the
    // head's end, for the first), and the last ends where the file did.
    let mut end = head.len();
    let count = scanned.iter().map(|p| p.starts.len()).sum();
    let scan_cpu_ns: u64 = scanned.iter().map(|p| p.cpu_ns).sum();
    let matching = thread_cpu_ns();
    let mut starts = Vec::with_capacity(count + 1);
    let mut digests = Vec::with_capacity(count);
    for part in scanned {
        if let Some(&first) = part.starts.first() {
            if first != end {
                return Ok(None);
            }
            end = part.end;
            starts.extend(part.starts);
            digests.extend(part.digests);
        }
    }
    if !scanned_to_the_end(end, &reader)? {
        return Ok(None);
    }
    starts.push(end);

    let mut matcher = Matcher::new(&index.tables);
    let matched: Vec<Option<usize>> = digests.iter().map(|&d| matcher.next(d)).collect();
    // The changed tables' text, read again: few tables, each checked against its digest.
    let mut text = Vec::new();
    let mut tables = Vec::new();
    for (i, m) in matched.iter().enumerate() {
        if m.is_some() {
            continue;
        }
        let (start, stop) = (starts[i], starts[i + 1]);
        let at = text.len();
        text.resize(at + (stop - start), 0);
        reader.read_exact_at(&mut text[at..], start as u64)?;
        if xxhash_rust::xxh3::xxh3_128(&text[at..]) != digests[i] {
            return Ok(None);
        }
        tables.push((start, at..text.len()));
    }
    tracing::debug!(
        parts,
        scan_cpu_us = scan_cpu_ns / 1000,
        match_cpu_us = thread_cpu_ns().saturating_sub(matching) / 1000,
        "streamed reload: the file read, cut, digested and matched"
    );
    Ok(Some(Kept {
        head,
        digests,
        matched,
        found: matcher.used,
        text,
        tables,
    }))
}

/// Whether the file ends at `end` (it did not grow or shrink while it was read).
fn scanned_to_the_end(end: usize, reader: &std::fs::File) -> std::io::Result<bool> {
    Ok(reader.metadata()?.len() as usize == end)
}

/// What one part of a streamed reload found.
struct Part {
    /// The first part's: everything before the first table.
    head: Option<Vec<u8>>,
    /// Where each table that starts in the part starts, and its digest.
    starts: Vec<usize>,
    digests: Vec<u128>,
    /// Where its last table ends (past the part's end, where the next table starts or the
    /// file ends).
    end: usize,
    /// The CPU time its thread took (with debug logging on only, else 0).
    cpu_ns: u64,
}

/// The calling thread's CPU time so far, user and system, in nanoseconds, when debug logging
/// is on (for the reload's timing line); 0 otherwise.
fn thread_cpu_ns() -> u64 {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return 0;
    }
    // The first field of schedstat: time spent on the CPU.
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The tables that start in `lo..hi` of the file, each read to its end (which may lie past
/// `hi`) and digested; for `lo == 0`, the head too. A table starts at 0 when the file does with
/// `[users.`, or after a newline.
fn scan_part(
    reader: &std::fs::File,
    lo: usize,
    hi: usize,
    buffer: usize,
    stop: &std::sync::atomic::AtomicBool,
) -> std::io::Result<Part> {
    use std::os::unix::fs::FileExt;

    let finder = memmem::Finder::new(TABLE_START);
    let mut buf = vec![0u8; buffer.max(2 * TABLE_START.len())];
    let mut part = Part {
        head: None,
        starts: Vec::new(),
        digests: Vec::new(),
        end: lo,
        cpu_ns: 0,
    };
    // `buf[..filled]` holds the file from `base`. The piece being cut (the head, or a table
    // that starts in the part) starts at `open`; cuts are searched for from `search` (offsets
    // in `buf`). Reading starts a byte early, to see the newline before a table at `lo`.
    let mut base = lo.saturating_sub(1);
    let (mut filled, mut search) = (0, 0);
    let mut open: Option<usize> = None;
    let mut eof = false;
    let mut first = true;
    loop {
        while filled < buf.len() && !eof {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(part);
            }
            match reader.read_at(&mut buf[filled..], (base + filled) as u64) {
                Ok(0) => eof = true,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if first {
            first = false;
            if lo == 0 {
                if buf[..filled].starts_with(&TABLE_START[1..]) {
                    part.head = Some(Vec::new());
                    open = Some(0);
                    part.starts.push(0);
                } else {
                    open = Some(0);
                }
            }
        }
        while let Some(i) = finder.find(&buf[search..filled]) {
            let cut = search + i + 1;
            search = cut;
            let at = base + cut;
            if at < lo {
                continue;
            }
            if let Some(from) = open {
                close(&mut part, &buf[from..cut], lo);
            }
            if at >= hi {
                part.end = at;
                return Ok(part);
            }
            part.starts.push(at);
            open = Some(cut);
        }
        if eof {
            if let Some(from) = open {
                close(&mut part, &buf[from..filled], lo);
            }
            part.end = base + filled;
            return Ok(part);
        }
        // What is still needed moves to the front: the open piece, or the bytes a cut
        // straddling the refill could start in; the buffer grows when the piece fills it.
        let keep = open
            .unwrap_or(filled)
            .min(filled.saturating_sub(TABLE_START.len() - 1));
        let keep = keep.min(search);
        buf.copy_within(keep..filled, 0);
        base += keep;
        filled -= keep;
        search = filled
            .saturating_sub(TABLE_START.len() - 1)
            .max(search - keep);
        if let Some(from) = open.as_mut() {
            *from -= keep;
        }
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
    }
}

/// Ends the piece being cut: the head (for the part at 0, before its first table), or a table.
fn close(part: &mut Part, piece: &[u8], lo: usize) {
    if lo == 0 && part.head.is_none() {
        part.head = Some(piece.to_vec());
    } else {
        part.digests.push(xxhash_rust::xxh3::xxh3_128(piece));
    }
}

fn digest(text: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(text.as_bytes())
}

/// A file cut into its head and user tables, each table with its digest.
struct Tables {
    /// Where the head ends: the first table's start, or the text's end.
    head_end: usize,
    ranges: Vec<Range<usize>>,
    digests: Vec<u128>,
}

const TABLE_START: &[u8] = b"\n[users.";

/// Cuts the text before each line that starts with `[users.` and digests each table, in one
/// pass over the bytes on every core: each thread finds the tables that start in its part of
/// the text and digests each one as soon as it has found its end, while its bytes are in cache.
fn tables(text: &str) -> Tables {
    let bytes = text.as_bytes();
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(8);
    let parts = if bytes.len() < (1 << 20) { 1 } else { threads };
    let each = bytes.len().div_ceil(parts).max(1);
    let part = |t: usize| tables_starting_in(text, t * each, ((t + 1) * each).min(bytes.len()));
    let found: Vec<(Vec<Range<usize>>, Vec<u128>)> = if parts == 1 {
        vec![part(0)]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..parts).map(|t| scope.spawn(move || part(t))).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        })
    };
    let count = found.iter().map(|(r, _)| r.len()).sum();
    let mut ranges = Vec::with_capacity(count);
    let mut digests = Vec::with_capacity(count);
    for (r, d) in found {
        ranges.extend(r);
        digests.extend(d);
    }
    let head_end = ranges.first().map_or(text.len(), |r| r.start);
    Tables {
        head_end,
        ranges,
        digests,
    }
}

/// The tables that start in `lo..hi`, each to its end (which may lie past `hi`), and their
/// digests. A table starts at 0 when the text does with `[users.`, or after a newline.
fn tables_starting_in(text: &str, lo: usize, hi: usize) -> (Vec<Range<usize>>, Vec<u128>) {
    let bytes = text.as_bytes();
    let finder = memmem::Finder::new(TABLE_START);
    // The next table start at or after `from`.
    let next_start = |from: usize| -> Option<usize> {
        if from == 0 && bytes.starts_with(&TABLE_START[1..]) {
            return Some(0);
        }
        let search = from.saturating_sub(1);
        finder.find(&bytes[search..]).map(|i| search + i + 1)
    };
    let mut ranges = Vec::new();
    let mut digests = Vec::new();
    let mut start = match next_start(lo) {
        Some(s) if s < hi => s,
        _ => return (ranges, digests),
    };
    loop {
        let next = next_start(start + 1);
        let end = next.unwrap_or(bytes.len());
        ranges.push(start..end);
        digests.push(digest(&text[start..end]));
        match next {
            Some(s) if s < hi => start = s,
            _ => return (ranges, digests),
        }
    }
}

/// `f(0..n)` on every core (in order), for work worth spreading.
fn spread<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(8);
    if n < 1024 || threads < 2 {
        return (0..n).map(f).collect();
    }
    let each = n.div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let parts: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t * each..((t + 1) * each).min(n))
                        .map(f)
                        .collect::<Vec<T>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for part in parts {
            match part.join() {
                Ok(items) => all.extend(items),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        all
    })
}

/// The head parsed and compiled, and its raw form (for the admins, compiled once the keys are
/// known); `None` if it fails to parse or holds users (whole-file cases).
fn head_of(loc: &Locator<'_>, head: &str) -> Option<(Head, Vec<ConfigError>, RawConfig)> {
    let raw: RawConfig = toml::from_str(head).ok()?;
    if !raw.users.is_empty() {
        return None;
    }
    let (compiled, errors) = compile_head(loc, &raw);
    Some((compiled, errors, raw))
}

/// One user table parsed on its own, its spans moved to where it stands in the whole text;
/// `None` unless it is exactly one user table.
fn parse_table(table: &str, start: usize) -> Option<(Spanned<String>, Spanned<RawUser>)> {
    let raw: RawConfig = toml::from_str(table).ok()?;
    let RawConfig {
        server: None,
        upstreams,
        routes,
        groups,
        users,
        admins,
        rate_limits: None,
    } = raw
    else {
        return None;
    };
    if !upstreams.is_empty()
        || !routes.is_empty()
        || !groups.is_empty()
        || !admins.is_empty()
        || users.len() != 1
    {
        return None;
    }
    let (id, user) = users.into_iter().next()?;
    Some((
        super::parse::shift(id, start),
        super::parse::shift_user(user, start),
    ))
}

/// One user table compiled: `table` is its text, `start` where it starts in the file.
fn table_piece(loc: &Locator<'_>, head: &Head, table: &str, start: usize) -> Option<UserPiece> {
    let (id, user) = parse_table(table, start)?;
    Some(compile_user(loc, head, &id, &user))
}

/// The full compile, table by table; `None` where only the whole-file compile is exact.
fn by_tables(file: &Path, text: &str) -> Option<Result<Snapshot, ConfigErrors>> {
    let loc = Locator::new(file, text);
    let Tables {
        head_end,
        ranges,
        digests,
    } = tables(text);
    let (head, mut errors, raw_head) = head_of(&loc, &text[..head_end])?;
    let pieces = spread(ranges.len(), |i| {
        let range = &ranges[i];
        table_piece(&loc, &head, &text[range.clone()], range.start)
    });
    let pieces: Vec<UserPiece> = pieces.into_iter().collect::<Option<_>>()?;
    let mut key_index = KeyIndex::with_capacity(pieces.len());
    for piece in &pieces {
        key_index.push(piece.keys.iter().map(|k| shard_selector(&k.digest)));
    }
    let (mut snapshot, slots) = assemble(&loc, head, pieces, &mut errors, &raw_head)?;
    if !errors.is_empty() {
        return Some(Err(in_file_order(errors)));
    }
    snapshot.source_index = Some(key_index.finish(digest(&text[..head_end]), digests, slots));
    Some(Ok(snapshot))
}

/// A `SourceIndex`'s key selectors, built table by table.
struct KeyIndex {
    ends: Vec<u32>,
    selectors: Vec<u32>,
}

impl KeyIndex {
    fn with_capacity(tables: usize) -> KeyIndex {
        KeyIndex {
            ends: Vec::with_capacity(tables),
            selectors: Vec::with_capacity(tables),
        }
    }

    /// The next table's keys.
    fn push(&mut self, selectors: impl IntoIterator<Item = u32>) {
        self.selectors.extend(selectors);
        self.ends.push(self.selectors.len() as u32);
    }

    /// The keys of `index`'s tables `tables`, as the next tables.
    fn extend_from(&mut self, index: &SourceIndex, tables: Range<usize>) {
        let from = if tables.start == 0 {
            0
        } else {
            index.key_ends[tables.start - 1]
        };
        let to = index.key_ends[tables.end - 1];
        let shift = self.selectors.len() as u32;
        self.selectors
            .extend_from_slice(&index.key_selectors[from as usize..to as usize]);
        self.ends
            .extend(index.key_ends[tables].iter().map(|&end| end - from + shift));
    }

    fn finish(self, head: u128, tables: Vec<u128>, slots: Vec<UserIndex>) -> SourceIndex {
        SourceIndex {
            head,
            tables: tables.into_boxed_slice(),
            slots: slots.into_boxed_slice(),
            key_ends: self.ends.into_boxed_slice(),
            key_selectors: self.selectors.into_boxed_slice(),
        }
    }
}

/// How far ahead in the previous file's tables a table is looked for, from where the last
/// match was and from where it would be after the tables missed since.
const LOOK_AHEAD: usize = 8;

/// For each new table digest, the index of the same table in `old` (each used once), and which
/// of `old` were found. One pass, and no map unless more than `LOOK_AHEAD` tables in a row are
/// new: a table that moved is otherwise simply compiled again (what it is, not where it was,
/// is what the result depends on).
fn match_tables(old: &[u128], new: &[u128]) -> (Vec<Option<usize>>, Vec<bool>) {
    let mut matcher = Matcher::new(old);
    let matched = new.iter().map(|&d| matcher.next(d)).collect();
    (matched, matcher.used)
}

/// `match_tables` one table at a time, in file order: a table's match depends only on the
/// tables before it, so it is known as soon as the table is read.
struct Matcher<'a> {
    old: &'a [u128],
    /// Which of `old` were matched.
    used: Vec<bool>,
    by_digest: Option<HashMap<u128, usize, BuildHasherDefault<TableHasher>>>,
    next: usize,
    misses: usize,
}

impl<'a> Matcher<'a> {
    fn new(old: &'a [u128]) -> Matcher<'a> {
        Matcher {
            old,
            used: vec![false; old.len()],
            by_digest: None,
            next: 0,
            misses: 0,
        }
    }

    /// The match of the next table, whose digest is `d`.
    fn next(&mut self, d: u128) -> Option<usize> {
        let old = self.old;
        let window = |from: usize, used: &[bool]| {
            (from..(from + LOOK_AHEAD).min(old.len())).find(|&j| !used[j] && old[j] == d)
        };
        let mut found =
            window(self.next, &self.used).or_else(|| window(self.next + self.misses, &self.used));
        if found.is_none() && self.misses >= LOOK_AHEAD {
            let map = self.by_digest.get_or_insert_with(|| {
                let mut map = HashMap::with_capacity_and_hasher(old.len(), Default::default());
                for (j, &o) in old.iter().enumerate().rev() {
                    map.insert(o, j);
                }
                map
            });
            found = map.get(&d).copied().filter(|&j| !self.used[j]);
        }
        match found {
            Some(j) => {
                self.used[j] = true;
                self.next = j + 1;
                self.misses = 0;
            }
            None => self.misses += 1,
        }
        found
    }
}

/// A table digest is already uniform: its low 64 bits are the hash.
#[derive(Default)]
struct TableHasher(u64);

impl std::hash::Hasher for TableHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

/// What the incremental compile found.
enum Incremental {
    /// The text is, table for table, the previous one's.
    Same,
    Compiled(Box<Compiled>),
}

/// The incremental compile; `None` where only a full compile is exact (then it runs instead).
///
/// Its work beyond one pass over the text (cutting and digesting it) is one pass over the
/// table digests (matching them with the previous file's, and the new index), and, for the
/// tables that changed only, parsing and compiling them, looking their old keys up in the few
/// shards that hold them, and the summary of what changed: nothing is allocated or looked up
/// for a user whose table did not change.
fn only_changed_tables(file: &Path, text: &str, previous: &Snapshot) -> Option<Incremental> {
    let index = previous.source_index.as_ref()?;
    let Tables {
        head_end,
        ranges,
        digests,
    } = tables(text);
    if digest(&text[..head_end]) != index.head {
        return None;
    }
    let (matched, found) = match_tables(&index.tables, &digests);
    let changed = ranges
        .iter()
        .zip(&matched)
        .filter(|(_, m)| m.is_none())
        .map(|(r, _)| (r.start, &text[r.clone()]))
        .collect();
    let cut = Cut {
        head: &text[..head_end],
        digests,
        matched,
        found,
        changed,
    };
    compile_changed(file, cut, previous)
}

/// A file cut into tables and matched with the previous file's: what the incremental compile
/// needs of it (the text of the head and of the changed tables only).
struct Cut<'t> {
    /// Everything before the first table; its digest is the previous file's.
    head: &'t str,
    /// Every table's digest, in file order.
    digests: Vec<u128>,
    /// Each table's match among the previous file's (`match_tables`).
    matched: Vec<Option<usize>>,
    /// Which of the previous file's tables were matched.
    found: Vec<bool>,
    /// The tables matched with none, in order: where each starts in the file, and its text.
    changed: Vec<(usize, &'t str)>,
}

/// The incremental compile of a file cut by `tables` or read by `stream_tables`. Errors are
/// never reported from here (any error is `None`, and the whole text is compiled instead), so
/// only the head's text is needed to locate them.
fn compile_changed(file: &Path, cut: Cut<'_>, previous: &Snapshot) -> Option<Incremental> {
    let index = previous.source_index.as_ref()?;
    let Cut {
        head: head_text,
        digests: tables,
        matched,
        found,
        changed,
    } = cut;
    let same = tables.len() == index.tables.len()
        && matched.iter().enumerate().all(|(i, m)| *m == Some(i));
    if same {
        return Some(Incremental::Same);
    }
    let loc = Locator::new(file, head_text);
    let (head, head_errors, raw_head) = head_of(&loc, head_text)?;
    if !head_errors.is_empty() {
        return None;
    }
    let pieces = spread(changed.len(), |c| {
        let (start, table) = changed[c];
        table_piece(&loc, &head, table, start)
    });
    let mut fresh = Vec::with_capacity(pieces.len());
    for piece in pieces {
        let piece = piece?;
        if !piece.errors.is_empty() || piece.user.is_none() {
            return None;
        }
        fresh.push(piece);
    }

    // The previous file's tables that are not in this one: their users were removed or changed.
    let gone: Vec<usize> = (0..index.tables.len()).filter(|&j| !found[j]).collect();
    let gone_slots: HashSet<UserIndex> = gone.iter().map(|&j| index.slots[j]).collect();
    let mut claimed: HashSet<UserIndex> = HashSet::new();
    let mut fresh_ids: HashSet<&str> = HashSet::with_capacity(fresh.len());
    let mut places = Vec::with_capacity(fresh.len());
    for piece in &fresh {
        if !fresh_ids.insert(piece.id.as_str()) {
            return None;
        }
        match previous.users.index_of(&piece.id) {
            // Its table changed: it keeps its slot.
            Some(slot) if gone_slots.contains(&slot) => {
                claimed.insert(slot);
                places.push(Some(slot));
            }
            // The id is also in a table that did not change: a duplicate, which only the
            // whole-file parse reports exactly.
            Some(_) => return None,
            None => places.push(None),
        }
    }

    // Their keys, found in the shards the index names for their tables.
    let mut keys = previous.keys.edit();
    let mut old_keys: Vec<(KeyDigest, UserIndex)> = Vec::new();
    let mut removed = Vec::new();
    for &j in &gone {
        let slot = index.slots[j];
        for &selector in index.selectors(j) {
            keys.remove_user_keys(selector, slot, &mut removed);
        }
        old_keys.extend(removed.drain(..).map(|d| (d, slot)));
    }
    let mut users = previous.users.edit();
    for &j in &gone {
        let slot = index.slots[j];
        if !claimed.contains(&slot) {
            users.remove(slot);
        }
    }
    // Client certificates are few (devices, not every user): the map is copied whole.
    let mut certificates = previous.client_certificates.clone();
    if !gone_slots.is_empty() && !certificates.is_empty() {
        certificates.retain(|_, slot| !gone_slots.contains(slot));
    }
    let mut piece_slots = Vec::with_capacity(fresh.len());
    let mut new_pairs: Vec<(KeyDigest, usize)> = Vec::new();
    for (n, (piece, place)) in fresh.iter_mut().zip(&places).enumerate() {
        let user = piece.user.take()?;
        let slot = match place {
            Some(slot) => {
                users.replace(*slot, user);
                *slot
            }
            None => users.add(user),
        };
        for k in &piece.keys {
            if keys.contains_key(&k.digest) {
                return None;
            }
            let mut key = k.key.clone();
            key.user = slot;
            keys.insert(k.digest, key);
            new_pairs.push((k.digest, n));
        }
        for (digest, _) in &piece.certificates {
            if certificates.insert(*digest, slot).is_some() {
                return None;
            }
        }
        piece_slots.push(slot);
    }
    let mut slots = Vec::with_capacity(tables.len());
    let mut key_index = KeyIndex::with_capacity(tables.len());
    let mut next_fresh = 0;
    let mut i = 0;
    while i < matched.len() {
        match matched[i] {
            // A run of the previous file's tables in their order: copied as slices.
            Some(j) => {
                let run = 1 + matched[i + 1..]
                    .iter()
                    .zip(j + 1..)
                    .take_while(|(m, k)| **m == Some(*k))
                    .count();
                slots.extend_from_slice(&index.slots[j..j + run]);
                key_index.extend_from(index, j..j + run);
                i += run;
            }
            None => {
                i += 1;
                slots.push(piece_slots[next_fresh]);
                key_index.push(
                    fresh[next_fresh]
                        .keys
                        .iter()
                        .map(|k| shard_selector(&k.digest)),
                );
                next_fresh += 1;
            }
        }
    }
    let keys = keys.finish();
    // The admins' tokens must still be no user's key.
    let (admins, admin_tokens, admin_errors) = compile_admins(&loc, &raw_head, &keys);
    if !admin_errors.is_empty() {
        return None;
    }
    let mut snapshot = head.into_snapshot(file, users.finish(), keys, (admins, admin_tokens));
    snapshot.client_certificates = certificates;
    snapshot.source_index = Some(key_index.finish(index.head, tables, slots));

    // What changed, from the changed tables alone.
    let old_pairs: HashSet<(&KeyDigest, &str)> = old_keys
        .iter()
        .map(|(d, slot)| (d, &*previous.user(*slot).id))
        .collect();
    let new_pairs: HashSet<(&KeyDigest, &str)> = new_pairs
        .iter()
        .map(|(d, n)| (d, fresh[*n].id.as_str()))
        .collect();
    let ids: Vec<&str> = gone
        .iter()
        .map(|&j| &*previous.user(index.slots[j]).id)
        .chain(fresh.iter().map(|p| p.id.as_str()))
        .collect();
    let changes = ChangeSummary::of_users(previous, &snapshot, ids, &old_pairs, &new_pairs);
    Some(Incremental::Compiled(Box::new(Compiled {
        snapshot,
        changes: Some(changes),
    })))
}

#[cfg(test)]
mod tests;
