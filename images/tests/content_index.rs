//! The content index of a qcow2 equals that of the raw image it was converted from, with
//! `qemu-img` (Debian's qemu-utils) making the qcow2 as users do.

use images::index::ContentIndex;
use images::{ImageFormat, ImageStore};
use std::process::Command;

#[tokio::test]
async fn qcow2_and_raw_of_one_disk_have_one_index() {
    let qemu_img = ["/usr/bin/qemu-img", "/usr/local/bin/qemu-img"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("qemu-img is missing: install Debian's qemu-utils (scripts/test does)");
    let dir = tempfile::tempdir().expect("tmp");
    let raw = dir.path().join("disk.raw");
    // 5 MiB + 4 KiB: data in MiB 0 and 3, zeros elsewhere (unallocated in the qcow2).
    let mut data = vec![0u8; (5 << 20) + 4096];
    for (i, b) in data[..300_000].iter_mut().enumerate() {
        *b = (i % 241) as u8 + 1;
    }
    for (i, b) in data[3 << 20..(3 << 20) + 70_000].iter_mut().enumerate() {
        *b = (i % 7) as u8 + 1;
    }
    std::fs::write(&raw, &data).expect("write raw");
    let qcow = dir.path().join("disk.qcow2");
    let out = Command::new(qemu_img)
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow)
        .output()
        .expect("run qemu-img");
    assert!(
        out.status.success(),
        "qemu-img: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let from_raw = ContentIndex::build(&raw, ImageFormat::Raw).expect("raw index");
    let from_qcow = ContentIndex::build(&qcow, ImageFormat::Qcow2).expect("qcow2 index");
    assert_eq!(from_qcow.content_len, data.len() as u64);
    assert_eq!(from_qcow, from_raw);

    // Through the store: built once, then read back from index/<sha>.
    let store = ImageStore::open(dir.path().join("store"))
        .await
        .expect("store");
    let bytes = std::fs::read(&qcow).expect("read qcow2");
    let blob = store
        .ingest(
            futures::stream::iter([Ok::<_, std::io::Error>(bytes)]),
            None,
            u64::MAX,
        )
        .await
        .expect("ingest");
    let first = store
        .content_index(&blob.sha256, ImageFormat::Qcow2)
        .await
        .expect("index");
    assert_eq!(first, from_raw);
    assert!(dir.path().join("store/index").join(&blob.sha256).exists());
    let again = store
        .content_index(&blob.sha256, ImageFormat::Qcow2)
        .await
        .expect("index again");
    assert_eq!(again, first);
}
