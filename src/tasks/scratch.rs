//! A try's private folder for its temporary files (a download, a PDF before
//! it is staged): made on first use, since most tries (a shell command, a
//! SQL statement) never need one, and removed with the try's context.
//!
//! Its name is `sluice-try-PID-...`, so that the folders of a killed worker
//! can be found and removed (`runner::exec::clean_leftovers`).

use std::path::Path;
use std::sync::OnceLock;

use super::TaskError;

/// The start of every scratch folder's name.
pub const PREFIX: &str = "sluice-try-";

/// One try's scratch folder, made by the first [`Scratch::path`].
#[derive(Debug, Default)]
pub struct Scratch {
    dir: OnceLock<Result<tempfile::TempDir, String>>,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch::default()
    }

    /// The folder: in the system's temporary folder (`TMPDIR`), or else in
    /// the working directory; made on the first call.
    pub fn path(&self) -> Result<&Path, TaskError> {
        match self.dir.get_or_init(make) {
            Ok(dir) => Ok(dir.path()),
            Err(e) => Err(TaskError::Failed(e.clone())),
        }
    }
}

fn make() -> Result<tempfile::TempDir, String> {
    let prefix = format!("{PREFIX}{}-", std::process::id());
    tempfile::Builder::new().prefix(&prefix).tempdir().or_else(|_| tempfile::Builder::new().prefix(&prefix).tempdir_in(".")).map_err(|e| {
        format!(
            "cannot create a temporary folder in {} or in the working directory: {e}; set TMPDIR to a writable folder",
            std::env::temp_dir().display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_folder_is_made_on_first_use_and_removed_with_the_scratch() {
        let s = Scratch::new();
        assert!(s.dir.get().is_none(), "made before its first use");
        let p = s.path().unwrap().to_path_buf();
        assert!(p.is_dir());
        assert!(p.file_name().unwrap().to_string_lossy().starts_with(&format!("{PREFIX}{}-", std::process::id())));
        assert_eq!(s.path().unwrap(), p, "the same folder on every call");
        std::fs::write(p.join("f"), b"x").unwrap();
        drop(s);
        assert!(!p.exists());
    }
}
