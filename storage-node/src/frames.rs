//! The frame table: which page each memory frame holds, and CLOCK eviction.
//!
//! A frame is evictable when it is clean (its image is in the page file). Eviction never
//! writes: the checkpointer makes frames clean, and a fault-in that finds no clean frame
//! asks for a checkpoint first. Reuse is safe for one-sided readers because the frame's
//! header names its page and version (see `page_dir`).

#[derive(Clone, Copy, Debug, Default)]
pub struct FrameMeta {
    /// Page index held, if any.
    pub page: Option<u64>,
    pub dirty: bool,
    referenced: bool,
}

pub struct FrameTable {
    frames: Vec<FrameMeta>,
    hand: usize,
    /// Frames with `dirty` set (kept with every change: the worker asks after every
    /// job, under the engine lock, and must not scan the table for it).
    dirty: usize,
}

impl FrameTable {
    pub fn new(n: u32) -> FrameTable {
        FrameTable {
            frames: vec![FrameMeta::default(); n as usize],
            hand: 0,
            dirty: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn get(&self, f: u32) -> &FrameMeta {
        &self.frames[f as usize]
    }

    pub fn touch(&mut self, f: u32) {
        self.frames[f as usize].referenced = true;
    }

    pub fn set(&mut self, f: u32, page: u64, dirty: bool) {
        self.set_dirty(f, dirty);
        self.frames[f as usize] = FrameMeta {
            page: Some(page),
            dirty,
            referenced: true,
        };
    }

    pub fn set_dirty(&mut self, f: u32, dirty: bool) {
        let m = &mut self.frames[f as usize];
        match (m.dirty, dirty) {
            (false, true) => self.dirty += 1,
            (true, false) => self.dirty -= 1,
            _ => {}
        }
        m.dirty = dirty;
    }

    pub fn dirty_count(&self) -> usize {
        self.dirty
    }

    pub fn dirty_frames(&self) -> Vec<(u32, u64)> {
        self.frames
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.page.filter(|_| f.dirty).map(|p| (i as u32, p)))
            .collect()
    }

    /// CLOCK: a frame that is free or clean and not recently referenced. Returns the
    /// frame and the page it held (which the caller marks non-resident).
    pub fn victim(&mut self) -> Option<(u32, Option<u64>)> {
        let n = self.frames.len();
        for _ in 0..2 * n {
            let i = self.hand;
            self.hand = (self.hand + 1) % n;
            let f = &mut self.frames[i];
            if f.page.is_none() {
                return Some((i as u32, None));
            }
            if f.dirty {
                continue;
            }
            if f.referenced {
                f.referenced = false;
                continue;
            }
            return Some((i as u32, f.page));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_skips_dirty_and_gives_second_chances() {
        let mut t = FrameTable::new(3);
        t.set(0, 10, true);
        t.set(1, 11, false);
        t.set(2, 12, false);
        let (f, old) = t.victim().unwrap();
        assert!(f == 1 || f == 2);
        assert!(old == Some(11) || old == Some(12));
        t.set_dirty(1, true);
        t.set_dirty(2, true);
        assert!(t.victim().is_none());
        assert_eq!(t.dirty_frames().len(), 3);
        assert_eq!(t.dirty_count(), 3);
        t.set(2, 13, false);
        t.set_dirty(0, false);
        t.set_dirty(0, false);
        assert_eq!(t.dirty_count(), 1);
    }
}
