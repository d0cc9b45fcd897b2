//! Byte-stream rings in shared memory, the RPC path of the `shm` backend.
//!
//! One memfd holds two single-producer single-consumer rings (client->server and
//! server->client). Each ring is a `#[repr(C)]` header of atomics followed by
//! [`RING_CAPACITY`] data bytes:
//!
//! ```text
//! offset  0: head   u64   total bytes ever written (producer)
//! offset 64: tail   u64   total bytes ever read (consumer)
//! offset128: data_seq u32, reader_waiting u32, space_seq u32, writer_waiting u32, closed u32
//! offset256: data [RING_CAPACITY]
//! ```
//!
//! A side that finds nothing to do spins briefly, yields, and then blocks on a futex in
//! the shared mapping (`data_seq` for a reader, `space_seq` for a writer); the other side
//! wakes it only when the waiting flag is set (Dekker-style, both sides `SeqCst`), so a
//! busy ring makes no syscalls. This machine has two cores: spinning long would starve
//! the very peer we are waiting for.
//!
//! The peer may be buggy or hostile, so our own position is kept locally and the peer's
//! counter is only trusted within `0..=RING_CAPACITY` of it; anything else is reported
//! as corrupt data, which closes the connection. A dead peer is noticed through the Unix
//! socket that set the connection up (EOF), checked whenever a futex wait times out.

use super::region::{atomic_copy_in, atomic_copy_out};
use memmap2::{MmapOptions, MmapRaw};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const RING_CAPACITY: u64 = 1 << 20;
const HEADER: u64 = 256;
const RING_BYTES: u64 = HEADER + RING_CAPACITY;
/// Size of the memfd holding both rings.
pub const SEGMENT_BYTES: u64 = 2 * RING_BYTES;

const SPINS: u32 = 64;
const YIELDS: u32 = 4;
const WAIT_SLICE: Duration = Duration::from_millis(20);

#[repr(C)]
struct Header {
    head: AtomicU64,
    _p0: [u64; 7],
    tail: AtomicU64,
    _p1: [u64; 7],
    data_seq: AtomicU32,
    reader_waiting: AtomicU32,
    space_seq: AtomicU32,
    writer_waiting: AtomicU32,
    closed: AtomicU32,
}

/// The shared segment with both rings.
pub struct Segment {
    map: MmapRaw,
    file: File,
}

// SAFETY: the mapping is only accessed through atomics and the SPSC protocol below.
unsafe impl Send for Segment {}
// SAFETY: as above.
unsafe impl Sync for Segment {}

impl Segment {
    pub fn create() -> io::Result<Arc<Segment>> {
        let fd = nix::sys::memfd::memfd_create(
            c"dsb-rings",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let file = File::from(fd);
        file.set_len(SEGMENT_BYTES)?;
        Segment::map(file)
    }

    pub fn open(fd: OwnedFd) -> io::Result<Arc<Segment>> {
        let file = File::from(fd);
        if file.metadata()?.len() != SEGMENT_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "ring segment has the wrong size",
            ));
        }
        Segment::map(file)
    }

    fn map(file: File) -> io::Result<Arc<Segment>> {
        let map = MmapOptions::new()
            .len(SEGMENT_BYTES as usize)
            .map_raw(&file)?;
        Ok(Arc::new(Segment { map, file }))
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn header(&self, ring: usize) -> &Header {
        // SAFETY: ring is 0 or 1, the header lies inside the mapping, is page-aligned
        // (ring 0) or 8-aligned (RING_BYTES is a multiple of 8), and consists of atomics.
        unsafe { &*(self.map.as_mut_ptr().add(ring * RING_BYTES as usize) as *const Header) }
    }

    fn data(&self, ring: usize) -> *mut u8 {
        // SAFETY: stays inside the mapping.
        unsafe {
            self.map
                .as_mut_ptr()
                .add(ring * RING_BYTES as usize + HEADER as usize)
        }
    }

    /// Marks both rings closed and wakes anyone blocked on them.
    pub fn close(&self) {
        for ring in 0..2 {
            let h = self.header(ring);
            h.closed.store(1, Ordering::SeqCst);
            h.data_seq.fetch_add(1, Ordering::SeqCst);
            h.space_seq.fetch_add(1, Ordering::SeqCst);
            futex_wake(&h.data_seq);
            futex_wake(&h.space_seq);
        }
    }
}

/// Ring 0 carries client->server bytes, ring 1 server->client.
pub const CLIENT_TO_SERVER: usize = 0;
pub const SERVER_TO_CLIENT: usize = 1;

/// Tells whether the peer process still holds its end of the setup socket.
pub type Liveness = Arc<dyn Fn() -> bool + Send + Sync>;

pub struct RingReader {
    seg: Arc<Segment>,
    ring: usize,
    tail: u64,
    alive: Liveness,
}

pub struct RingWriter {
    seg: Arc<Segment>,
    ring: usize,
    head: u64,
    alive: Liveness,
}

impl RingReader {
    pub fn new(seg: Arc<Segment>, ring: usize, alive: Liveness) -> RingReader {
        let tail = seg.header(ring).tail.load(Ordering::Acquire);
        RingReader {
            seg,
            ring,
            tail,
            alive,
        }
    }
}

impl RingWriter {
    pub fn new(seg: Arc<Segment>, ring: usize, alive: Liveness) -> RingWriter {
        let head = seg.header(ring).head.load(Ordering::Acquire);
        RingWriter {
            seg,
            ring,
            head,
            alive,
        }
    }
}

fn corrupt() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "shared-memory ring corrupted by peer",
    )
}

impl Read for RingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let h = self.seg.header(self.ring);
        let mut idle = 0u32;
        loop {
            let head = h.head.load(Ordering::SeqCst);
            let avail = head.wrapping_sub(self.tail);
            if avail > RING_CAPACITY {
                return Err(corrupt());
            }
            if avail > 0 {
                let n = (avail as usize).min(buf.len());
                let pos = (self.tail % RING_CAPACITY) as usize;
                let first = n.min(RING_CAPACITY as usize - pos);
                let data = self.seg.data(self.ring);
                // SAFETY: both ranges are inside the ring's data area; the producer does
                // not write them until we advance the tail past them.
                unsafe {
                    atomic_copy_out(data.add(pos), &mut buf[..first]);
                    atomic_copy_out(data, &mut buf[first..n]);
                }
                self.tail += n as u64;
                h.tail.store(self.tail, Ordering::SeqCst);
                if h.writer_waiting.load(Ordering::SeqCst) != 0 {
                    h.space_seq.fetch_add(1, Ordering::SeqCst);
                    futex_wake(&h.space_seq);
                }
                return Ok(n);
            }
            if h.closed.load(Ordering::Acquire) != 0 {
                return Ok(0);
            }
            idle += 1;
            if idle < SPINS {
                std::hint::spin_loop();
                continue;
            }
            if idle < SPINS + YIELDS {
                std::thread::yield_now();
                continue;
            }
            let seq = h.data_seq.load(Ordering::SeqCst);
            h.reader_waiting.store(1, Ordering::SeqCst);
            if h.head.load(Ordering::SeqCst) == self.tail && h.closed.load(Ordering::SeqCst) == 0 {
                let timed_out = futex_wait(&h.data_seq, seq, WAIT_SLICE);
                if timed_out && !(self.alive)() {
                    h.reader_waiting.store(0, Ordering::SeqCst);
                    return Ok(0);
                }
            }
            h.reader_waiting.store(0, Ordering::SeqCst);
        }
    }
}

impl Write for RingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let h = self.seg.header(self.ring);
        let mut idle = 0u32;
        loop {
            if h.closed.load(Ordering::Acquire) != 0 {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let tail = h.tail.load(Ordering::SeqCst);
            let used = self.head.wrapping_sub(tail);
            if used > RING_CAPACITY {
                return Err(corrupt());
            }
            let free = RING_CAPACITY - used;
            if free > 0 {
                let n = (free as usize).min(buf.len());
                let pos = (self.head % RING_CAPACITY) as usize;
                let first = n.min(RING_CAPACITY as usize - pos);
                let data = self.seg.data(self.ring);
                // SAFETY: both ranges are inside the ring's data area and free (the
                // consumer has read past them).
                unsafe {
                    atomic_copy_in(data.add(pos), &buf[..first]);
                    atomic_copy_in(data, &buf[first..n]);
                }
                self.head += n as u64;
                h.head.store(self.head, Ordering::SeqCst);
                if h.reader_waiting.load(Ordering::SeqCst) != 0 {
                    h.data_seq.fetch_add(1, Ordering::SeqCst);
                    futex_wake(&h.data_seq);
                }
                return Ok(n);
            }
            idle += 1;
            if idle < SPINS {
                std::hint::spin_loop();
                continue;
            }
            let seq = h.space_seq.load(Ordering::SeqCst);
            h.writer_waiting.store(1, Ordering::SeqCst);
            if h.tail.load(Ordering::SeqCst) == tail {
                let timed_out = futex_wait(&h.space_seq, seq, WAIT_SLICE);
                if timed_out && !(self.alive)() {
                    h.writer_waiting.store(0, Ordering::SeqCst);
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
            }
            h.writer_waiting.store(0, Ordering::SeqCst);
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Waits while `*word == expected`, at most `timeout`; returns true on timeout.
fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) -> bool {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT on a valid, aligned u32 in a shared mapping (not PRIVATE: the
    // waker is another process); the kernel only reads `ts`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    r == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT)
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned u32 in a shared mapping.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            0,
            0,
            0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_carries_a_stream_across_threads() {
        let seg = Segment::create().unwrap();
        let alive: Liveness = Arc::new(|| true);
        let mut w = RingWriter::new(seg.clone(), 0, alive.clone());
        let mut r = RingReader::new(seg.clone(), 0, alive);
        let total = 5 * RING_CAPACITY as usize + 12345;
        let t = std::thread::spawn(move || {
            let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
            w.write_all(&data).unwrap();
        });
        let mut got = vec![0u8; total];
        r.read_exact(&mut got).unwrap();
        t.join().unwrap();
        assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
        seg.close();
        assert_eq!(r.read(&mut [0u8; 4]).unwrap(), 0);
    }
}
