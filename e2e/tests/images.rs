//! The images written without Docker (`e2e/images`, `e2e/lib/image.py`)
//! are the images the Dockerfiles describe: same user, entrypoint, command
//! and ports; a minimal filesystem (no shell) in which the binary really
//! runs; and the same digest from the same inputs.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    vigil_e2e::repo_dir()
}

/// A workspace binary (built by `cargo test --workspace`; built here when a
/// narrower command did not).
fn binary(package: &str, name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let bin = dir.join(name);
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo).args(["build", "-p", package, "--bin", name]).status().unwrap();
        assert!(ok.success(), "building {name}");
    }
    bin
}

/// What the final stage of a Dockerfile says, parsed here independently of
/// the image writer: (user, exposed ports, entrypoint, cmd).
fn parse_dockerfile(path: &Path) -> (String, Vec<String>, Value, Value) {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).expect("a FROM");
    let (mut user, mut ports, mut entrypoint, mut cmd) =
        (String::new(), Vec::new(), Value::Null, Value::Null);
    for l in &lines[last_from + 1..] {
        let (word, rest) = l.split_once(' ').unwrap_or((l, ""));
        match word {
            "USER" => user = rest.trim().to_string(),
            "EXPOSE" => ports.extend(rest.split_whitespace().map(|p| format!("{p}/tcp"))),
            "ENTRYPOINT" => entrypoint = serde_json::from_str(rest).unwrap(),
            "CMD" => cmd = serde_json::from_str(rest).unwrap(),
            _ => {}
        }
    }
    (user, ports, entrypoint, cmd)
}

struct Image {
    dir: tempfile::TempDir,
    digest: String,
    config: Value,
    /// The unpacked root filesystem.
    rootfs: PathBuf,
}

fn write_image(dockerfile: &str, binary: &Path, name: &str, out: &Path) -> String {
    let o = Command::new("python3")
        .arg(repo().join("e2e/lib/image.py"))
        .args(["--dockerfile", repo().join(dockerfile).to_str().unwrap()])
        .args(["--binary", binary.to_str().unwrap(), "--name", name, "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "image.py: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().split_whitespace().nth(2).unwrap().to_string()
}

fn build(dockerfile: &str, binary: &Path, name: &str) -> Image {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join(format!("{name}.tar"));
    let digest = write_image(dockerfile, binary, name, &archive);
    let layout = dir.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    let ok =
        Command::new("tar").args(["-xf", archive.to_str().unwrap(), "-C", layout.to_str().unwrap()]).status();
    assert!(ok.unwrap().success());
    let blob = |digest: &str| layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
    let manifest: Value = serde_json::from_slice(&std::fs::read(blob(&digest)).unwrap()).unwrap();
    let config: Value =
        serde_json::from_slice(&std::fs::read(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap())
            .unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    let ok =
        Command::new("tar").args(["-xzf", layer.to_str().unwrap(), "-C", rootfs.to_str().unwrap()]).status();
    assert!(ok.unwrap().success());
    Image { dir, digest, config, rootfs }
}

fn check(dockerfile: &str, package: &str, bin: &str, name: &str) {
    let binary = binary(package, bin);
    let image = build(dockerfile, &binary, name);
    let (user, ports, entrypoint, cmd) = parse_dockerfile(&repo().join(dockerfile));
    let c = &image.config["config"];
    assert_eq!(c["User"], user.as_str(), "{dockerfile}: USER");
    assert_eq!(user, "65532:65532", "{dockerfile}: non-root");
    assert_eq!(c["Entrypoint"], entrypoint, "{dockerfile}: ENTRYPOINT");
    assert_eq!(c["Cmd"], cmd, "{dockerfile}: CMD");
    let mut exposed: Vec<String> = c["ExposedPorts"].as_object().unwrap().keys().cloned().collect();
    exposed.sort();
    assert_eq!(exposed, ports, "{dockerfile}: EXPOSE");
    for label in ["title", "version", "licenses", "source", "created"] {
        assert!(c["Labels"][format!("org.opencontainers.image.{label}")].is_string(), "label {label}: {c}");
    }

    // Minimal: the binary, its libraries, certificates, users; no shell.
    let root = &image.rootfs;
    let exe = entrypoint[0].as_str().unwrap().trim_start_matches('/');
    assert!(root.join(exe).is_file(), "{exe} in the image");
    assert!(!root.join("bin/sh").exists() && !root.join("usr/bin/sh").exists(), "no shell");
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");
    assert!(root.join("etc/ssl/certs/ca-certificates.crt").is_file());
    // It runs from that filesystem alone (as the kubelet would run it).
    let out = Command::new("chroot")
        .arg(root)
        .arg(&entrypoint[0].as_str().unwrap())
        .arg("--version")
        .output()
        .expect("chroot (the tests run as root)");
    assert!(out.status.success(), "{bin} --version in the image: {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(bin),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Reproducible: the same inputs give the same digest.
    let again = write_image(dockerfile, &binary, name, &image.dir.path().join("again.tar"));
    assert_eq!(again, image.digest, "{name}: same inputs, same digest");
}

#[test]
fn the_runner_image_is_the_one_its_dockerfile_describes_and_runs_alone() {
    check("runner/Dockerfile", "vigil-runner", "vigil", "vigil-runner");
}

#[test]
fn the_operator_image_is_the_one_its_dockerfile_describes_and_runs_alone() {
    check("operator/Dockerfile", "vigil-operator", "vigil-operator", "vigil-operator");
}
