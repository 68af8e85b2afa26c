//! Unit tests for `HardenedSpec` validation: org ids, path escapes, networks.

#![allow(
    clippy::unwrap_used,
    clippy::print_stderr,
    reason = "test helpers outside #[test] fns: a failed setup step is a test failure; SKIP lines go to stderr"
)]

use std::path::Path;

use containers::{HardenedSpec, OrgId, SpecError, check_network};

fn spec(root: &Path, org: &str) -> HardenedSpec {
    HardenedSpec::new(
        OrgId::parse(org).unwrap(),
        "img:t",
        root,
        "cp-net",
        vec!["/bin/sh".into()],
    )
}

#[test]
fn org_ids() {
    for good in ["a", "acme", "0rg", "a-b_c", &"a".repeat(63)] {
        assert!(OrgId::parse(good).is_ok(), "{good}");
    }
    for bad in [
        "",
        "-a",
        "_a",
        "A",
        "a/b",
        "..",
        "../x",
        "a.b",
        "a b",
        "ä",
        &"a".repeat(64),
        "a\0",
        ".",
    ] {
        assert!(OrgId::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn folder_must_exist_and_stay_inside() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("good")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.path().join("evil")).unwrap();
    std::os::unix::fs::symlink(root.path().join("good"), root.path().join("alias")).unwrap();
    std::fs::write(root.path().join("file"), b"x").unwrap();

    let got = spec(root.path(), "good").host_folder().unwrap();
    assert_eq!(got, root.path().canonicalize().unwrap().join("good"));
    assert!(matches!(
        spec(root.path(), "evil").host_folder(),
        Err(SpecError::Escape)
    ));
    // A symlink to a sibling inside the root is still another org's folder.
    assert!(matches!(
        spec(root.path(), "alias").host_folder(),
        Err(SpecError::Escape)
    ));
    assert!(matches!(
        spec(root.path(), "missing").host_folder(),
        Err(SpecError::OrgFolder(_))
    ));
    assert!(matches!(
        spec(root.path(), "file").host_folder(),
        Err(SpecError::OrgFolder(_))
    ));
    assert!(spec(root.path(), "good").to_create_body().is_ok());
}

#[test]
fn system_paths_refused() {
    for (root, org) in [
        ("/", "etc"),
        ("/", "tmp"),
        ("/var", "run"),
        ("/var/lib", "docker"),
        ("/run", "docker"),
    ] {
        let r = spec(Path::new(root), org).host_folder();
        assert!(
            matches!(
                r,
                Err(SpecError::SystemPath(_)) | Err(SpecError::OrgFolder(_))
            ),
            "{root}/{org}: {r:?}"
        );
        assert!(r.is_err());
    }
}

#[test]
fn networks_refused() {
    for bad in [
        "bridge",
        "host",
        "default",
        "none",
        "container:abc",
        "",
        "a b",
        "x;y",
    ] {
        assert!(
            matches!(check_network(bad), Err(SpecError::BadNetwork(_))),
            "{bad}"
        );
    }
    assert!(check_network("cp-org-acme").is_ok());
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("acme")).unwrap();
    let mut s = spec(root.path(), "acme");
    s.network = "bridge".into();
    assert!(matches!(s.to_create_body(), Err(SpecError::BadNetwork(_))));
    s.network = "cp-net".into();
    s.limits.pids = 0;
    assert!(matches!(s.to_create_body(), Err(SpecError::BadLimits)));
}

#[test]
fn body_has_all_layers() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("acme")).unwrap();
    let b = spec(root.path(), "acme").to_create_body().unwrap();
    let h = b.host_config.unwrap();
    assert_eq!(b.user.as_deref(), Some("65532:65532"));
    assert_eq!(h.cap_drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(h.cap_add, Some(vec![]));
    assert_eq!(h.readonly_rootfs, Some(true));
    assert_eq!(h.memory, h.memory_swap);
    assert!(
        h.security_opt
            .unwrap()
            .iter()
            .all(|s| !s.contains("unconfined"))
    );
    assert_eq!(h.binds.unwrap().len(), 1);
    let tmp = h.tmpfs.unwrap();
    let opts = tmp.get("/tmp").unwrap();
    for o in ["noexec", "nosuid", "nodev", "size="] {
        assert!(opts.contains(o), "{opts}");
    }
}

#[test]
fn ldd_parsing() {
    let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
    let libs = containers::parse_ldd(text);
    assert_eq!(
        libs,
        vec![
            Path::new("/lib/x86_64-linux-gnu/libc.so.6"),
            Path::new("/lib64/ld-linux-x86-64.so.2")
        ]
    );
}
