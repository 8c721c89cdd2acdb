//! Finding and reading the limits files under each `--config` path (docs/service.md §4).
//!
//! Only regular files are read: a FIFO would block the reader until some writer turns up, and
//! a device such as `/dev/zero` never ends, so either would hang `validate` or a reload. No
//! read goes past [`MAX_FILE_BYTES`], whatever the file's metadata claims (procfs and devices
//! report a size of 0). And every `*.yaml` entry of a directory is either read or reported:
//! one that cannot be read (a dangling symlink, no permission, not a regular file) fails the
//! load, so a file never leaves the configuration silently.

use std::fs::{File, Metadata};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::Source;
use super::diag::Diagnostics;
use super::yaml::MAX_FILE_BYTES;

/// Reads every limits file under `paths`: a file is read as named; a directory contributes
/// its `*.yaml` / `*.yml` entries in name order, dot-files skipped (a Kubernetes ConfigMap
/// mount keeps its real files under `..data`, reached through the top-level symlinks). Each
/// problem is recorded in `diags` under the file's name.
pub(super) fn read_all(paths: &[PathBuf], diags: &mut Diagnostics) -> Vec<Source> {
    let mut sources = Vec::new();
    for path in paths {
        for file in discover(path, diags) {
            let name = file.display().to_string();
            match read_limited(&file) {
                Ok(text) => sources.push(Source { name, text }),
                Err(e) => diags.error(&name, None, "", format!("cannot read: {e}")),
            }
        }
    }
    sources
}

/// The files `path` stands for: itself, or a directory's limits files.
fn discover(path: &Path, diags: &mut Diagnostics) -> Vec<PathBuf> {
    let name = path.display().to_string();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            diags.error(&name, None, "", format!("cannot open: {e}"));
            return Vec::new();
        }
    };
    if !meta.is_dir() {
        // Whether it is a regular file is `read_limited`'s to say, for both cases alike.
        return vec![path.to_owned()];
    }
    let entries = match std::fs::read_dir(path) {
        Ok(e) => e,
        Err(e) => {
            diags.error(&name, None, "", format!("cannot list directory: {e}"));
            return Vec::new();
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        match entry {
            Ok(e) if is_limits_file_name(&e.path()) => files.push(e.path()),
            Ok(_) => {}
            // An entry the directory listing itself could not return may be a limits file:
            // it is not skipped silently.
            Err(e) => diags.error(&name, None, "", format!("cannot list directory: {e}")),
        }
    }
    files.sort();
    if files.is_empty() {
        diags.error(&name, None, "", "directory holds no *.yaml or *.yml file");
    }
    files
}

/// `*.yaml` or `*.yml`, not a dot-file. Decided by name alone: what the entry turns out to
/// be (a dangling symlink, a FIFO) is an error to report, not a reason to skip it.
fn is_limits_file_name(p: &Path) -> bool {
    let Some(file_name) = p.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let yaml = p
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e == "yaml" || e == "yml");
    yaml && !file_name.starts_with('.')
}

/// Reads a regular file of at most [`MAX_FILE_BYTES`] as UTF-8 text.
fn read_limited(file: &Path) -> std::io::Result<String> {
    // Checked before opening: opening a FIFO for reading blocks until a writer appears.
    regular(&std::fs::metadata(file)?)?;
    let f = File::open(file)?;
    // Checked again on what was opened, in case the name was pointed elsewhere meanwhile.
    regular(&f.metadata()?)?;
    let mut bytes = Vec::new();
    // One byte more than allowed tells "exactly at the bound" from "past it" without ever
    // holding more than the bound plus one byte.
    f.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "file is larger than the {MAX_FILE_BYTES} bytes allowed"
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        std::io::Error::other(format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Refuses anything but a regular file, naming what it is.
fn regular(meta: &Metadata) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let kind = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    };
    Err(std::io::Error::other(format!(
        "not a regular file ({kind}); only regular files are read"
    )))
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn read(paths: &[PathBuf]) -> (Vec<Source>, Vec<String>) {
        let mut diags = Diagnostics::default();
        let sources = read_all(paths, &mut diags);
        let errors = diags.into_vec().iter().map(ToString::to_string).collect();
        (sources, errors)
    }

    fn mkfifo(path: &Path) {
        let ok = Command::new("mkfifo")
            .arg(path)
            .status()
            .expect("mkfifo must be installed (coreutils)")
            .success();
        assert!(ok, "mkfifo {}", path.display());
    }

    const LIMITS: &str = "kcse_rate_limits: {}\n";

    #[test]
    fn a_fifo_or_a_device_is_refused_without_reading() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("limits.yaml");
        mkfifo(&fifo);
        // Named directly, and found in a directory: both refused (neither blocks: no writer
        // ever opens this FIFO, so a read would hang the test).
        for paths in [vec![fifo.clone()], vec![dir.path().to_owned()]] {
            let (sources, errors) = read(&paths);
            assert!(sources.is_empty());
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(errors[0].contains("limits.yaml"), "{errors:?}");
            assert!(
                errors[0].contains("not a regular file (a FIFO)"),
                "{errors:?}"
            );
        }
        let (_, errors) = read(&[PathBuf::from("/dev/zero")]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("/dev/zero") && errors[0].contains("a character device"),
            "{errors:?}"
        );
    }

    #[test]
    fn no_read_goes_past_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let at = dir.path().join("at.yaml");
        let past = dir.path().join("past.yaml");
        let mut text = LIMITS.to_owned();
        text.push_str(&"#".repeat(MAX_FILE_BYTES - text.len()));
        std::fs::write(&at, &text).expect("write");
        text.push('#');
        std::fs::write(&past, &text).expect("write");
        let (sources, errors) = read(&[at]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(sources[0].text.len(), MAX_FILE_BYTES);
        let (_, errors) = read(&[past]);
        assert!(
            errors[0].contains("larger than the 4194304 bytes"),
            "{errors:?}"
        );
    }

    #[test]
    fn an_unreadable_entry_of_a_directory_fails_the_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.yaml"), LIMITS).expect("write");
        std::os::unix::fs::symlink(dir.path().join("gone"), dir.path().join("b.yaml"))
            .expect("symlink");
        // Dot-files and other extensions are still skipped, dangling or not.
        std::os::unix::fs::symlink(dir.path().join("gone"), dir.path().join(".c.yaml"))
            .expect("symlink");
        std::os::unix::fs::symlink(dir.path().join("gone"), dir.path().join("d.txt"))
            .expect("symlink");
        let (sources, errors) = read(&[dir.path().to_owned()]);
        assert_eq!(sources.len(), 1);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("b.yaml") && errors[0].contains("cannot read"),
            "{errors:?}"
        );
    }

    #[test]
    fn text_that_is_not_utf8_is_refused_with_its_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("x.yaml");
        std::fs::write(&f, b"kcse_rate_limits:\xff\n").expect("write");
        let (_, errors) = read(&[f]);
        assert!(
            errors[0].contains("invalid byte at offset 17"),
            "{errors:?}"
        );
    }
}
