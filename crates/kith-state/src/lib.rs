//! Kith's state store. Embedded default: one SQLite file (`state.db`) in WAL mode, so the CLI and a
//! running server can use it at the same time.

pub mod keys;

use std::path::Path;
use std::sync::Mutex;

use rusqlite::Connection;
use thiserror::Error;

pub use keys::{ApiKey, KeyScope, MOST_SOURCE_CHARS, NewKey, Revocation, check_source_name};

#[derive(Debug, Error)]
pub enum StateError {
    #[error("state store error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot use the data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the data directory {0} is a file, not a directory; pass --data-dir a directory (it is created when missing)"
    )]
    DataDirIsFile(String),
    #[error(
        "cannot write {0}: it is read-only for this user (its permissions, or a file system mounted read-only); run Kith as the user that owns the data directory, or give this user write access to it"
    )]
    ReadOnly(String),
    /// `state.db` could not be opened; `reason` says why in this machine's terms.
    #[error("cannot open {path}: {reason}")]
    Open { path: String, reason: String },
    #[error(
        "no key with id `{0}` in this data directory; `kith key list` shows the ids (the whole key works too)"
    )]
    UnknownKey(String),
    #[error("an ingest key needs a source name (--source)")]
    MissingSource,
    #[error("the source name `{0}` is reserved for events Kith writes itself; choose another")]
    ReservedSource(String),
    #[error(
        "the source name is {0} characters long; give at most {MOST_SOURCE_CHARS}, a short name such as `web` or `ios`"
    )]
    SourceTooLong(usize),
    #[error(
        "the source name holds a control or invisible character (a line break, a tab, an escape, a zero-width space or a direction mark) at character {0}; use letters, digits, spaces and punctuation"
    )]
    SourceWithControl(usize),
}

/// The state store. Safe to share across threads.
pub struct StateStore {
    conn: Mutex<Connection>,
    /// `state.db`, named when it cannot be written.
    path: std::path::PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS api_keys (
    id          TEXT PRIMARY KEY,
    hash        TEXT NOT NULL UNIQUE,
    scope       TEXT NOT NULL,
    source      TEXT,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
";

/// Creates a data directory (and any missing parents) readable only by its owner: it holds
/// customers' emails, phone numbers and events. One that exists is left as it is.
///
/// Each directory created is synced into its parent: events acknowledged just after a first
/// start must not vanish with the directory's own entry in a power cut.
pub fn create_data_dir(data_dir: &Path) -> std::io::Result<()> {
    let missing: Vec<&Path> = data_dir
        .ancestors()
        .take_while(|dir| !dir.as_os_str().is_empty() && !dir.exists())
        .collect();
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(data_dir)?;
    warn_root_in_another_users(data_dir)?;
    for created in missing.iter().rev() {
        let parent = match created.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Warns, once a process, a command run as root on a data directory that belongs to another
/// user: the files it makes are root's alone (0600), and Kith run later as the directory's
/// owner (as a service runs it) cannot open them. Not refused: a container run as root on a
/// directory mounted from the host is the same picture, and stays root.
#[cfg(unix)]
fn warn_root_in_another_users(data_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    static WARNED: std::sync::Once = std::sync::Once::new();
    let running_as_root = rustix::process::geteuid().is_root();
    let owner = std::fs::metadata(data_dir)?.uid();
    if running_as_root && owner != 0 {
        WARNED.call_once(|| {
            tracing::warn!(
                "the data directory {} belongs to the user with uid {owner}, and this runs as \
                 root: the files made now are root's, which Kith run as that user cannot open. \
                 Run kith as that user (`sudo -u '#{owner}' kith …`), or afterwards `chown -R \
                 {owner} {}`",
                data_dir.display(),
                data_dir.display()
            );
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn warn_root_in_another_users(_data_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// The mode of an existing data directory that lets other users of the machine in (`0755`, or
/// a group's `0750`), so that the server can say so: Kith leaves the mode of a directory it did
/// not create as it is, and makes its own `0700`.
#[cfg(unix)]
pub fn open_to_others(data_dir: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data_dir).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(not(unix))]
pub fn open_to_others(_data_dir: &Path) -> Option<u32> {
    None
}

impl StateStore {
    /// Opens (or creates) `state.db` in the data directory.
    pub fn open(data_dir: &Path) -> Result<StateStore, StateError> {
        if data_dir.exists() && !data_dir.is_dir() {
            return Err(StateError::DataDirIsFile(data_dir.display().to_string()));
        }
        create_data_dir(data_dir).map_err(|source| StateError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let path = data_dir.join("state.db");
        let opened = (|| {
            let conn = Connection::open(&path)?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.execute_batch(SCHEMA)?;
            Ok::<_, rusqlite::Error>(conn)
        })();
        match opened {
            Ok(conn) => Ok(StateStore {
                conn: Mutex::new(conn),
                path,
            }),
            Err(err) => Err(StateError::Open {
                path: path.display().to_string(),
                reason: why_it_does_not_open(data_dir, &path, &err),
            }),
        }
    }

    pub(crate) fn with_conn<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StateError>,
    ) -> Result<R, StateError> {
        // A panic while holding the lock cannot leave SQLite inconsistent; keep going.
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(|e| match e {
            // Only the plain read-only refusal: its extended codes are other stories (the file
            // replaced under a running server, a recovery in progress).
            StateError::Sqlite(rusqlite::Error::SqliteFailure(failure, _))
                if failure.extended_code == rusqlite::ffi::SQLITE_READONLY =>
            {
                StateError::ReadOnly(self.path.display().to_string())
            }
            other => other,
        })
    }
}

/// What to do when this user may not use the data directory.
const GIVE_ACCESS: &str = "run Kith as the user that owns the data directory, or give this user read and write access to it";

/// Why this process cannot write in a directory (see [`why_unwritable`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unwritable {
    /// The user may not list it.
    NotReadable(String),
    /// The user may not create files in it.
    NotWritable(String),
    /// Its file system is mounted read-only, whoever asks.
    ReadOnlyMount(String),
    /// Its file system has no space left.
    Full(String),
}

impl std::fmt::Display for Unwritable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unwritable::NotReadable(dir) => {
                write!(f, "this user may not read the data directory {dir}")
            }
            Unwritable::NotWritable(dir) => write!(f, "this user may not create files in {dir}"),
            Unwritable::ReadOnlyMount(dir) => {
                write!(f, "the file system holding {dir} is mounted read-only")
            }
            Unwritable::Full(dir) => write!(f, "the disk holding {dir} is full"),
        }
    }
}

impl Unwritable {
    /// What to do about it.
    pub fn remedy(&self) -> &'static str {
        match self {
            Unwritable::NotReadable(_) | Unwritable::NotWritable(_) => GIVE_ACCESS,
            Unwritable::ReadOnlyMount(_) => {
                "mount it read-write, or copy the data directory to a writable place"
            }
            Unwritable::Full(_) => {
                "free space on it (every acknowledged event is kept: nothing is lost by the \
                 wait), then start again"
            }
        }
    }

    /// What an error of this kind, met creating a file in `dir`, says about it.
    fn from_kind(kind: std::io::ErrorKind, dir: &Path) -> Option<Unwritable> {
        let dir = dir.display().to_string();
        match kind {
            std::io::ErrorKind::ReadOnlyFilesystem => Some(Unwritable::ReadOnlyMount(dir)),
            std::io::ErrorKind::PermissionDenied => Some(Unwritable::NotWritable(dir)),
            std::io::ErrorKind::StorageFull => Some(Unwritable::Full(dir)),
            _ => None,
        }
    }
}

/// Why this process cannot write in `dir`, found by trying: the user may not read or write it,
/// or its file system is mounted read-only. `None` when a file can be created there. SQLite's
/// own errors ("unable to open database file") say none of this.
pub fn why_unwritable(dir: &Path) -> Option<Unwritable> {
    if let Err(e) = std::fs::read_dir(dir)
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        return Some(Unwritable::NotReadable(dir.display().to_string()));
    }
    let probe = dir.join(format!(".kith-write-check-{}", std::process::id()));
    // A page written, not only a name: a full disk still has room for an empty file.
    let written = std::fs::File::create(&probe).and_then(|mut file| {
        std::io::Write::write_all(&mut file, &[0; 4096])?;
        file.sync_all()
    });
    let _ = std::fs::remove_file(&probe);
    match written {
        Ok(()) => None,
        Err(e) => Unwritable::from_kind(e.kind(), dir),
    }
}

/// What stopped SQLite from opening `path` in `data_dir`, said in terms of files and users
/// rather than SQLite's codes ("unable to open database file: Error code 14").
fn why_it_does_not_open(data_dir: &Path, path: &Path, err: &rusqlite::Error) -> String {
    use rusqlite::ErrorCode;
    let denied = |what: &str| format!("{what}; {GIVE_ACCESS}");
    if let Some(why) = why_unwritable(data_dir) {
        return format!(
            "{why}, and SQLite writes beside state.db (its -wal and -shm files) even to read \
             keys; {}",
            why.remedy()
        );
    }
    if path.exists()
        && let Err(e) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        return denied("this user may not write to it");
    }
    match err.sqlite_error_code() {
        Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            denied(&format!(
                "this user may not create files in {} (SQLite keeps its -wal and -shm files \
                 beside state.db)",
                data_dir.display()
            ))
        }
        Some(ErrorCode::NotADatabase) => "it is not a Kith state database (it may be damaged, \
             or another program's file); move it aside to start with no keys, or restore it \
             from a backup"
            .to_string(),
        _ => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_error(data_dir: &Path) -> String {
        match StateStore::open(data_dir) {
            Ok(_) => panic!("{} opened", data_dir.display()),
            Err(e) => e.to_string(),
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_new_data_directory_is_its_owners_alone_and_an_existing_one_is_left_as_it_is() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let new = dir.path().join("new/data");
        StateStore::open(&new).unwrap();
        assert_eq!(mode(&new), 0o700);
        let existing = dir.path().join("existing");
        std::fs::create_dir(&existing).unwrap();
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o750)).unwrap();
        StateStore::open(&existing).unwrap();
        assert_eq!(mode(&existing), 0o750);
    }

    /// What each error met creating a file says, whoever runs the tests (a user who may not
    /// write, or a read-only mount, cannot be made without root).
    #[test]
    fn errors_creating_a_file_name_their_cause_and_remedy() {
        let dir = Path::new("/data");
        let mount = Unwritable::from_kind(std::io::ErrorKind::ReadOnlyFilesystem, dir).unwrap();
        assert_eq!(
            mount.to_string(),
            "the file system holding /data is mounted read-only"
        );
        assert!(mount.remedy().starts_with("mount it read-write"));
        let denied = Unwritable::from_kind(std::io::ErrorKind::PermissionDenied, dir).unwrap();
        assert_eq!(
            denied.to_string(),
            "this user may not create files in /data"
        );
        assert!(denied.remedy().starts_with("run Kith as the user"));
        let full = Unwritable::from_kind(std::io::ErrorKind::StorageFull, dir).unwrap();
        assert_eq!(full.to_string(), "the disk holding /data is full");
        assert!(full.remedy().starts_with("free space on it"));
        assert_eq!(
            Unwritable::from_kind(std::io::ErrorKind::Interrupted, dir),
            None
        );
    }

    #[test]
    fn a_writable_directory_has_no_reason_and_keeps_no_trace_of_the_check() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(why_unwritable(dir.path()), None);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// Mounts a tmpfs with `options` on `dir`; without root it cannot, says so and is false.
    #[cfg(target_os = "linux")]
    fn mount_tmpfs(dir: &Path, options: &str) -> bool {
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .output()
            .is_ok_and(|o| o.status.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        }
        mounted
    }

    #[cfg(target_os = "linux")]
    fn unmount(dir: &Path) {
        let _ = std::process::Command::new("umount").arg(dir).status();
    }

    /// Needs `mount` (root): without it there is no read-only file system to try, and the test
    /// says so and checks nothing.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_read_only_mount_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        if !mount_tmpfs(dir.path(), "ro,size=1m") {
            return;
        }
        let why = why_unwritable(dir.path());
        let opened = StateStore::open(dir.path()).err().map(|e| e.to_string());
        unmount(dir.path());
        assert_eq!(
            why,
            Some(Unwritable::ReadOnlyMount(dir.path().display().to_string()))
        );
        let opened = opened.unwrap_or_default();
        assert!(
            opened.contains("is mounted read-only, and SQLite writes beside state.db")
                && opened.ends_with(
                    "mount it read-write, or copy the data directory to a writable place"
                ),
            "{opened}"
        );
    }

    /// A full disk still has room for an empty file's name: the check writes a page. Needs root
    /// to mount a tmpfs; elsewhere it says so and checks nothing.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_disk_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        if !mount_tmpfs(dir.path(), "size=256k") {
            return;
        }
        let filled = std::fs::write(dir.path().join("filler"), vec![0u8; 1 << 20]);
        let why = why_unwritable(dir.path());
        unmount(dir.path());
        assert!(filled.is_err(), "a 256 KiB tmpfs holds no 1 MiB file");
        assert_eq!(
            why,
            Some(Unwritable::Full(dir.path().display().to_string()))
        );
    }

    #[test]
    fn a_state_db_that_cannot_be_written_is_named_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        // SQLite answers a write to a database it may only read (a file of mode 0400, a
        // read-only mount) as it answers one on a connection told to write nothing.
        store
            .with_conn(|conn| Ok(conn.pragma_update(None, "query_only", true)?))
            .unwrap();
        let err = store
            .create_key(keys::KeyScope::Read, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "cannot write {}: it is read-only for this user (its permissions, or a file \
                 system mounted read-only); run Kith as the user that owns the data directory, \
                 or give this user write access to it",
                dir.path().join("state.db").display()
            )
        );
    }

    #[test]
    fn a_data_directory_that_cannot_be_used_is_named_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data");
        std::fs::write(&file, "not a directory").unwrap();
        assert_eq!(
            open_error(&file),
            format!(
                "the data directory {} is a file, not a directory; pass --data-dir a directory \
                 (it is created when missing)",
                file.display()
            )
        );

        let damaged = dir.path().join("damaged");
        std::fs::create_dir(&damaged).unwrap();
        std::fs::write(damaged.join("state.db"), vec![0x5a; 8192]).unwrap();
        let message = open_error(&damaged);
        assert!(
            message.starts_with(&format!(
                "cannot open {}: it is not a Kith state database",
                damaged.join("state.db").display()
            )),
            "{message}"
        );
    }
}
