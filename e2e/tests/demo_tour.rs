//! `make demo`'s walk-through, end to end (`projstore-demo --tour`): every step of the tour
//! succeeds on a fresh dev cluster, which is taken down afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

use std::process::Command;

#[test]
fn the_demo_tour_runs_every_step() {
    let zfs = Command::new("zpool")
        .arg("list")
        .output()
        .is_ok_and(|o| o.status.success());
    if !zfs {
        assert!(
            std::env::var("PROJSTORE_REQUIRE_ZFS").as_deref() != Ok("1"),
            "ZFS is required but unusable"
        );
        eprintln!("SKIP: no usable ZFS");
        return;
    }
    // Not below /tmp: the agents' sftp chroot needs root-owned, unwritable parents.
    let base = std::path::Path::new("/var/lib/projstore-e2e");
    std::fs::create_dir_all(base).unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("tour")
        .tempdir_in(base)
        .unwrap();
    let dir = tmp.path().join("s");
    let out = Command::new(env!("CARGO_BIN_EXE_projstore-demo"))
        .arg("--tour")
        .arg("--state-dir")
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    let _ = Command::new(env!("CARGO_BIN_EXE_projstore-dev"))
        .args(["down", "--state-dir"])
        .arg(&dir)
        .output();
    assert!(
        out.status.success(),
        "the tour failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in 0..=9 {
        assert!(
            text.contains(&format!("== {step}. ")),
            "step {step} missing"
        );
    }
    assert!(text.contains("Every step succeeded."));
    assert!(
        text.contains("project.projstore.io/thesis"),
        "kubectl output is shown"
    );
}
