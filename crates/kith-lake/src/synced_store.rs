//! The object store the event tables are written through: the local file system, with every
//! file Delta writes on disk before the call that wrote it returns.
//!
//! `object_store`'s `LocalFileSystem` never calls `fsync`: a Parquet file or a commit it has
//! written may sit only in the page cache for half a minute. Kith retires journal segments as
//! soon as a flush's commit returns, so without this a power cut in that window lost
//! acknowledged events (the journal no longer held them, and the table's file came back empty or
//! not at all), and a commit file that survived without its contents left the table unreadable.
//!
//! Here:
//! - a put writes a staging file, syncs it, and only then gives it its name (hard link for
//!   create-if-absent, which Delta's commits rely on; rename for overwrite), then syncs the
//!   directory, so a name never points at contents that are not on disk;
//! - a multipart upload (large data files) syncs the file and its directory once complete,
//!   before delta-rs goes on to the commit that names the file;
//! - copies and renames sync the new name's file and directory;
//! - directories created on the way are synced into their parents.
//!
//! Reads, listings and deletions go straight to `LocalFileSystem`: a deletion lost in a power
//! cut leaves a file no commit names, which the table's cleanup deletes again.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    UploadPart,
};

const STORE_NAME: &str = "SyncedLocalStore";

/// What makes a file or directory durable: `fsync` in production; tests watch the calls.
pub(crate) type SyncPath = Arc<dyn Fn(&FsPath, &File) -> std::io::Result<()> + Send + Sync>;

/// The local file system, syncing what it writes (see the module documentation). Rooted at `/`,
/// as delta-rs expects of a table's root store.
#[derive(Clone)]
pub(crate) struct SyncedLocalStore {
    inner: Arc<LocalFileSystem>,
    sync: SyncPath,
}

impl SyncedLocalStore {
    pub(crate) fn new() -> SyncedLocalStore {
        SyncedLocalStore::with_sync(Arc::new(|_, file| file.sync_all()))
    }

    pub(crate) fn with_sync(sync: SyncPath) -> SyncedLocalStore {
        SyncedLocalStore {
            inner: Arc::new(LocalFileSystem::new()),
            sync,
        }
    }

    /// Creates `dir` and any missing parents, each synced into its own parent.
    pub(crate) fn create_dir_all(&self, dir: &FsPath) -> object_store::Result<()> {
        create_dirs(&self.sync, dir)
    }

    fn file_path(&self, location: &Path) -> object_store::Result<PathBuf> {
        self.inner.path_to_filesystem(location)
    }
}

impl fmt::Debug for SyncedLocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(STORE_NAME)
    }
}

impl fmt::Display for SyncedLocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(STORE_NAME)
    }
}

fn io_error(path: &FsPath, source: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE_NAME,
        source: format!("{}: {source}", path.display()).into(),
    }
}

fn sync_file(sync: &SyncPath, path: &FsPath) -> object_store::Result<()> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    sync(path, &file).map_err(|e| io_error(path, e))
}

/// Syncs the directory holding `path`, so that its entry for `path` is on disk.
fn sync_parent(sync: &SyncPath, path: &FsPath) -> object_store::Result<()> {
    match path.parent() {
        Some(dir) => sync_file(sync, dir),
        None => Ok(()),
    }
}

/// Syncs the file at `path` and then its directory entry.
fn sync_file_and_entry(sync: &SyncPath, path: &FsPath) -> object_store::Result<()> {
    sync_file(sync, path)?;
    sync_parent(sync, path)
}

/// Creates `dir` and any missing parents, each synced into its own parent.
fn create_dirs(sync: &SyncPath, dir: &FsPath) -> object_store::Result<()> {
    let missing: Vec<&FsPath> = dir.ancestors().take_while(|d| !d.exists()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    for created in missing.iter().rev() {
        sync_parent(sync, created)?;
    }
    Ok(())
}

/// Whether `name` is a staging file's (`{dest}#{n}`): a write not finished, or one a crash
/// interrupted.
pub(crate) fn is_staging_name(name: &str) -> bool {
    name.contains(STAGING_MARK)
}

/// Marks staging names, as `LocalFileSystem` marks its uploads: its listings skip such names, so
/// one a crash leaves behind is never taken for a table file.
const STAGING_MARK: char = '#';

/// A new file beside `dest` named `{dest}#{n}`.
fn staging_file(sync: &SyncPath, dest: &FsPath) -> object_store::Result<(File, PathBuf)> {
    if let Some(dir) = dest.parent() {
        create_dirs(sync, dir)?;
    }
    for n in 1u32.. {
        let mut name = dest.as_os_str().to_owned();
        name.push(format!("{STAGING_MARK}{n}"));
        let path = PathBuf::from(name);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((file, path)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_error(&path, e)),
        }
    }
    Err(io_error(
        dest,
        std::io::Error::other("no free staging file name"),
    ))
}

/// Writes `payload` to `dest` durably: staged, synced, named, directory synced.
fn put_durably(
    sync: &SyncPath,
    dest: &FsPath,
    location: &Path,
    payload: &PutPayload,
    mode: &PutMode,
) -> object_store::Result<()> {
    let (mut file, staged) = staging_file(sync, dest)?;
    let written = payload
        .iter()
        .try_for_each(|part| file.write_all(part))
        .map_err(|e| io_error(&staged, e))
        .and_then(|()| sync(&staged, &file).map_err(|e| io_error(&staged, e)));
    drop(file);
    let named = written.and_then(|()| match mode {
        PutMode::Create => match std::fs::hard_link(&staged, dest) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                Err(object_store::Error::AlreadyExists {
                    path: location.to_string(),
                    source: Box::new(e),
                })
            }
            Err(e) => Err(io_error(dest, e)),
        },
        _ => std::fs::rename(&staged, dest).map_err(|e| io_error(dest, e)),
    });
    // After a hard link or a failure the staging name is left over; a rename took it.
    if named.is_err() || matches!(mode, PutMode::Create) {
        let _ = std::fs::remove_file(&staged);
    }
    named?;
    sync_parent(sync, dest)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> object_store::Result<T> + Send + 'static,
) -> object_store::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| object_store::Error::Generic {
            store: STORE_NAME,
            source: Box::new(e),
        })?
}

#[async_trait]
impl ObjectStore for SyncedLocalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if !matches!(opts.mode, PutMode::Create | PutMode::Overwrite) || !opts.attributes.is_empty()
        {
            // Conditional updates and attributes: whatever LocalFileSystem says of them.
            return self.inner.put_opts(location, payload, opts).await;
        }
        let dest = self.file_path(location)?;
        let (sync, owned) = (self.sync.clone(), location.clone());
        blocking(move || put_durably(&sync, &dest, &owned, &payload, &opts.mode)).await?;
        let meta = self.inner.head(location).await?;
        Ok(PutResult {
            e_tag: meta.e_tag,
            version: meta.version,
        })
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let dest = self.file_path(location)?;
        if let Some(dir) = dest.parent() {
            let (sync, dir) = (self.sync.clone(), dir.to_path_buf());
            blocking(move || create_dirs(&sync, &dir)).await?;
        }
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(SyncedUpload {
            upload,
            dest,
            sync: self.sync.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        self.sync_named(to).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await?;
        self.sync_named(to).await
    }
}

impl SyncedLocalStore {
    /// Syncs the file at `location` and its directory entry.
    async fn sync_named(&self, location: &Path) -> object_store::Result<()> {
        let path = self.file_path(location)?;
        let sync = self.sync.clone();
        blocking(move || sync_file_and_entry(&sync, &path)).await
    }
}

/// A `LocalFileSystem` upload whose file and directory entry are synced when it completes.
struct SyncedUpload {
    upload: Box<dyn MultipartUpload>,
    dest: PathBuf,
    sync: SyncPath,
}

impl fmt::Debug for SyncedUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncedUpload")
            .field("dest", &self.dest)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl MultipartUpload for SyncedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.upload.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let done = self.upload.complete().await?;
        let (sync, dest) = (self.sync.clone(), self.dest.clone());
        blocking(move || sync_file_and_entry(&sync, &dest)).await?;
        Ok(done)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.upload.abort().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A store that records each path it syncs, and whether the name it is written for already
    /// existed at that moment.
    fn recording() -> (SyncedLocalStore, Arc<Mutex<Vec<PathBuf>>>) {
        let synced = Arc::new(Mutex::new(Vec::new()));
        let seen = synced.clone();
        let store = SyncedLocalStore::with_sync(Arc::new(move |path, file| {
            seen.lock().unwrap().push(path.to_path_buf());
            file.sync_all()
        }));
        (store, synced)
    }

    fn location(path: &FsPath) -> Path {
        Path::from_absolute_path(path).unwrap()
    }

    /// Puts `bytes` at `dest` through `store` with `mode`.
    async fn put(
        store: &SyncedLocalStore,
        dest: &FsPath,
        bytes: &'static [u8],
        mode: PutMode,
    ) -> object_store::Result<PutResult> {
        store
            .put_opts(&location(dest), PutPayload::from_static(bytes), mode.into())
            .await
    }

    fn names(dir: &FsPath) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_put_is_synced_before_it_is_named_and_its_directory_after() {
        let dir = tempfile::tempdir().unwrap();
        let (store, synced) = recording();
        let dest = dir.path().join("new/_delta_log/00000000000000000000.json");
        put(&store, &dest, b"{\"commitInfo\":{}}\n", PutMode::Create)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"{\"commitInfo\":{}}\n");
        let staged = PathBuf::from(format!("{}#1", dest.display()));
        assert_eq!(
            *synced.lock().unwrap(),
            vec![
                // The two directories created on the way, each into its parent.
                dir.path().to_path_buf(),
                dir.path().join("new"),
                // The contents, under the staging name, then the name.
                staged,
                dest.parent().unwrap().to_path_buf(),
            ]
        );
        assert_eq!(
            names(dest.parent().unwrap()),
            ["00000000000000000000.json"],
            "no staging file left behind"
        );
    }

    #[tokio::test]
    async fn create_refuses_an_existing_name_and_overwrite_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = recording();
        let dest = dir.path().join("00000000000000000001.json");
        let at = location(&dest);
        put(&store, &dest, b"first", PutMode::Create).await.unwrap();
        // Delta's commits rely on this to find a concurrent writer's commit.
        let second = put(&store, &dest, b"second", PutMode::Create).await;
        assert!(
            matches!(second, Err(object_store::Error::AlreadyExists { .. })),
            "{second:?}"
        );
        assert_eq!(
            store.get(&at).await.unwrap().bytes().await.unwrap(),
            "first"
        );
        put(&store, &dest, b"third", PutMode::Overwrite)
            .await
            .unwrap();
        assert_eq!(
            store.get(&at).await.unwrap().bytes().await.unwrap(),
            "third"
        );
        assert_eq!(names(dir.path()), ["00000000000000000001.json"]);
    }

    #[tokio::test]
    async fn a_multipart_upload_is_synced_with_its_directory_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let (store, synced) = recording();
        let dest = dir.path().join("part-00000.parquet");
        let mut upload = store.put_multipart(&location(&dest)).await.unwrap();
        upload
            .put_part(PutPayload::from_static(b"PAR1"))
            .await
            .unwrap();
        upload
            .put_part(PutPayload::from_static(b"rows"))
            .await
            .unwrap();
        assert!(
            synced.lock().unwrap().is_empty(),
            "nothing synced before it is complete"
        );
        upload.complete().await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"PAR1rows");
        assert_eq!(
            *synced.lock().unwrap(),
            vec![dest.clone(), dir.path().to_path_buf()]
        );
    }

    #[tokio::test]
    async fn a_failed_sync_fails_the_put() {
        let dir = tempfile::tempdir().unwrap();
        let store = SyncedLocalStore::with_sync(Arc::new(|_, _| {
            Err(std::io::Error::other("the disk is gone"))
        }));
        let dest = dir.path().join("00000000000000000002.json");
        let put = put(&store, &dest, b"x", PutMode::Create).await;
        let message = put.unwrap_err().to_string();
        assert!(message.contains("the disk is gone"), "{message}");
        assert!(!dest.exists(), "an unsynced file is not given its name");
        assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
    }
}
