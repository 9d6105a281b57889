//! `herald dev`'s data directory: where its SQLite files and its admin key live.
//!
//! The directory is created with mode 0700. The admin key is created once, in
//! `<data-dir>/admin-token` with mode 0600, and reused on every later start, so scripts can
//! read it from the file. It is written to a temporary file first and then linked into place,
//! which fails if the key already exists: two `herald dev` starting at once agree on one key.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use herald_core::admin::AdminToken;

/// The name of the admin key file inside the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// An opened data directory.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
}

/// The admin key, and whether this start created it.
#[derive(Debug)]
pub struct AdminKey {
    /// The key.
    pub token: AdminToken,
    /// Where it is stored.
    pub path: PathBuf,
    /// True when this start generated it.
    pub created: bool,
}

impl DataDir {
    /// The default location: `herald` under the user's data directory
    /// (`$XDG_DATA_HOME` or `~/.local/share` on Linux).
    pub fn default_path() -> anyhow::Result<PathBuf> {
        dirs::data_dir()
            .map(|dir| dir.join("herald"))
            .context("cannot find the user's data directory (is HOME set?); pass --data-dir")
    }

    /// Opens `path`, creating it (mode 0700) if needed.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if path.exists() && !path.is_dir() {
            bail!(
                "the data directory {} exists but is not a directory",
                path.display()
            );
        }
        if !path.exists() {
            create_private_dir(path)
                .with_context(|| format!("cannot create the data directory {}", path.display()))?;
        }
        let path = path
            .canonicalize()
            .with_context(|| format!("cannot resolve the data directory {}", path.display()))?;
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the admin key, creating it on first use.
    pub fn admin_key(&self) -> anyhow::Result<AdminKey> {
        let path = self.path.join(ADMIN_TOKEN_FILE);
        if !path.exists() {
            let token = AdminToken::generate()
                .context("the operating system gave no random bytes for the admin key")?;
            if write_new_private_file(&path, &format!("{}\n", token.expose()))? {
                return Ok(AdminKey {
                    token,
                    path,
                    created: true,
                });
            }
            // Another process created it first: use theirs.
        }
        warn_if_readable_by_others(&path);
        let text = fs::read_to_string(&path)
            .with_context(|| format!("cannot read the admin key {}", path.display()))?;
        let token = AdminToken::new(text.trim().to_owned()).with_context(|| {
            format!(
                "the admin key in {} is not valid; delete the file to have a new one generated",
                path.display()
            )
        })?;
        Ok(AdminKey {
            token,
            path,
            created: false,
        })
    }
}

#[cfg(unix)]
fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

#[cfg(not(unix))]
fn create_private_dir(path: &Path) -> std::io::Result<()> {
    fs::create_dir_all(path)
}

/// Writes `contents` to `path` only if `path` does not exist. Returns false if it did.
fn write_new_private_file(path: &Path, contents: &str) -> anyhow::Result<bool> {
    let dir = path
        .parent()
        .context("the admin key path has no parent directory")?;
    let temp = dir.join(format!(".{ADMIN_TOKEN_FILE}.{}.tmp", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let result = (|| -> anyhow::Result<bool> {
        let mut file = options
            .open(&temp)
            .with_context(|| format!("cannot create {}", temp.display()))?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        match fs::hard_link(&temp, path) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(err) => Err(err).with_context(|| format!("cannot create {}", path.display())),
        }
    })();
    let _ = fs::remove_file(&temp);
    result
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "the admin key file can be read by other users; run `chmod 600` on it"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_then_reuses() {
        let temp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(&temp.path().join("nested/data")).unwrap();
        let first = dir.admin_key().unwrap();
        assert!(first.created);
        let second = dir.admin_key().unwrap();
        assert!(!second.created);
        assert_eq!(first.token.expose(), second.token.expose());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&first.path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let mode = fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700);
        }
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            leftovers,
            [ADMIN_TOKEN_FILE],
            "no temporary files are left behind"
        );
    }

    #[test]
    fn a_damaged_key_is_reported_not_replaced() {
        let temp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(temp.path()).unwrap();
        fs::write(dir.path().join(ADMIN_TOKEN_FILE), "short\n").unwrap();
        let err = dir.admin_key().unwrap_err();
        assert!(
            format!("{err:#}").contains("is not valid; delete the file"),
            "{err:#}"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join(ADMIN_TOKEN_FILE)).unwrap(),
            "short\n"
        );
    }

    #[test]
    fn a_file_in_the_way_is_an_error() {
        let temp = tempfile::NamedTempFile::new().unwrap();
        let err = DataDir::open(temp.path()).unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
    }
}
