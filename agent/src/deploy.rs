//! Deploy: stream the image onto the disk (no staging copy), read it back and hash it, then
//! seed cloud-init. Raw and raw.zst are written front to back; qcow2 is in `qcow2.rs`.

use crate::blockdev::{
    check_fits, drop_caches, hash_ranges, open_disk, read_back, read_full, CHUNK,
};
use crate::error::{io, Error};
use crate::source::{unwrap_io, HashingReader, ImageSource, ResumingReader};
use crate::{Challenger, Progress};
use proto::{ChallengeRequest, DeployResult, ImageSpec, Task};
use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::rc::Rc;

/// The image formats the agent writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The disk's bytes as they are.
    Raw,
    /// The disk's bytes, zstd-compressed (one or more frames).
    RawZst,
    /// QEMU's copy-on-write format, version 2 or 3, without compression, encryption or backing file.
    Qcow2,
}

impl Format {
    /// Parses the protocol's `format` field.
    pub fn parse(s: &str) -> Result<Format, Error> {
        match s {
            "raw" => Ok(Format::Raw),
            "raw.zst" => Ok(Format::RawZst),
            "qcow2" => Ok(Format::Qcow2),
            other => Err(Error::Image(format!(
                "format '{other}' is not one of raw, raw.zst, qcow2"
            ))),
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Bytes of the expanded image now at the start of the disk.
    pub bytes: u64,
    /// sha256 of those bytes as they were written, when they were written in order.
    pub content_sha256: Option<String>,
    /// For a raw image, the sha256 the read-back must equal (the image's own).
    pub raw_sha256: Option<String>,
}

/// Sequential writer that hashes what it writes and reports progress.
struct Writer<'a> {
    file: &'a mut File,
    disk: String,
    /// None for raw images: hashing while writing halved the write rate under TCG
    /// (bench/reimage), and for raw the read-back hash is compared with the image's directly.
    hasher: Option<Sha256>,
    written: u64,
    /// Progress counts these stored (downloaded) bytes when set, else `written`.
    stored: Option<Rc<Cell<u64>>>,
    total: u64,
    progress: &'a mut dyn Progress,
}

impl Writer<'_> {
    fn copy_from(&mut self, reader: &mut dyn Read) -> Result<(), Error> {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = read_full(reader, &mut buf).map_err(|e| unwrap_io("reading the image", e))?;
            if n == 0 {
                return Ok(());
            }
            self.file
                .write_all(&buf[..n])
                .map_err(io(format!("writing {}", self.disk)))?;
            if let Some(h) = &mut self.hasher {
                h.update(&buf[..n]);
            }
            self.written += n as u64;
            let done = self.stored.as_ref().map_or(self.written, |c| c.get());
            self.progress.report("writing", done, self.total)?;
        }
    }
}

/// Counts bytes into a shared cell (for progress through a decoder).
struct Counting<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

fn check_download(spec: &ImageSpec, got: &str) -> Result<(), Error> {
    if !got.eq_ignore_ascii_case(spec.sha256.trim()) {
        return Err(Error::HashMismatch(format!(
            "the image downloaded has sha256 {got}, but the API announced {}",
            spec.sha256
        )));
    }
    Ok(())
}

/// Writes the image from `source` onto `disk` and fsyncs it; checks the download's sha256.
pub fn write_image(
    source: &mut dyn ImageSource,
    spec: &ImageSpec,
    disk: &Path,
    progress: &mut dyn Progress,
) -> Result<Written, Error> {
    let format = Format::parse(&spec.format)?;
    let (mut file, capacity) = open_disk(disk)?;
    let name = disk.display().to_string();
    progress.report("writing", 0, spec.size_bytes)?;
    let written = match format {
        Format::Raw => {
            check_fits(disk, capacity, spec.size_bytes)?;
            let mut w = Writer {
                file: &mut file,
                disk: name.clone(),
                hasher: None,
                written: 0,
                stored: None,
                total: spec.size_bytes,
                progress,
            };
            // Raw resumes with a ranged request where the stream broke.
            w.copy_from(&mut ResumingReader::new(source, spec.size_bytes))?;
            // The stored bytes are the disk bytes: the read-back is checked against the
            // image's own sha256 (a corrupt download fails there).
            Written {
                bytes: w.written,
                content_sha256: None,
                raw_sha256: Some(spec.sha256.trim().to_ascii_lowercase()),
            }
        }
        Format::RawZst => {
            let count = Rc::new(Cell::new(0));
            // The stored stream resumes like raw: the decoder never sees the break.
            let mut stored = HashingReader::new(Counting {
                inner: ResumingReader::new(source, spec.size_bytes),
                count: count.clone(),
            });
            let mut w = Writer {
                file: &mut file,
                disk: name.clone(),
                hasher: Some(Sha256::new()),
                written: 0,
                stored: Some(count),
                total: spec.size_bytes,
                progress,
            };
            {
                let mut buffered = BufReader::with_capacity(CHUNK, &mut stored);
                // zstd allows several frames back to back (e.g. `zstd -T0` or concatenation).
                while !buffered
                    .fill_buf()
                    .map_err(|e| unwrap_io("reading the image", e))?
                    .is_empty()
                {
                    let mut frame = ruzstd::decoding::StreamingDecoder::new(&mut buffered)
                        .map_err(|e| Error::Image(format!("raw.zst: not a zstd frame: {e}")))?;
                    w.copy_from(&mut frame)?;
                }
            }
            let content = w
                .hasher
                .take()
                .map(|h| hex::encode(h.finalize()))
                .unwrap_or_default();
            let bytes = w.written;
            check_download(spec, &stored.finish())?;
            Written {
                bytes,
                content_sha256: Some(content),
                raw_sha256: None,
            }
        }
        Format::Qcow2 => {
            let bytes = crate::qcow2::write(source, spec, &mut file, &name, capacity, progress)?;
            Written {
                bytes,
                content_sha256: None,
                raw_sha256: None,
            }
        }
    };
    file.sync_all().map_err(io(format!("flushing {name}")))?;
    Ok(written)
}

/// Writes, reads back and compares: the part of a deploy that tests run on temp files.
/// Returns the bytes written and the read-back sha256.
pub fn write_and_verify(
    source: &mut dyn ImageSource,
    spec: &ImageSpec,
    disk: &Path,
    progress: &mut dyn Progress,
) -> Result<(u64, String), Error> {
    write_and_verify_timed(source, spec, disk, progress).map(|(bytes, sha, _)| (bytes, sha))
}

/// How long the two halves of a deploy took, in milliseconds (for bench/reimage).
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    /// Download, decode, write and fsync.
    pub write_ms: u64,
    /// Read back and hash.
    pub verify_ms: u64,
}

/// [`write_and_verify`], also telling how long writing and verifying took.
pub fn write_and_verify_timed(
    source: &mut dyn ImageSource,
    spec: &ImageSpec,
    disk: &Path,
    progress: &mut dyn Progress,
) -> Result<(u64, String, Timing), Error> {
    let t0 = std::time::Instant::now();
    let written = write_image(source, spec, disk, progress)?;
    let write_ms = t0.elapsed().as_millis() as u64;
    let t1 = std::time::Instant::now();
    drop_caches(disk);
    let back = read_back(disk, written.bytes, progress)?;
    let timing = Timing {
        write_ms,
        verify_ms: t1.elapsed().as_millis() as u64,
    };
    if let Some(r) = &written.raw_sha256 {
        if *r != back {
            return Err(Error::HashMismatch(format!(
                "{} read back with sha256 {back}, but the image is {r}: the download or the disk is corrupt",
                disk.display()
            )));
        }
    }
    if let Some(w) = &written.content_sha256 {
        if *w != back {
            return Err(Error::HashMismatch(format!(
                "{} read back with sha256 {back}, but {w} was written",
                disk.display()
            )));
        }
    }
    if let Some(c) = &spec.content_sha256 {
        if !c.trim().eq_ignore_ascii_case(&back) {
            return Err(Error::HashMismatch(format!(
                "{} read back with sha256 {back}, but the image's content sha256 is {c}",
                disk.display()
            )));
        }
    }
    Ok((written.bytes, back, timing))
}

/// The whole deploy task: pick the disk, write, verify, answer the server's challenge, then
/// seed cloud-init.
pub fn run<S: Progress + Challenger>(
    source: &mut dyn ImageSource,
    job_id: i64,
    task: &Task,
    sys_root: &Path,
    server: &mut S,
) -> Result<DeployResult, Error> {
    let spec = task
        .image
        .as_ref()
        .ok_or_else(|| Error::Image("the deploy task names no image".to_string()))?;
    let disk = match &task.target_disk {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            let disks = crate::disks::list(sys_root)?;
            let d = crate::disks::pick_target(&disks).ok_or_else(|| {
                Error::NoDisk(format!(
                    "{} lists no non-removable disk (only loop, ram, optical or removable devices)",
                    sys_root.join("block").display()
                ))
            })?;
            Path::new("/dev").join(&d.name)
        }
    };
    crate::log!(
        "deploying {} ({}, {} bytes) to {}",
        spec.url,
        spec.format,
        spec.size_bytes,
        disk.display()
    );
    let (bytes, sha256, timing) = write_and_verify_timed(source, spec, &disk, server)?;
    crate::log!("wrote and read back {bytes} bytes, sha256 {sha256}");
    // Before the seed changes the disk: the chunks the server names now must read back as
    // the image's (the page cache was dropped for the read-back above).
    let challenge = server.challenge(&ChallengeRequest::default())?;
    let challenge = hash_ranges(&disk, &challenge.ranges)?;
    crate::log!("answered the deploy challenge ({} ranges)", challenge.len());
    let progress: &mut dyn Progress = server;
    progress.report("seeding", 0, 0)?;
    // The seed goes in after the read-back, so the hash compares the image exactly.
    let seed = crate::seed::seed(&disk, sys_root, job_id, task)?;
    crate::log!("seed: {seed}");
    Ok(DeployResult {
        target_disk: disk.display().to_string(),
        written_bytes: bytes,
        sha256,
        // The agent checks the download against the task's hash itself (and fails on a
        // mismatch), so it does not repeat it here.
        image_sha256: None,
        seed,
        write_ms: timing.write_ms,
        verify_ms: timing.verify_ms,
        challenge,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::FileSource;
    use crate::NoProgress;

    fn sha(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    fn image(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 8) as u8
            })
            .collect()
    }

    fn spec(path: &Path, sha256: String, format: &str) -> ImageSpec {
        ImageSpec {
            url: path.display().to_string(),
            sha256,
            size_bytes: std::fs::metadata(path).expect("image exists").len(),
            format: format.to_string(),
            content_sha256: None,
        }
    }

    #[test]
    fn raw_is_written_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = image(3 * CHUNK + 12345, 1);
        let img = dir.path().join("img.raw");
        std::fs::write(&img, &data).expect("write");
        let disk = dir.path().join("disk");
        std::fs::write(&disk, vec![0xAAu8; 8 * CHUNK]).expect("write");
        let s = spec(&img, sha(&data), "raw");
        let (n, back) =
            write_and_verify(&mut FileSource(img), &s, &disk, &mut NoProgress).expect("deploys");
        assert_eq!(n, data.len() as u64);
        assert_eq!(back, sha(&data));
        let on_disk = std::fs::read(&disk).expect("read");
        assert_eq!(&on_disk[..data.len()], &data[..]);
        // Past the image the disk is untouched.
        assert!(on_disk[data.len()..].iter().all(|&b| b == 0xAA));
    }

    #[test]
    fn a_wrong_sha256_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = image(CHUNK + 1, 2);
        let img = dir.path().join("img.raw");
        std::fs::write(&img, &data).expect("write");
        let disk = dir.path().join("disk");
        std::fs::write(&disk, b"").expect("write");
        let s = spec(&img, "00".repeat(32), "raw");
        let err = write_and_verify(&mut FileSource(img), &s, &disk, &mut NoProgress)
            .expect_err("mismatch");
        assert!(matches!(err, Error::HashMismatch(_)), "{err}");
        assert!(err.to_string().contains(&sha(&data)), "{err}");
    }

    #[test]
    fn zstd_multi_frame_is_decoded_while_streaming() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = image(2 * CHUNK + 7, 3);
        let mut b = vec![0u8; CHUNK];
        b.extend(image(5000, 4));
        let mut zst =
            ruzstd::encoding::compress_to_vec(&a[..], ruzstd::encoding::CompressionLevel::Fastest);
        zst.extend(ruzstd::encoding::compress_to_vec(
            &b[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        ));
        let img = dir.path().join("img.raw.zst");
        std::fs::write(&img, &zst).expect("write");
        let disk = dir.path().join("disk");
        std::fs::write(&disk, b"").expect("write");
        let mut s = spec(&img, sha(&zst), "raw.zst");
        let mut whole = a.clone();
        whole.extend(&b);
        s.content_sha256 = Some(sha(&whole));
        let (n, back) =
            write_and_verify(&mut FileSource(img), &s, &disk, &mut NoProgress).expect("deploys");
        assert_eq!(n, whole.len() as u64);
        assert_eq!(back, sha(&whole));
    }

    #[test]
    fn corrupt_zstd_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("img.raw.zst");
        std::fs::write(&img, b"this is not zstd at all").expect("write");
        let disk = dir.path().join("disk");
        std::fs::write(&disk, b"").expect("write");
        let s = spec(&img, sha(b"this is not zstd at all"), "raw.zst");
        let err = write_and_verify(&mut FileSource(img), &s, &disk, &mut NoProgress)
            .expect_err("refused");
        assert!(err.to_string().contains("zstd"), "{err}");
    }

    #[test]
    fn unknown_formats_are_refused() {
        assert!(Format::parse("vmdk").is_err());
        assert_eq!(Format::parse("qcow2").ok(), Some(Format::Qcow2));
    }
}
