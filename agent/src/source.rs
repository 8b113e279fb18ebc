//! Where image bytes come from: the API over HTTP in production, a file in tests. Readers
//! that resume a broken stream and that hash what passes through.

use crate::error::{io, Error};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

/// A seekable source of image bytes.
pub trait ImageSource {
    /// The bytes from `offset` to the end (retrying the request itself as it sees fit).
    fn open_at(&mut self, offset: u64) -> Result<Box<dyn Read + Send>, Error>;

    /// Exactly `len` bytes at `offset`.
    fn read_range(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
        let mut buf = Vec::with_capacity(len.min(64 << 20) as usize);
        self.open_at(offset)?
            .take(len)
            .read_to_end(&mut buf)
            .map_err(io(format!("reading {len} bytes of the image at {offset}")))?;
        if (buf.len() as u64) < len {
            return Err(Error::Image(format!(
                "the image ends before byte {} (wanted {len} bytes at {offset})",
                offset + buf.len() as u64
            )));
        }
        Ok(buf)
    }

    /// How long to wait before re-opening after the `n`th broken stream (tests use zero).
    fn retry_delay(&self, n: u32) -> Duration {
        Duration::from_secs(u64::from(n).min(15))
    }
}

/// An image in a local file (tests, and `rackshare-agent` run by hand).
pub struct FileSource(pub PathBuf);

impl ImageSource for FileSource {
    fn open_at(&mut self, offset: u64) -> Result<Box<dyn Read + Send>, Error> {
        let mut f = File::open(&self.0).map_err(io(format!("opening {}", self.0.display())))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(io(format!("seeking {}", self.0.display())))?;
        Ok(Box::new(f))
    }

    fn retry_delay(&self, _n: u32) -> Duration {
        Duration::ZERO
    }
}

/// How many times a broken image stream is re-opened before the deploy fails.
pub const STREAM_ATTEMPTS: u32 = 6;

/// Reads `total` bytes from a source, resuming with a ranged request where the stream broke
/// (an error, or an end before `total`), up to [`STREAM_ATTEMPTS`] opens in all.
pub struct ResumingReader<'a> {
    source: &'a mut dyn ImageSource,
    inner: Option<Box<dyn Read + Send>>,
    offset: u64,
    total: u64,
    opens: u32,
}

impl<'a> ResumingReader<'a> {
    /// A reader of the whole image (`total` bytes as stored).
    pub fn new(source: &'a mut dyn ImageSource, total: u64) -> Self {
        ResumingReader {
            source,
            inner: None,
            offset: 0,
            total,
            opens: 0,
        }
    }

    fn reopen(&mut self, why: String) -> std::io::Result<()> {
        if self.opens >= STREAM_ATTEMPTS {
            return Err(std::io::Error::other(Error::Download {
                attempts: self.opens,
                last: why,
            }));
        }
        if self.opens > 0 {
            crate::log!(
                "image stream broke at byte {}: {why}; resuming",
                self.offset
            );
            std::thread::sleep(self.source.retry_delay(self.opens));
        }
        self.opens += 1;
        match self.source.open_at(self.offset) {
            Ok(r) => {
                self.inner = Some(r);
                Ok(())
            }
            Err(e) => {
                self.inner = None;
                // Opening failed: count it and try again on the next read.
                self.reopen(e.to_string())
            }
        }
    }
}

impl Read for ResumingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.offset >= self.total || buf.is_empty() {
                return Ok(0);
            }
            let want = buf
                .len()
                .min(usize::try_from(self.total - self.offset).unwrap_or(usize::MAX));
            let Some(inner) = self.inner.as_mut() else {
                self.reopen("first request".to_string())?;
                continue;
            };
            match inner.read(&mut buf[..want]) {
                Ok(0) => self.reopen(format!(
                    "the stream ended at byte {} of {}",
                    self.offset, self.total
                ))?,
                Ok(n) => {
                    self.offset += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => self.reopen(e.to_string())?,
            }
        }
    }
}

/// Passes bytes through, hashing and counting them.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    /// Bytes read so far.
    pub count: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// The hex sha256 of everything read.
    pub fn finish(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Turns an `io::Error` from a reader chain back into the agent error it carries, if any.
pub fn unwrap_io(what: &str, e: std::io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        if let Some(inner) = e.into_inner() {
            if let Ok(agent) = inner.downcast::<Error>() {
                return *agent;
            }
        }
        return Error::Image(format!("{what}: unreadable error"));
    }
    Error::Io {
        what: what.to_string(),
        source: e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `data` but every stream breaks after `chunk` bytes.
    struct Flaky {
        data: Vec<u8>,
        chunk: usize,
        opens: Vec<u64>,
    }

    impl ImageSource for Flaky {
        fn open_at(&mut self, offset: u64) -> Result<Box<dyn Read + Send>, Error> {
            self.opens.push(offset);
            let start = offset as usize;
            let end = (start + self.chunk).min(self.data.len());
            Ok(Box::new(std::io::Cursor::new(
                self.data[start..end].to_vec(),
            )))
        }
        fn retry_delay(&self, _n: u32) -> Duration {
            Duration::ZERO
        }
    }

    #[test]
    fn a_broken_stream_resumes_where_it_stopped() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut src = Flaky {
            data: data.clone(),
            chunk: 3000,
            opens: vec![],
        };
        let mut out = Vec::new();
        ResumingReader::new(&mut src, data.len() as u64)
            .read_to_end(&mut out)
            .expect("resumes");
        assert_eq!(out, data);
        assert_eq!(src.opens, vec![0, 3000, 6000, 9000]);
    }

    #[test]
    fn resuming_gives_up_after_bounded_attempts() {
        let mut src = Flaky {
            data: vec![1; 10_000],
            chunk: 100,
            opens: vec![],
        };
        let err = ResumingReader::new(&mut src, 10_000)
            .read_to_end(&mut Vec::new())
            .expect_err("gives up");
        let e = unwrap_io("reading", err);
        assert!(
            matches!(e, Error::Download { attempts, .. } if attempts == STREAM_ATTEMPTS),
            "{e}"
        );
    }
}
