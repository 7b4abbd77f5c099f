//! Where reports go. Every path is checked before tracing starts, so that a mistyped
//! directory is refused at once rather than after an hour of tracing; at the end each output
//! is written on its own, so that one that fails does not take the others with it.

use std::{
    ffi::CString,
    fs::{File, OpenOptions},
    io::{self, Write as _},
    os::unix::{ffi::OsStrExt as _, fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use crate::{config::Output, report::Report};

/// Why a report could not be written to a path.
#[derive(Debug, thiserror::Error)]
pub enum OutputPathError {
    #[error("cannot write {path}: directory {dir} does not exist")]
    NoDirectory { path: PathBuf, dir: PathBuf },
    #[error("cannot write {path}: {dir} is not a directory")]
    NotADirectory { path: PathBuf, dir: PathBuf },
    #[error("cannot write {path}: it is a directory")]
    IsADirectory { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    NotWritable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl OutputPathError {
    pub fn hint(&self) -> &'static str {
        match self {
            Self::NoDirectory { .. } | Self::NotADirectory { .. } => {
                "create the directory first, or give -o a path in an existing directory"
            }
            Self::IsADirectory { .. } => "give -o a file name, such as DIR/report.txt",
            Self::NotWritable { .. } => {
                "give -o a path in a directory you can write to (not on a read-only file system)"
            }
        }
    }
}

/// Checks that a report can be created at `path`: its directory exists and can be written,
/// and the path is not itself a directory.
pub fn check_path(path: &Path) -> Result<(), OutputPathError> {
    let owned = || path.to_path_buf();
    if path.is_dir() {
        return Err(OutputPathError::IsADirectory { path: owned() });
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    match dir.metadata() {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(OutputPathError::NotADirectory {
                path: owned(),
                dir: dir.to_path_buf(),
            });
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(OutputPathError::NoDirectory {
                path: owned(),
                dir: dir.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(OutputPathError::NotWritable {
                path: owned(),
                source,
            });
        }
    }
    // An existing file is replaced in place, so it must be writable itself; a new one needs
    // a directory where files can be created.
    let result = if path.exists() {
        can_write(path)
    } else {
        can_create_in(dir)
    };
    result.map_err(|source| OutputPathError::NotWritable {
        path: owned(),
        source,
    })
}

/// Creates an unnamed file in `dir` (`O_TMPFILE`), which proves that a report can be created
/// there and leaves nothing behind. Root passes any permission check on a directory, but not
/// a read-only mount, a full quota or an immutable directory; this meets them all. File
/// systems without `O_TMPFILE` get the `access` check.
fn can_create_in(dir: &Path) -> io::Result<()> {
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(dir)
    {
        Ok(_) => Ok(()),
        Err(err) if err.raw_os_error() == Some(libc::EOPNOTSUPP) => can_write(dir),
        Err(err) => Err(err),
    }
}

/// `access(W_OK)`: the kernel's answer for this process's credentials, which also says when
/// the file system is read-only.
fn can_write(path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: c_path is a valid NUL-terminated string that lives across the call.
    if unsafe { libc::access(c_path.as_ptr(), libc::W_OK) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Checks every output path; returns every problem found, in the order of the outputs.
pub fn check_all(outputs: &[Output]) -> Vec<OutputPathError> {
    outputs
        .iter()
        .filter_map(|output| check_path(output.path.as_ref()?).err())
        .collect()
}

/// One output that could not be written.
#[derive(Debug)]
pub struct WriteFailure {
    /// `None` is stdout.
    pub path: Option<PathBuf>,
    pub error: io::Error,
}

impl std::fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.path {
            Some(path) => write!(f, "cannot write {}: {}", path.display(), self.error),
            None => write!(f, "cannot write the report to stdout: {}", self.error),
        }
    }
}

/// What [`write_all`] did.
#[derive(Debug, Default)]
pub struct Written {
    /// The files written, in order.
    pub files: Vec<PathBuf>,
    pub failures: Vec<WriteFailure>,
}

/// Renders `report` into every output, each on its own: a failure is recorded and the next
/// output is still written.
pub fn write_all(outputs: &[Output], top: usize, report: &Report) -> Written {
    let mut written = Written::default();
    for output in outputs {
        let renderer = output.format.renderer(top);
        let result = match &output.path {
            Some(path) => File::create(path).and_then(|mut file| {
                renderer.render(report, &mut file)?;
                file.flush()
            }),
            None => {
                let mut stdout = io::stdout().lock();
                renderer
                    .render(report, &mut stdout)
                    .and_then(|()| stdout.flush())
            }
        };
        match (result, &output.path) {
            (Ok(()), Some(path)) => written.files.push(path.clone()),
            (Ok(()), None) => {}
            (Err(error), path) => written.failures.push(WriteFailure {
                path: path.clone(),
                error,
            }),
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::Recording, report::Format};

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "leakhound-output-files-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn paths_are_refused_for_a_cause() {
        let dir = scratch("check");
        assert!(check_path(&dir.join("report.txt")).is_ok());
        assert!(matches!(
            check_path(&dir.join("missing/report.txt")),
            Err(OutputPathError::NoDirectory { dir: d, .. }) if d == dir.join("missing")
        ));
        assert!(matches!(
            check_path(&dir),
            Err(OutputPathError::IsADirectory { .. })
        ));
        let file = dir.join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(check_path(&file).is_ok(), "an existing file is replaced");
        assert!(matches!(
            check_path(&file.join("report.txt")),
            Err(OutputPathError::NotADirectory { .. })
        ));
        // A bare file name is in the current directory.
        assert!(check_path(Path::new("report.txt")).is_ok());
        // /proc/self takes no new files, even from root.
        assert!(matches!(
            check_path(Path::new("/proc/self/leakhound-report.txt")),
            Err(OutputPathError::NotWritable { .. })
        ));
        // Nothing was left behind by the check.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_problem_is_listed() {
        let dir = scratch("all");
        let output = |path: PathBuf| Output {
            path: Some(path),
            format: Format::Text,
        };
        let problems = check_all(&[
            output(dir.join("no/a.txt")),
            output(dir.join("fine.txt")),
            output(dir.clone()),
            Output {
                path: None,
                format: Format::Text,
            },
        ]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn one_failed_output_does_not_stop_the_others() {
        let dir = scratch("write");
        let recording = Recording::default();
        let report = Report::new(&recording);
        let outputs = [
            Output {
                path: Some(dir.join("gone/a.txt")),
                format: Format::Text,
            },
            Output {
                path: Some(dir.join("b.folded")),
                format: Format::Folded,
            },
            Output {
                path: Some(dir.join("c.json")),
                format: Format::Json,
            },
        ];
        let written = write_all(&outputs, 20, &report);
        assert_eq!(written.files, [dir.join("b.folded"), dir.join("c.json")]);
        assert_eq!(written.failures.len(), 1);
        assert!(
            written.failures[0].to_string().contains("gone/a.txt"),
            "{}",
            written.failures[0]
        );
        assert!(dir.join("c.json").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
