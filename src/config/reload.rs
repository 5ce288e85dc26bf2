//! Loading and reloading: file events and SIGHUP feed one channel; each reload reads, compiles and
//! either swaps in a complete new `Snapshot` or keeps the current one and reports why.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::mpsc;

use super::diff::ChangeSummary;
use super::error::{ConfigErrors, whole_file};
use super::guard::{self, Baseline};
use super::incremental::Streamed;
use crate::snapshot::Snapshot;

/// What one reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// A new snapshot is serving.
    Applied {
        generation: u64,
        changes: ChangeSummary,
        /// `[server]` settings that changed but only take effect after a restart.
        restart_required: Vec<&'static str>,
    },
    /// The file's bytes are the ones already loaded: nothing to do.
    Unchanged,
    /// The file's bytes are the ones already loaded, after a refused edit: the file is back in
    /// line with what is served, so the stale failure is cleared.
    BackInLine,
    /// The file is not there (a rename in progress, or deleted): the current snapshot keeps serving.
    Missing,
    /// The file was refused; the current snapshot keeps serving.
    Refused(ConfigErrors),
}

/// The last reload error, for status pages.
#[derive(Debug, Clone)]
pub struct ReloadFailure {
    pub at_unix: i64,
    pub message: String,
}

/// Holds the current snapshot and everything known about how it was loaded.
pub struct ConfigStore {
    path: PathBuf,
    current: ArcSwap<Snapshot>,
    loaded_digest: Mutex<u128>,
    /// The digest of the PEM files the snapshot serving read (`files_digest`).
    loaded_files_digest: Mutex<u128>,
    last_failure: Mutex<Option<ReloadFailure>>,
    generation: AtomicU64,
    loaded_at_unix: AtomicU64,
    reloads_applied: AtomicU64,
    reloads_failed: AtomicU64,
    /// Serialises reloads: a SIGHUP and a file event must not compile the same file twice at once.
    reload_lock: Mutex<()>,
    /// The file as the last load or reload opened it, kept open until the next reload has
    /// finished. A file renamed over it then does not free the replaced file's pages and blocks
    /// inside that rename (about 150 ms for 243 MiB on ext4, while the new file waits to be
    /// read) but here, once its successor is serving.
    held: Mutex<Option<std::fs::File>>,
}

impl ConfigStore {
    /// The first load. It runs the same read-and-compile pipeline as every reload.
    pub fn open(path: &Path) -> Result<Arc<ConfigStore>, ConfigErrors> {
        let held = std::fs::File::open(path).ok();
        let (text_digest, snapshot) = match read_and_compile(path) {
            Ok(v) => v,
            Err(ReadError::Missing) => {
                return Err(ConfigErrors(vec![whole_file(
                    path,
                    "the configuration file does not exist: create it, or pass --config PATH",
                )]));
            }
            Err(ReadError::Invalid(e)) => return Err(e),
        };
        release_freed_memory();
        let files = files_digest(&snapshot.tls_files);
        let store = ConfigStore {
            path: path.to_path_buf(),
            current: ArcSwap::from_pointee(snapshot),
            loaded_digest: Mutex::new(text_digest),
            loaded_files_digest: Mutex::new(files),
            last_failure: Mutex::new(None),
            generation: AtomicU64::new(1),
            loaded_at_unix: AtomicU64::new(now_unix() as u64),
            reloads_applied: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            reload_lock: Mutex::new(()),
            held: Mutex::new(held),
        };
        Ok(Arc::new(store))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The snapshot serving now. Cheap (no reference-count traffic); hold it briefly.
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn loaded_at_unix(&self) -> i64 {
        self.loaded_at_unix.load(Ordering::Relaxed) as i64
    }

    pub fn reloads_applied(&self) -> u64 {
        self.reloads_applied.load(Ordering::Relaxed)
    }

    pub fn reloads_failed(&self) -> u64 {
        self.reloads_failed.load(Ordering::Relaxed)
    }

    pub fn last_failure(&self) -> Option<ReloadFailure> {
        self.last_failure.lock().map(|f| f.clone()).unwrap_or(None)
    }

    /// Reads the file again and swaps in the result if it is valid. Blocking: call it off the
    /// async workers (`spawn_blocking`), since a large file takes a while to compile.
    pub fn reload(&self) -> ReloadOutcome {
        let _serial = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let opened = std::fs::File::open(&self.path).ok();
        let outcome = self.reload_serialised();
        // The file the last reload read is let go only now: if it was replaced, freeing it
        // happens here, after the swap, not in the rename that replaced it (`held`).
        let replaced = std::mem::replace(
            &mut *self.held.lock().unwrap_or_else(|p| p.into_inner()),
            opened,
        );
        drop(replaced);
        outcome
    }

    /// `reload`, with the reload lock held.
    fn reload_serialised(&self) -> ReloadOutcome {
        let started = Instant::now();
        let current = self.current.load_full();
        // The PEM files it read ([server.tls], upstream `ca`s): changed, the file is compiled
        // again although its text is the same (a renewed certificate).
        let files_same = files_digest(&current.tls_files)
            == *self
                .loaded_files_digest
                .lock()
                .unwrap_or_else(|p| p.into_inner());
        // A snapshot with a source index says itself whether the file is the one it was
        // compiled from (its head and every table's digest), and which tables changed: the file
        // is streamed through a small buffer and only those tables are kept and compiled
        // (`incremental::reload_streamed`). Whatever that cannot settle exactly (an error
        // above all, to be reported with its line) reads the whole text.
        let streamed = if files_same && current.source_index.is_some() {
            super::incremental::reload_streamed(&self.path, &current)
        } else {
            Streamed::Whole
        };
        let (snapshot, changes, text) = match streamed {
            Streamed::Same => return self.unchanged(),
            Streamed::Compiled(c) => (c.snapshot, c.changes, None),
            Streamed::Whole => match self.compile_text(&current, files_same) {
                Ok((snapshot, changes, text)) => (snapshot, changes, Some(text)),
                Err(outcome) => return outcome,
            },
        };
        // A file that would serve nothing, or lose most users, keeps the current one serving.
        let admitted = guard::admit(&self.path, &snapshot, &Baseline::of(&current), || {
            changes.as_ref().map_or_else(
                || guard::removed_between(&current, &snapshot),
                |c| c.users_removed.len(),
            )
        });
        drop(current);
        if let Err(e) = admitted {
            return self.refused(e);
        }
        // Swap first: what changed is worked out afterwards (when the compile did not already
        // say), for the log, off the critical path between the file landing and the new keys
        // being enforced; so is the digest of the text, needed only when the new snapshot has
        // no source index.
        let snapshot = Arc::new(snapshot);
        let compiled = started.elapsed();
        // The failure is cleared before the swap and the generation counted right after it, so
        // that whoever sees the new snapshot serving (a status page, a test) never sees the
        // refusal it replaced, nor the generation before it.
        if let Ok(mut f) = self.last_failure.lock() {
            *f = None;
        }
        let previous = self.current.swap(Arc::clone(&snapshot));
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.loaded_at_unix
            .store(now_unix() as u64, Ordering::Relaxed);
        tracing::debug!(
            streamed = text.is_none(),
            compiled_us = compiled.as_micros() as u64,
            swapped_us = started.elapsed().as_micros() as u64,
            "reload: new snapshot serving"
        );
        if let (None, Some(text)) = (&snapshot.source_index, &text) {
            *self.loaded_digest.lock().unwrap_or_else(|p| p.into_inner()) = text_digest(text);
        }
        *self
            .loaded_files_digest
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = files_digest(&snapshot.tls_files);
        drop(text);
        let changes = changes.unwrap_or_else(|| ChangeSummary::between(&previous, &snapshot));
        let restart_required = restart_required(&previous, &snapshot);
        // The old snapshot is freed here, on the reload thread, not on a request's.
        drop(previous);
        release_freed_memory();
        self.reloads_applied.fetch_add(1, Ordering::Relaxed);
        ReloadOutcome::Applied {
            generation,
            changes,
            restart_required,
        }
    }

    /// The whole text read and compiled (after `current`, taking its unchanged user tables);
    /// `Err` is the outcome when there is nothing to swap in.
    fn compile_text(
        &self,
        current: &Snapshot,
        files_same: bool,
    ) -> Result<(Snapshot, Option<ChangeSummary>, String), ReloadOutcome> {
        let text = match read_retrying(&self.path) {
            Ok(t) => t,
            Err(ReadError::Missing) => return Err(ReloadOutcome::Missing),
            Err(ReadError::Invalid(e)) => return Err(self.refused(e)),
        };
        // Without a source index, the whole text's digest says whether it is the one loaded.
        if current.source_index.is_none() && files_same {
            let digest = text_digest(&text);
            if *self.loaded_digest.lock().unwrap_or_else(|p| p.into_inner()) == digest {
                return Err(self.unchanged());
            }
        }
        if let Err(e) = guard::refuse_blank(&self.path, &text) {
            return Err(self.refused(e));
        }
        // Only the user tables whose text changed are compiled; the rest is taken from the
        // snapshot serving now (`incremental`).
        let compiled = if files_same {
            super::incremental::reload_after(&self.path, &text, current)
        } else {
            super::incremental::compile_after(&self.path, &text, current).map(Some)
        };
        match compiled {
            Ok(Some(c)) => Ok((c.snapshot, c.changes, text)),
            Ok(None) => Err(self.unchanged()),
            Err(e) => Err(self.refused(e)),
        }
    }

    /// The file's bytes are those loaded: a stale failure (a refused edit since undone) is cleared.
    fn unchanged(&self) -> ReloadOutcome {
        let stale = self
            .last_failure
            .lock()
            .map(|mut f| f.take())
            .unwrap_or(None);
        match stale {
            Some(_) => ReloadOutcome::BackInLine,
            None => ReloadOutcome::Unchanged,
        }
    }

    fn refused(&self, errors: ConfigErrors) -> ReloadOutcome {
        self.reloads_failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.last_failure.lock() {
            *f = Some(ReloadFailure {
                at_unix: now_unix(),
                message: errors.to_string(),
            });
        }
        ReloadOutcome::Refused(errors)
    }
}

/// Gives the pages of the freed parse tree and of a replaced snapshot back to the system. The
/// allocator keeps them otherwise: at 100,000 users the process stays at 620 MB resident after
/// compiling, against 68 MB once collected (docs/benchmarks.md). It runs on the reload thread,
/// after the swap, never on a request's.
#[allow(unsafe_code)]
fn release_freed_memory() {
    // SAFETY: mi_collect takes no pointers and has no preconditions; it only returns the
    // allocator's own free pages to the system.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}

/// Settings read once at start-up; a reload that changes them says so instead of ignoring it.
fn restart_required(old: &Snapshot, new: &Snapshot) -> Vec<&'static str> {
    let (a, b) = (&old.server, &new.server);
    let mut fields = Vec::new();
    if a.listen != b.listen {
        fields.push("listen");
    }
    if a.admin_listen != b.admin_listen {
        fields.push("admin_listen");
    }
    if a.workers != b.workers {
        fields.push("workers");
    }
    if a.worker_runtime != b.worker_runtime {
        fields.push("worker_runtime");
    }
    if a.access_log != b.access_log {
        fields.push("access_log");
    }
    fields
}

enum ReadError {
    Missing,
    Invalid(ConfigErrors),
}

fn read_and_compile(path: &Path) -> Result<(u128, Snapshot), ReadError> {
    let text = read_retrying(path)?;
    guard::refuse_blank(path, &text).map_err(ReadError::Invalid)?;
    let snapshot = super::compile(path, &text).map_err(ReadError::Invalid)?;
    Ok((text_digest(&text), snapshot))
}

/// Reads the file; a file that is missing for a moment (delete-and-recreate saves) is retried briefly.
fn read_retrying(path: &Path) -> Result<String, ReadError> {
    let mut attempts = 0;
    loop {
        match std::fs::read_to_string(path) {
            Ok(text) => return Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                attempts += 1;
                if attempts >= 5 {
                    return Err(ReadError::Missing);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(ReadError::Invalid(ConfigErrors(vec![whole_file(
                    path,
                    format!("cannot read the configuration file: {e}"),
                )])));
            }
        }
    }
}

/// Whether the file's bytes are the ones loaded. Not SHA-256: at a million users that alone
/// would take a large part of a revocation's time, and nothing here is adversarial.
fn text_digest(text: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(text.as_bytes())
}

/// The digest of the PEM files a snapshot read, as they are now (names and contents; a file
/// that cannot be read counts as such), so that a renewed certificate reloads although the
/// configuration's text is unchanged. 0 without any.
fn files_digest(files: &[PathBuf]) -> u128 {
    if files.is_empty() {
        return 0;
    }
    let mut hash = xxhash_rust::xxh3::Xxh3::new();
    for file in files {
        hash.update(file.as_os_str().as_encoded_bytes());
        match std::fs::read(file) {
            Ok(bytes) => {
                hash.update(&(bytes.len() as u64).to_le_bytes());
                hash.update(&bytes);
            }
            Err(_) => hash.update(&u64::MAX.to_le_bytes()),
        }
    }
    hash.digest128()
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Why a reload was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadTrigger {
    FileEvent,
    /// A file renamed into place (or a symlink swapped there): complete at once, so the reload
    /// starts without waiting for the events of a save to settle.
    FileRenamed,
    Signal,
    /// An edit through the admin API or console, answered only once it is serving.
    AdminEdit,
}

/// Reloads at once and logs the outcome, for an edit that must be serving before it is
/// answered (the admin API). Blocking, like `ConfigStore::reload`.
pub fn reload_now(store: &ConfigStore) -> ReloadOutcome {
    let outcome = store.reload();
    log_outcome(store, ReloadTrigger::AdminEdit, &outcome);
    outcome
}

/// Events closer together than this are one save.
const QUIET: Duration = Duration::from_millis(10);
/// A stream of events never delays a reload longer than this.
const MAX_DEBOUNCE: Duration = Duration::from_millis(200);

/// The watch on the configuration file: its directory (not its inode, so rename-over saves and
/// Kubernetes `..data` symlink swaps are seen) and, when the path is a symlink, the directory of
/// every link on the way and of the file it resolves to (where `apiward users ...` writes).
/// After each relevant event the path is resolved again and the watched directories follow.
/// Dropping it stops the watch.
pub struct ConfigWatch {
    notes: std::sync::mpsc::Sender<Note>,
    thread: Option<std::thread::JoinHandle<()>>,
}

enum Note {
    Changed,
    /// The PEM files of the snapshot serving: their directories are watched, their names followed.
    Follow(Vec<PathBuf>),
    Stop,
}

impl ConfigWatch {
    /// Also reloads when one of `files` (the PEM files of the snapshot serving) changes.
    pub fn follow(&self, files: &[PathBuf]) {
        let _ = self.notes.send(Note::Follow(files.to_vec()));
    }
}

impl Drop for ConfigWatch {
    fn drop(&mut self) {
        let _ = self.notes.send(Note::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What to watch for one configuration path: directories, and the file names in them that
/// concern it.
#[derive(Debug, Default, PartialEq)]
struct Watched {
    dirs: Vec<PathBuf>,
    names: Vec<std::ffi::OsString>,
}

impl Watched {
    /// Follows `path`'s symlinks (at most 40 hops, as the kernel does) to the file itself.
    fn resolve(path: &Path) -> Watched {
        let mut watched = Watched::default();
        let add = |watched: &mut Watched, p: &Path| {
            let dir = parent_dir(p);
            // By the directory's real path: `..data/` names a different directory after a swap.
            let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
            if !watched.dirs.contains(&dir) {
                watched.dirs.push(dir);
            }
            if let Some(name) = p.file_name()
                && !watched.names.iter().any(|n| n == name)
            {
                watched.names.push(name.to_os_string());
            }
        };
        let mut hop = path.to_path_buf();
        for _ in 0..40 {
            add(&mut watched, &hop);
            match std::fs::read_link(&hop) {
                Ok(target) if target.is_absolute() => hop = target,
                Ok(target) => hop = parent_dir(&hop).join(target),
                Err(_) => break,
            }
        }
        if let Ok(real) = std::fs::canonicalize(path) {
            add(&mut watched, &real);
        }
        watched
    }

    /// The directories and names of some files (the PEM files a snapshot read).
    fn files(files: &[PathBuf]) -> Watched {
        let mut watched = Watched::default();
        for file in files {
            let dir = parent_dir(file);
            let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
            if !watched.dirs.contains(&dir) {
                watched.dirs.push(dir);
            }
            if let Some(name) = file.file_name()
                && !watched.names.iter().any(|n| n == name)
            {
                watched.names.push(name.to_os_string());
            }
        }
        watched
    }

    fn concerns(names: &[std::ffi::OsString], event: &notify::Event) -> bool {
        event.paths.iter().any(|p| {
            p.file_name().is_some_and(|n| {
                names.iter().any(|w| w == n) || n.to_string_lossy().starts_with("..")
            })
        })
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Watches the configuration file (see `ConfigWatch`) and sends a trigger for each relevant event.
pub fn watch_file(
    path: &Path,
    triggers: mpsc::UnboundedSender<ReloadTrigger>,
) -> notify::Result<ConfigWatch> {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
    use notify::{RecursiveMode, Watcher};
    use std::sync::RwLock;

    let first = Watched::resolve(path);
    let names = Arc::new(RwLock::new(first.names.clone()));
    let first_dirs = first.dirs.clone();
    let (notes, notes_rx) = std::sync::mpsc::channel();
    let event_names = Arc::clone(&names);
    let event_notes = notes.clone();
    // The rename last reported as one into place: inotify follows its `To` event with a `Both`
    // event for the same rename, which must not reload a second time.
    let mut renamed_into_place: Option<usize> = None;
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        let relevant_kind = match event.kind {
            // Our own reads open the file; only a write that completes is a change.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        };
        let names = event_names.read().unwrap_or_else(|p| p.into_inner());
        if !relevant_kind || !Watched::concerns(&names, &event) {
            return;
        }
        let trigger = match event.kind {
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                renamed_into_place = event.tracker();
                ReloadTrigger::FileRenamed
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::Both))
                if event.tracker().is_some() && event.tracker() == renamed_into_place =>
            {
                return;
            }
            _ => ReloadTrigger::FileEvent,
        };
        let _ = triggers.send(trigger);
        let _ = event_notes.send(Note::Changed);
    })?;
    // The link's own directory must be watchable; the others are followed as far as they exist.
    let mut dirs = first_dirs.iter();
    if let Some(own) = dirs.next() {
        watcher.watch(own, RecursiveMode::NonRecursive)?;
    }
    let mut watching: Vec<PathBuf> = first_dirs.iter().take(1).cloned().collect();
    for dir in dirs {
        match watcher.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => watching.push(dir.clone()),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the directory the configuration symlink points into; edits there wait for SIGHUP")
            }
        }
    }
    let path = path.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("apiward-config-watch".into())
        .spawn(move || {
            // Re-resolves after each relevant event: a swapped link or `..data` moves the file.
            let mut config = first;
            let mut pem = Watched::default();
            while let Ok(note) = notes_rx.recv() {
                let mut changed = false;
                let mut stop = false;
                for note in std::iter::once(note).chain(std::iter::from_fn(|| notes_rx.try_recv().ok())) {
                    match note {
                        Note::Changed => changed = true,
                        Note::Follow(files) => pem = Watched::files(&files),
                        Note::Stop => stop = true,
                    }
                }
                if stop {
                    break;
                }
                if changed {
                    config = Watched::resolve(&path);
                }
                let mut now = Watched::default();
                for w in [&config, &pem] {
                    for dir in &w.dirs {
                        if !now.dirs.contains(dir) {
                            now.dirs.push(dir.clone());
                        }
                    }
                    for name in &w.names {
                        if !now.names.contains(name) {
                            now.names.push(name.clone());
                        }
                    }
                }
                for dir in &now.dirs {
                    if !watching.contains(dir) {
                        match watcher.watch(dir, RecursiveMode::NonRecursive) {
                            Ok(()) => watching.push(dir.clone()),
                            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch this directory: changes there wait for SIGHUP"),
                        }
                    }
                }
                watching.retain(|dir| {
                    let keep = now.dirs.contains(dir);
                    if !keep {
                        let _ = watcher.unwatch(dir);
                    }
                    keep
                });
                *names.write().unwrap_or_else(|p| p.into_inner()) = now.names;
            }
        })
        .map_err(notify::Error::io)?;
    Ok(ConfigWatch {
        notes,
        thread: Some(thread),
    })
}

/// Coalesces triggers and runs one reload per burst, logging each outcome.
pub async fn reload_loop(
    store: Arc<ConfigStore>,
    mut triggers: mpsc::UnboundedReceiver<ReloadTrigger>,
    on_outcome: impl Fn(&ReloadOutcome) + Send + Sync + 'static,
) {
    let on_outcome = Arc::new(on_outcome);
    while let Some(first) = triggers.recv().await {
        let mut trigger = first;
        let started = Instant::now();
        // A file renamed into place is whole: the reload starts at once (with what was already
        // reported taken in), without waiting for a save's events to settle; events after it,
        // if any, reload again.
        let mut whole = first == ReloadTrigger::FileRenamed;
        while !whole {
            let remaining = MAX_DEBOUNCE.saturating_sub(started.elapsed());
            match tokio::time::timeout(QUIET.min(remaining), triggers.recv()).await {
                Ok(Some(t)) => {
                    if t == ReloadTrigger::Signal {
                        trigger = t;
                    }
                    whole = t == ReloadTrigger::FileRenamed;
                    if remaining.is_zero() {
                        break;
                    }
                }
                Ok(None) => return,
                Err(_) => break,
            }
        }
        while let Ok(t) = triggers.try_recv() {
            if t == ReloadTrigger::Signal {
                trigger = t;
            }
        }
        let store = Arc::clone(&store);
        let report = Arc::clone(&on_outcome);
        let joined = tokio::task::spawn_blocking(move || {
            let outcome = store.reload();
            log_outcome(&store, trigger, &outcome);
            report(&outcome);
        })
        .await;
        if let Err(e) = joined {
            tracing::error!(error = %e, "the reload task failed; the current configuration keeps serving");
        }
    }
}

/// Logs each certificate of the snapshot serving that has expired or expires within 14 days.
pub fn warn_of_expiry(store: &ConfigStore) {
    if let Some(tls) = &store.load().tls {
        for warning in tls.expiry_warnings(now_unix()) {
            tracing::warn!("certificate: {warning}");
        }
    }
}

fn log_outcome(store: &ConfigStore, trigger: ReloadTrigger, outcome: &ReloadOutcome) {
    let file = store.path().display().to_string();
    let trigger = match trigger {
        ReloadTrigger::FileEvent | ReloadTrigger::FileRenamed => "file change",
        ReloadTrigger::Signal => "SIGHUP",
        ReloadTrigger::AdminEdit => "admin API edit",
    };
    match outcome {
        ReloadOutcome::Applied {
            generation,
            changes,
            restart_required,
        } => {
            tracing::info!(
                %file, trigger, generation,
                users_added = changes.users_added.len(),
                users_removed = changes.users_removed.len(),
                users_changed = changes.users_changed.len(),
                keys_added = changes.keys_added,
                keys_revoked = changes.keys_revoked,
                "configuration reloaded: {}", changes
            );
            for field in restart_required {
                tracing::warn!(%file, field, "[server] {field} changed: it takes effect only after a restart");
            }
            warn_of_expiry(store);
        }
        ReloadOutcome::Unchanged => {
            tracing::debug!(%file, trigger, "configuration file unchanged");
        }
        ReloadOutcome::BackInLine => {
            tracing::info!(%file, trigger, "configuration file is back in line with the configuration served; the earlier reload error is cleared");
        }
        ReloadOutcome::Missing => {
            tracing::warn!(%file, trigger, "configuration file is missing; the current configuration keeps serving");
        }
        ReloadOutcome::Refused(errors) => {
            for e in &errors.0 {
                tracing::error!(%file, trigger, "configuration refused, the current one keeps serving: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests;
