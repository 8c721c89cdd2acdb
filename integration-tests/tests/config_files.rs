//! Loading limits files through the binary's `validate`: only regular files are read
//! (docs/service.md §4), so a FIFO or a device is refused at once instead of blocking or
//! reading forever; and an error across files points at the exact field
//! (docs/limits-format.md §2).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use integration_tests::binary;

/// How long `validate` may take before the test calls it hung. A refusal takes milliseconds;
/// the bound only keeps a regression from hanging the suite.
const DEADLINE: Duration = Duration::from_secs(10);

/// Runs `validate <path>` and kills it if it has not exited by the deadline.
fn validate_within_deadline(path: &Path) -> Output {
    let mut child = Command::new(binary())
        .arg("validate")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run ironclad-rls validate");
    let end = Instant::now() + DEADLINE;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "validate {} did not exit within {DEADLINE:?}",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn assert_refused(out: &Output, path: &str, kind: &str) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "validate must fail:\n{text}");
    assert!(
        text.contains(path) && text.contains(&format!("not a regular file ({kind})")),
        "the error names the file and what it is:\n{text}"
    );
}

#[test]
fn validate_refuses_a_fifo_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("limits.yaml");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo must be installed (coreutils)");
    assert!(made.success(), "mkfifo failed");
    // No writer ever opens the FIFO: reading it would block for good.
    let out = validate_within_deadline(&fifo);
    assert_refused(&out, "limits.yaml", "a FIFO");
    // Found in a directory, the same.
    let out = validate_within_deadline(dir.path());
    assert_refused(&out, "limits.yaml", "a FIFO");
}

#[test]
fn validate_refuses_dev_zero_without_reading_it() {
    // /dev/zero reports size 0 and never ends: a bound checked on metadata alone reads until
    // memory runs out.
    let out = validate_within_deadline(Path::new("/dev/zero"));
    assert_refused(&out, "/dev/zero", "a character device");
}

#[test]
fn validate_reports_a_duplicate_shortname_at_the_second_shortname_line() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("a.yaml");
    let two = dir.path().join("b.yaml");
    std::fs::write(
        &one,
        "kcse_rate_limits:\n  endpoints:\n    - name: first\n      shortname: same\n      overall_limit: 5\n",
    )
    .unwrap();
    // In the second file the duplicate is the second endpoint's, on its third line.
    std::fs::write(
        &two,
        "kcse_rate_limits:\n  endpoints:\n    - name: other\n      shortname: other\n      overall_limit: 5\n    - name: second\n      overall_limit: 5\n      shortname: same\n",
    )
    .unwrap();
    let out = validate_within_deadline(dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let want = format!(
        "{}:8:18: error: kcse_rate_limits.endpoints[1].shortname: duplicate shortname \"same\" (first defined at {}:4:18, kcse_rate_limits.endpoints[0].shortname)",
        two.display(),
        one.display()
    );
    assert!(stderr.contains(&want), "want {want:?} in:\n{stderr}");
}
