//! Hot reload through the real binary: an edit, an editor's rename-over, a new and a deleted
//! file, a Kubernetes ConfigMap `..data` swap, SIGHUP, and an invalid file that changes
//! nothing. Counters survive every reload.

use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::{Rls, eventually, request, wait_for_fresh_window};
use ironclad_rls::proto::rate_limit_response::Code;

/// Changes must be picked up within 2 s (docs/service.md §4); the deadline adds slack for a busy
/// test machine, and the measured time is printed.
const PICKUP: Duration = Duration::from_secs(4);

fn limits(shortname: &str, value: u32) -> String {
    format!(
        "kcse_rate_limits:\n  endpoints:\n    - name: {shortname}\n      shortname: {shortname}\n      uri_prefixes:\n        - {{prefix: /, value: {value}}}\n"
    )
}

fn generation(rls: &Rls) -> u64 {
    let (_, body) = rls.admin_get("/config");
    let v: serde_json::Value = serde_json::from_str(&body).expect("/config is JSON");
    v["generation"].as_u64().expect("generation")
}

/// Waits for the generation to reach `want`; returns how long it took.
fn wait_generation(rls: &Rls, want: u64, what: &str) -> Duration {
    let t = Instant::now();
    eventually(PICKUP, what, || (generation(rls) == want).then_some(()));
    let took = t.elapsed();
    println!("{what}: picked up in {took:?}");
    took
}

async fn remaining(rls: &Rls, endpoint: &str) -> Option<u32> {
    let mut c = rls.client().await;
    let r = request(
        "kcse",
        &[&[("endpoint", endpoint), ("path", "/x"), ("consumer", "c")]],
    );
    let resp = c.should_rate_limit(r).await.unwrap().into_inner();
    resp.statuses[0]
        .current_limit
        .as_ref()
        .map(|_| resp.statuses[0].limit_remaining)
}

fn write_atomically(dir: &Path, name: &str, text: &str) {
    // What editors and config management do: write aside, then rename over.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[tokio::test]
async fn every_reload_path_and_an_invalid_file() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("main.yaml");
    std::fs::write(&main, limits("ep", 10)).unwrap();
    let rls = Rls::start(&["--config", dir.path().to_str().unwrap()]);
    wait_for_fresh_window(60, Duration::from_secs(20));
    assert_eq!(generation(&rls), 1);
    assert_eq!(remaining(&rls, "ep").await, Some(9));

    // 1. An edit in place. The counter survives: 2 hits taken, limit now 20.
    std::fs::write(&main, limits("ep", 20)).unwrap();
    wait_generation(&rls, 2, "edit in place");
    assert_eq!(remaining(&rls, "ep").await, Some(18));

    // 2. An editor's rename-over.
    write_atomically(dir.path(), "main.yaml", &limits("ep", 30));
    wait_generation(&rls, 3, "rename-over");
    assert_eq!(remaining(&rls, "ep").await, Some(27));

    // 3. A new file in the directory.
    std::fs::write(dir.path().join("second.yaml"), limits("other", 5)).unwrap();
    wait_generation(&rls, 4, "new file");
    assert_eq!(remaining(&rls, "other").await, Some(4));

    // 4. A deleted file: its endpoint is no longer limited.
    std::fs::remove_file(dir.path().join("second.yaml")).unwrap();
    wait_generation(&rls, 5, "deleted file");
    assert_eq!(remaining(&rls, "other").await, None);

    // 5. An invalid file changes nothing: the old rules keep serving.
    std::fs::write(&main, "kcse_rate_limits:\n  endpoints:\n    - name: ep\n      shortname: ep\n      uri_prefixes:\n        - {prefix: /, value: 1, unit: fortnight}\n").unwrap();
    eventually(PICKUP, "the reload error to be logged", || {
        rls.logs()
            .iter()
            .any(|l| l.contains("configuration reload failed"))
            .then_some(())
    });
    let log = rls.logs().join("\n");
    assert!(
        log.contains("main.yaml:6:39"),
        "the error names file:line:column:\n{log}"
    );
    assert_eq!(generation(&rls), 5);
    assert_eq!(
        remaining(&rls, "ep").await,
        Some(26),
        "the previous rules keep serving"
    );
    assert!(
        rls.metric("ratelimit_config_reloads_total", &[("result", "error")])
            .unwrap()
            >= 1.0
    );
    assert_eq!(
        rls.metric("ratelimit_config_reloads_total", &[("result", "success")]),
        Some(4.0)
    );
    assert_eq!(rls.metric("ratelimit_config_generation", &[]), Some(5.0));

    // 6. Fixing the file reloads; SIGHUP forces a reload even of an unchanged configuration.
    std::fs::write(&main, limits("ep", 31)).unwrap();
    wait_generation(&rls, 6, "fixed file");
    rls.signal("-HUP");
    wait_generation(&rls, 7, "SIGHUP");
}

#[tokio::test]
async fn a_configmap_data_swap_is_picked_up() {
    // The layout Kubernetes mounts: files are symlinks through `..data` to a timestamped dir.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let first = root.join("..2026_11_23_10_00_00.1");
    std::fs::create_dir(&first).unwrap();
    std::fs::write(first.join("limits.yaml"), limits("ep", 10)).unwrap();
    std::os::unix::fs::symlink("..2026_11_23_10_00_00.1", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/limits.yaml", root.join("limits.yaml")).unwrap();

    let rls = Rls::start(&["--config", root.to_str().unwrap()]);
    assert_eq!(generation(&rls), 1);

    // The kubelet's update: a new timestamped dir, a new `..data_tmp` link renamed over `..data`.
    let second = root.join("..2026_11_23_10_05_00.2");
    std::fs::create_dir(&second).unwrap();
    std::fs::write(second.join("limits.yaml"), limits("ep", 50)).unwrap();
    std::os::unix::fs::symlink("..2026_11_23_10_05_00.2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(&first).unwrap();

    wait_generation(&rls, 2, "ConfigMap ..data swap");
    let (_, body) = rls.admin_get("/config");
    assert!(body.contains("\"value\":50"), "{body}");
    assert_eq!(remaining(&rls, "ep").await.map(|r| r > 40), Some(true));
    // Only the top-level link is read, once: the timestamped directories are dot-files.
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["files"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn an_unchanged_save_does_not_bump_the_generation() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("limits.yaml");
    std::fs::write(&file, limits("ep", 10)).unwrap();
    let rls = Rls::start(&["--config", file.to_str().unwrap()]);
    std::fs::write(&file, limits("ep", 10)).unwrap();
    // Then a real change, to know the watcher has run since.
    std::fs::write(dir.path().join("unrelated.txt"), "x").unwrap();
    std::fs::write(&file, limits("ep", 11)).unwrap();
    wait_generation(&rls, 2, "a real change after an identical save");
    let r = request(
        "kcse",
        &[&[("endpoint", "ep"), ("path", "/x"), ("consumer", "c")]],
    );
    assert_eq!(rls.overall_code(r).await, Code::Ok as i32);
}
