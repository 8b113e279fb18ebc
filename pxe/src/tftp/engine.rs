//! The TFTP data plane: one thread moves every running transfer's DATA and ACK packets.
//!
//! Why a thread of its own rather than a tokio task per transfer: a lock-step transfer is
//! one small packet each way per block, so per-packet overhead is the whole cost. A task
//! per transfer paid for a timer registration, a waker, a task poll and, on the
//! multi-threaded runtime, cross-thread wake-ups for every block (~12 µs of server CPU per
//! 1,468-byte block, measured). Here one `mio` loop drains every ready socket, answers each
//! ACK with the next window straight from a per-transfer read buffer, and checks
//! retransmission deadlines in a coarse sweep; it only sleeps when no socket is ready.
//! Each transfer keeps its own connected socket, so its server port (its TID, RFC 1350) is
//! its own and datagrams from anyone but its client never reach it.
//!
//! File reads happen on this thread (`pread` into a buffer of up to 1 MiB per transfer):
//! boot files are small and hot in the page cache; a cold read stalls the loop for one disk
//! read, which is the price of not hopping threads per block.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, ErrorKind};
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Registry, Token, Waker};

use super::{error_packet, parse_tftp_packet, Slot, TftpErrorCode, TftpPacket, OP_DATA};
use crate::metrics::Metrics;

/// Token of the waker that announces new transfers and shutdown.
const WAKER: Token = Token(usize::MAX);
/// How often retransmission deadlines are checked (timeouts are whole seconds).
const SWEEP: Duration = Duration::from_millis(50);
/// Smallest and largest per-transfer read buffer.
const MIN_BUF: usize = 64 * 1024;
const MAX_BUF: usize = 1024 * 1024;

/// A negotiated transfer handed to the engine.
pub(crate) struct NewTransfer {
    /// Bound to the boot interface and connected to the client.
    pub sock: StdUdpSocket,
    /// The client (for logs).
    pub peer: SocketAddr,
    /// The file being served and its size.
    pub file: File,
    /// Size in bytes.
    pub size: u64,
    /// Negotiated block size.
    pub blksize: usize,
    /// Negotiated window (RFC 7440; 1 = lock-step).
    pub window: usize,
    /// Retransmission timeout.
    pub timeout: Duration,
    /// Retransmissions before giving up.
    pub retries: u32,
    /// The OACK to send first (block 0), when options were negotiated.
    pub oack: Option<Vec<u8>>,
    /// Held until the transfer ends, however it ends (dropping it frees the slot).
    pub slot: Slot,
}

/// Handle to the data-plane thread; dropping it stops the thread and ends every transfer.
pub(crate) struct Engine {
    tx: mpsc::Sender<NewTransfer>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Starts the thread.
    pub(crate) fn start(metrics: Arc<Metrics>) -> io::Result<Engine> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("tftp-data".into())
                .spawn(move || Loop::new(poll, rx, stop, metrics).run())?
        };
        Ok(Engine {
            tx,
            waker,
            stop,
            thread: Some(thread),
        })
    }

    /// Asks the thread to end every transfer and stop (without waiting for it).
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }

    /// Hands a transfer over; if the engine is gone, the transfer ends at once.
    pub(crate) fn submit(&self, t: NewTransfer) {
        match self.tx.send(t) {
            Ok(()) => {
                let _ = self.waker.wake();
            }
            Err(mpsc::SendError(t)) => drop(t),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a packet or a deadline did to a transfer.
enum Step {
    Continue,
    Finished,
}

/// One running transfer.
struct Transfer {
    sock: UdpSocket,
    peer: SocketAddr,
    file: File,
    size: u64,
    blksize: usize,
    window: usize,
    timeout: Duration,
    retries: u32,
    /// Block 0 is the OACK; `None` once acknowledged or when there was none.
    oack: Option<Vec<u8>>,
    /// Absolute index of the first unacknowledged block (0 = the OACK).
    base: u64,
    /// Absolute index one past the last block ever sent (for the byte counter).
    high: u64,
    /// Number of the last DATA block: the one shorter than `blksize`, possibly empty.
    last: u64,
    deadline: Instant,
    attempts: u32,
    /// File bytes `[buf_off, buf_off + buf.len())`.
    buf: Vec<u8>,
    buf_off: u64,
    buf_cap: usize,
    _slot: Slot,
}

impl Transfer {
    fn new(t: NewTransfer, now: Instant) -> io::Result<Transfer> {
        t.sock.set_nonblocking(true)?;
        let blksize = t.blksize.max(1);
        let window = t.window.max(1);
        Ok(Transfer {
            sock: UdpSocket::from_std(t.sock),
            peer: t.peer,
            file: t.file,
            size: t.size,
            blksize,
            window,
            timeout: t.timeout,
            retries: t.retries,
            base: if t.oack.is_some() { 0 } else { 1 },
            oack: t.oack,
            high: 1,
            last: t.size / blksize as u64 + 1,
            deadline: now + t.timeout,
            attempts: 0,
            buf: Vec::new(),
            buf_off: 0,
            buf_cap: (blksize * window).clamp(MIN_BUF, MAX_BUF),
            _slot: t.slot,
        })
    }

    /// Sends the OACK or the window starting at `base`. `Err` ends the transfer.
    fn send_window(&mut self, scratch: &mut Vec<u8>, m: &Metrics) -> io::Result<()> {
        if self.base == 0 {
            if let Some(o) = &self.oack {
                return send(&self.sock, o);
            }
        }
        let end = (self.base + self.window as u64).min(self.last + 1);
        for block in self.base..end {
            let off = (block - 1) * self.blksize as u64;
            let len = (self.size.saturating_sub(off)).min(self.blksize as u64) as usize;
            self.fill(off, len)?;
            let start = (off - self.buf_off) as usize;
            scratch.clear();
            scratch.extend_from_slice(&OP_DATA.to_be_bytes());
            // Block numbers wrap past 65535 (the de-facto rollover to 0).
            scratch.extend_from_slice(&((block & 0xffff) as u16).to_be_bytes());
            scratch.extend_from_slice(&self.buf[start..start + len]);
            send(&self.sock, scratch)?;
            if block >= self.high {
                self.high = block + 1;
                m.tftp_bytes.fetch_add(len as u64, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Makes sure `[off, off + len)` is in the buffer.
    fn fill(&mut self, off: u64, len: usize) -> io::Result<()> {
        let have_end = self.buf_off + self.buf.len() as u64;
        if off >= self.buf_off && off + len as u64 <= have_end {
            return Ok(());
        }
        let want = (self.size - off).min(self.buf_cap as u64) as usize;
        self.buf.resize(want, 0);
        let mut got = 0;
        while got < want {
            match self.file.read_at(&mut self.buf[got..], off + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if got < len {
            return Err(io::Error::new(ErrorKind::UnexpectedEof, "file shrank"));
        }
        self.buf.truncate(got);
        self.buf_off = off;
        Ok(())
    }

    /// Reads up to the first ACK that moves the window (see the note there).
    fn on_readable(
        &mut self,
        now: Instant,
        rbuf: &mut [u8],
        scratch: &mut Vec<u8>,
        m: &Metrics,
    ) -> Step {
        loop {
            // Connected socket: only the client's datagrams arrive here.
            let n = match self.sock.recv(rbuf) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // e.g. ICMP port unreachable: the client is gone.
                    tracing::debug!(peer = %self.peer, "TFTP receive failed: {e}");
                    m.tftp_aborted_by_client.fetch_add(1, Ordering::Relaxed);
                    return Step::Finished;
                }
            };
            match rbuf.get(..n).map(parse_tftp_packet) {
                Some(Ok(TftpPacket::Ack(b))) => {
                    let in_flight = if self.base == 0 {
                        1 // the OACK alone
                    } else {
                        (self.base + self.window as u64).min(self.last + 1) - self.base
                    };
                    // Offset of the acknowledged block inside the window; anything else is an
                    // older duplicate (sorcerer's apprentice) and is ignored.
                    let k = u64::from(b.wrapping_sub((self.base & 0xffff) as u16));
                    if k >= in_flight {
                        continue;
                    }
                    self.base += k + 1;
                    if self.base > self.last {
                        m.tftp_completed.fetch_add(1, Ordering::Relaxed);
                        return Step::Finished;
                    }
                    self.attempts = 0;
                    self.deadline = now + self.timeout;
                    if let Err(e) = self.send_window(scratch, m) {
                        return self.failed(e);
                    }
                    // Stop reading here: until our DATA reaches it, the client sends nothing
                    // new, so what could still be queued is a stale duplicate, read (and
                    // skipped) at the next arrival. This saves a receive that would only say
                    // "empty" on every block — a third of the per-block system calls.
                    return Step::Continue;
                }
                Some(Ok(TftpPacket::Error { code, message })) => {
                    tracing::debug!(peer = %self.peer, code, %message, "TFTP client aborted");
                    m.tftp_aborted_by_client.fetch_add(1, Ordering::Relaxed);
                    return Step::Finished;
                }
                _ => {
                    m.tftp_malformed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Retransmits when the deadline passed; gives up after `retries`.
    fn on_sweep(&mut self, now: Instant, scratch: &mut Vec<u8>, m: &Metrics) -> Step {
        if now < self.deadline {
            return Step::Continue;
        }
        if self.attempts >= self.retries {
            tracing::debug!(peer = %self.peer, "TFTP transfer timed out");
            m.tftp_timeouts.fetch_add(1, Ordering::Relaxed);
            return Step::Finished;
        }
        self.attempts += 1;
        self.deadline = now + self.timeout;
        match self.send_window(scratch, m) {
            Ok(()) => Step::Continue,
            Err(e) => self.failed(e),
        }
    }

    fn failed(&mut self, e: io::Error) -> Step {
        if e.kind() == ErrorKind::UnexpectedEof || e.raw_os_error() == Some(libc::EIO) {
            tracing::warn!(peer = %self.peer, "TFTP read failed: {e}");
            let _ = send(
                &self.sock,
                &error_packet(TftpErrorCode::Undefined, "read error"),
            );
        } else {
            tracing::debug!(peer = %self.peer, "TFTP send failed: {e}");
        }
        Step::Finished
    }

    /// Deregisters the socket; dropping the transfer then frees its slot.
    fn end(mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.sock);
    }
}

/// One datagram; a full send buffer counts as a loss (the deadline retransmits).
fn send(sock: &UdpSocket, pkt: &[u8]) -> io::Result<()> {
    match sock.send(pkt) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// The thread's state.
struct Loop {
    poll: Poll,
    rx: mpsc::Receiver<NewTransfer>,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    transfers: HashMap<usize, Transfer>,
    next_token: usize,
}

impl Loop {
    fn new(
        poll: Poll,
        rx: mpsc::Receiver<NewTransfer>,
        stop: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
    ) -> Loop {
        Loop {
            poll,
            rx,
            stop,
            metrics,
            transfers: HashMap::new(),
            next_token: 0,
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut rbuf = vec![0u8; 65536];
        let mut scratch = Vec::with_capacity(65536);
        let mut next_sweep = Instant::now() + SWEEP;
        let mut finished = Vec::new();
        while !self.stop.load(Ordering::Acquire) {
            let wait = if self.transfers.is_empty() {
                None
            } else {
                Some(next_sweep.saturating_duration_since(Instant::now()))
            };
            if let Err(e) = self.poll.poll(&mut events, wait) {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::error!("TFTP data plane: poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            let now = Instant::now();
            for ev in events.iter() {
                if ev.token() == WAKER {
                    self.accept(now, &mut scratch);
                    continue;
                }
                let id = ev.token().0;
                if let Some(t) = self.transfers.get_mut(&id) {
                    if let Step::Finished =
                        t.on_readable(now, &mut rbuf, &mut scratch, &self.metrics)
                    {
                        finished.push(id);
                    }
                }
            }
            if now >= next_sweep {
                next_sweep = now + SWEEP;
                for (id, t) in self.transfers.iter_mut() {
                    if let Step::Finished = t.on_sweep(now, &mut scratch, &self.metrics) {
                        finished.push(*id);
                    }
                }
            }
            for id in finished.drain(..) {
                if let Some(t) = self.transfers.remove(&id) {
                    t.end(self.poll.registry());
                }
            }
        }
        // Shutdown: dropping the transfers frees their slots.
        self.transfers.clear();
    }

    /// Takes new transfers from the channel and sends their first packet.
    fn accept(&mut self, now: Instant, scratch: &mut Vec<u8>) {
        while let Ok(nt) = self.rx.try_recv() {
            let peer = nt.peer;
            let mut t = match Transfer::new(nt, now) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(%peer, "TFTP transfer socket: {e}");
                    continue;
                }
            };
            let id = self.next_token;
            self.next_token = (self.next_token + 1) % (usize::MAX - 1);
            if let Err(e) =
                self.poll
                    .registry()
                    .register(&mut t.sock, Token(id), Interest::READABLE)
            {
                tracing::warn!(%peer, "TFTP transfer socket: {e}");
                continue;
            }
            if let Err(e) = t.send_window(scratch, &self.metrics) {
                t.failed(e);
                t.end(self.poll.registry());
                continue;
            }
            self.transfers.insert(id, t);
        }
    }
}
