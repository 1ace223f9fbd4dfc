//! A container's output on disk: stdout and stderr interleaved as written, in segment
//! files named by the absolute byte offset where they start (`<offset:020>.log`). The
//! shim appends and rotates (a new segment once the current one reaches the size limit,
//! the oldest removed beyond the file count); readers address bytes by offset since the
//! container started, across segments, so a follower never re-reads or misses what is
//! still kept, and learns when older bytes were rotated away.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const SUFFIX: &str = ".log";

fn segment_name(start: u64) -> String {
    format!("{start:020}{SUFFIX}")
}

/// Segments of a log directory: (start offset, path), oldest first.
fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(start) = name
            .strip_suffix(SUFFIX)
            .and_then(|s| s.parse::<u64>().ok())
        {
            found.push((start, entry.path()));
        }
    }
    found.sort_unstable_by_key(|(start, _)| *start);
    Ok(found)
}

/// Appends output with size-based rotation.
pub struct RotatingWriter {
    dir: PathBuf,
    max_bytes: u64,
    max_files: usize,
    current: File,
    start: u64,
    len: u64,
}

impl RotatingWriter {
    /// Opens the directory, continuing its newest segment if there is one.
    pub fn open(dir: &Path, max_bytes: u64, max_files: usize) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let (start, path) = match segments(dir)?.pop() {
            Some(last) => last,
            None => (0, dir.join(segment_name(0))),
        };
        let current = OpenOptions::new().create(true).append(true).open(&path)?;
        let len = current.metadata()?.len();
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes: max_bytes.max(1),
            max_files: max_files.max(1),
            current,
            start,
            len,
        })
    }

    /// Offset of the next byte written.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }

    pub fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            if self.len >= self.max_bytes {
                self.rotate()?;
            }
            let room = usize::try_from(self.max_bytes - self.len).unwrap_or(usize::MAX);
            let (now, rest) = buf.split_at(room.min(buf.len()));
            self.current.write_all(now)?;
            self.len += now.len() as u64;
            buf = rest;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let start = self.end();
        self.current = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(segment_name(start)))?;
        self.start = start;
        self.len = 0;
        let all = segments(&self.dir)?;
        let excess = all.len().saturating_sub(self.max_files);
        for (_, path) in all.into_iter().take(excess) {
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// Bytes read from a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Where `data` starts (past the request when older bytes were rotated away).
    pub offset: u64,
    pub data: Vec<u8>,
    /// Where the next read should start.
    pub next_offset: u64,
    /// Offset of the end of what is written so far.
    pub end: u64,
}

/// Reads up to `max` bytes. `offset` absent: from `end - tail` if a tail is given, else
/// from the oldest byte kept. A read cut by `max` ends on a UTF-8 boundary when it can.
pub fn read(dir: &Path, offset: Option<u64>, tail: Option<u64>, max: u64) -> io::Result<Chunk> {
    // A segment removed by rotation between listing and opening: list again.
    let mut attempts = 0;
    loop {
        match read_once(dir, offset, tail, max) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 3 => attempts += 1,
            other => return other,
        }
    }
}

fn read_once(dir: &Path, offset: Option<u64>, tail: Option<u64>, max: u64) -> io::Result<Chunk> {
    let mut files = Vec::new();
    for (start, path) in segments(dir)? {
        let len = fs::metadata(&path)?.len();
        files.push((start, len, path));
    }
    let first = files.first().map(|(s, _, _)| *s).unwrap_or(0);
    let end = files.last().map(|(s, l, _)| s + l).unwrap_or(0);
    let wanted = match (offset, tail) {
        (Some(o), _) => o,
        (None, Some(t)) => end.saturating_sub(t),
        (None, None) => first,
    };
    let from = wanted.clamp(first, end.max(first));
    let mut data = Vec::new();
    let mut at = from;
    for (start, len, path) in &files {
        if data.len() as u64 >= max {
            break;
        }
        let stop = start + len;
        if at >= stop || at < *start {
            continue;
        }
        let mut f = File::open(path)?;
        f.seek(SeekFrom::Start(at - start))?;
        let want = (max - data.len() as u64).min(stop - at);
        let got = f.take(want).read_to_end(&mut data)? as u64;
        at += got;
        if got < want {
            break;
        }
    }
    if data.len() as u64 >= max {
        let keep = utf8_boundary(&data);
        if keep > 0 {
            at -= (data.len() - keep) as u64;
            data.truncate(keep);
        }
    }
    Ok(Chunk {
        offset: from,
        next_offset: at,
        data,
        end,
    })
}

/// Length of `data` without a trailing incomplete UTF-8 sequence.
fn utf8_boundary(data: &[u8]) -> usize {
    for back in 1..=3.min(data.len()) {
        let i = data.len() - back;
        let b = data[i];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte: look further back
        }
        let need = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if need > back { i } else { data.len() };
    }
    data.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_rotate_and_reads_follow_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = RotatingWriter::open(dir.path(), 10, 3).unwrap();
        w.write_all(b"0123456789abcdefghij").unwrap();
        assert_eq!(w.end(), 20);
        let all = read(dir.path(), None, None, 1000).unwrap();
        assert_eq!(all.data, b"0123456789abcdefghij");
        assert_eq!((all.offset, all.next_offset, all.end), (0, 20, 20));
        let part = read(dir.path(), Some(5), None, 7).unwrap();
        assert_eq!(part.data, b"56789ab");
        assert_eq!(part.next_offset, 12);
        // Two more segments push the first one out.
        w.write_all(b"KLMNOPQRSTuvw").unwrap();
        assert_eq!(segments(dir.path()).unwrap().len(), 3);
        let after = read(dir.path(), Some(0), None, 1000).unwrap();
        assert_eq!(after.offset, 10, "rotated bytes are skipped");
        assert_eq!(after.data, b"abcdefghijKLMNOPQRSTuvw");
        assert_eq!(after.next_offset, 33);
        let tail = read(dir.path(), None, Some(4), 1000).unwrap();
        assert_eq!(tail.data, b"Tuvw");
        let beyond = read(dir.path(), Some(99), None, 10).unwrap();
        assert_eq!((beyond.offset, beyond.next_offset), (33, 33));
        assert!(beyond.data.is_empty());
    }

    #[test]
    fn a_reopened_writer_continues_the_newest_segment() {
        let dir = tempfile::tempdir().unwrap();
        RotatingWriter::open(dir.path(), 4, 2)
            .unwrap()
            .write_all(b"abcdef")
            .unwrap();
        let mut again = RotatingWriter::open(dir.path(), 4, 2).unwrap();
        assert_eq!(again.end(), 6);
        again.write_all(b"gh").unwrap();
        assert_eq!(read(dir.path(), None, None, 100).unwrap().data, b"abcdefgh");
    }

    #[test]
    fn missing_directory_reads_empty() {
        let dir = tempfile::tempdir().unwrap();
        let c = read(&dir.path().join("none"), None, None, 10).unwrap();
        assert_eq!((c.offset, c.next_offset, c.end), (0, 0, 0));
    }

    #[test]
    fn cut_reads_end_on_a_character() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = RotatingWriter::open(dir.path(), 1000, 2).unwrap();
        w.write_all("aé€".as_bytes()).unwrap(); // 1 + 2 + 3 bytes
        let c = read(dir.path(), Some(0), None, 5).unwrap();
        assert_eq!(c.data, "aé".as_bytes());
        assert_eq!(c.next_offset, 3);
        let rest = read(dir.path(), Some(c.next_offset), None, 5).unwrap();
        assert_eq!(rest.data, "€".as_bytes());
        assert_eq!(utf8_boundary(b"abc"), 3);
        assert_eq!(utf8_boundary(&[0xE2, 0x82]), 0);
    }
}
