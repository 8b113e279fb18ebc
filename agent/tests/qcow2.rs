//! qcow2 images made by qemu-img, through the deploy pipeline (needs qemu-img: Debian
//! package qemu-utils).

use proto::ImageSpec;
use rackshare_agent::deploy::write_and_verify;
use rackshare_agent::qcow2::parse_header;
use rackshare_agent::source::FileSource;
use rackshare_agent::NoProgress;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs (Debian package qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A raw disk with data, holes of zeros, and a tail that is not cluster-aligned.
fn raw_disk(path: &Path) -> Vec<u8> {
    let mut data = vec![0u8; 5 * 1024 * 1024 + 4096];
    for (i, b) in data[..300_000].iter_mut().enumerate() {
        *b = (i % 251) as u8 + 1;
    }
    for (i, b) in data[2_000_000..2_100_000].iter_mut().enumerate() {
        *b = (i % 13) as u8 + 7;
    }
    let n = data.len();
    data[n - 10..].copy_from_slice(b"last bytes");
    std::fs::write(path, &data).expect("write raw");
    data
}

fn spec_for(path: &Path) -> ImageSpec {
    let bytes = std::fs::read(path).expect("read image");
    ImageSpec {
        url: path.display().to_string(),
        sha256: sha(&bytes),
        size_bytes: bytes.len() as u64,
        format: "qcow2".to_string(),
        content_sha256: None,
    }
}

#[test]
fn qcow2_made_by_qemu_img_is_written_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("disk.raw");
    let data = raw_disk(&raw);
    for (name, extra) in [
        ("v3.qcow2", "compat=1.1"),
        ("v2.qcow2", "compat=0.10,cluster_size=4096"),
    ] {
        let q = dir.path().join(name);
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            extra,
            &raw.display().to_string(),
            &q.display().to_string(),
        ]);
        let disk = dir.path().join(format!("{name}.target"));
        // Garbage on the target proves the holes are zeroed.
        std::fs::write(&disk, vec![0xEEu8; data.len() + 100]).expect("write");
        let mut s = spec_for(&q);
        s.content_sha256 = Some(sha(&data));
        let (n, back) =
            write_and_verify(&mut FileSource(q), &s, &disk, &mut NoProgress).expect(name);
        assert_eq!(n, data.len() as u64, "{name}");
        assert_eq!(back, sha(&data), "{name}");
    }
}

#[test]
fn compressed_qcow2_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("disk.raw");
    raw_disk(&raw);
    let q = dir.path().join("c.qcow2");
    qemu_img(&[
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        &raw.display().to_string(),
        &q.display().to_string(),
    ]);
    let disk = dir.path().join("target");
    std::fs::write(&disk, b"").expect("write");
    let err = write_and_verify(
        &mut FileSource(q.clone()),
        &spec_for(&q),
        &disk,
        &mut NoProgress,
    )
    .expect_err("refused");
    assert!(err.to_string().contains("compressed clusters"), "{err}");
}

#[test]
fn backing_files_and_bad_magic_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.qcow2");
    qemu_img(&["create", "-f", "qcow2", &base.display().to_string(), "1M"]);
    let top = dir.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        &base.display().to_string(),
        "-F",
        "qcow2",
        &top.display().to_string(),
    ]);
    let head = std::fs::read(&top).expect("read");
    let err = parse_header(&head).expect_err("backing file");
    assert!(err.to_string().contains("backing file"), "{err}");
    assert!(parse_header(
        b"not a qcow2 header at all, just some text here to be long enough for it................"
    )
    .is_err());
}
