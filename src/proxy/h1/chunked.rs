//! Where a response body ends: by its length, at the end of the connection, or by following its
//! chunked framing byte for byte as it streams past (trailers included).

use super::codec::Framing;

/// A chunked body that does not follow RFC 9112 7.1: the response is cut off there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked framing")]
pub(super) struct BadChunk;

/// How many of `available`'s bytes belong to the body, and whether the body ends with them.
pub(super) fn body_part(
    framing: &Framing,
    tracker: &mut Option<ChunkTracker>,
    remaining: &mut u64,
    available: &[u8],
) -> (Result<usize, BadChunk>, bool) {
    match framing {
        Framing::None => (Ok(0), true),
        Framing::Length(_) => {
            let n = (*remaining).min(available.len() as u64);
            *remaining -= n;
            (Ok(n as usize), *remaining == 0)
        }
        Framing::UntilClose => (Ok(available.len()), false),
        Framing::Chunked => match tracker
            .as_mut()
            .expect("a tracker for chunked bodies")
            .feed(available)
        {
            Ok(Some(end)) => (Ok(end), true),
            Ok(None) => (Ok(available.len()), false),
            Err(bad) => (Err(bad), false),
        },
    }
}

/// Follows a chunked body as it streams past, byte for byte, to find where it ends.
#[derive(Debug, Default)]
pub(super) struct ChunkTracker {
    state: ChunkState,
    size: u64,
    digits: u8,
    line: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    Done,
}

impl ChunkTracker {
    /// Consumes `bytes`; `Some(n)` when the body ends after the first `n` of them.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, BadChunk> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = (b as char).to_digit(16).expect("hex digit") as u64;
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err(BadChunk);
                        }
                        self.size = self.size * 16 + digit;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = ChunkState::Extension,
                    b'\r' if self.digits > 0 => self.state = ChunkState::SizeLf,
                    _ => return Err(BadChunk),
                },
                ChunkState::Extension => {
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else if b == b'\n' {
                        return Err(BadChunk);
                    }
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = if self.size == 0 {
                        self.line = 0;
                        ChunkState::Trailer
                    } else {
                        ChunkState::Data
                    };
                }
                ChunkState::Data => {
                    let take = self.size.min((bytes.len() - i) as u64);
                    self.size -= take;
                    i += take as usize;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(BadChunk);
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = ChunkState::Size;
                    self.digits = 0;
                    self.size = 0;
                }
                ChunkState::Trailer => {
                    if b == b'\r' {
                        self.state = ChunkState::TrailerLf;
                    } else if b == b'\n' {
                        // A bare LF ends a line for most clients: counted as data here, it would
                        // let the upstream end the trailers early for the client and hide a
                        // second response in what the tracker takes for more trailer lines.
                        return Err(BadChunk);
                    } else {
                        self.line += 1;
                        if self.line > 64 * 1024 {
                            return Err(BadChunk);
                        }
                    }
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    if self.line == 0 {
                        self.state = ChunkState::Done;
                        return Ok(Some(i + 1));
                    }
                    self.line = 0;
                    self.state = ChunkState::Trailer;
                }
                ChunkState::Done => return Ok(Some(i)),
            }
            i += 1;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chunk_tracker_finds_the_end_of_a_chunked_body_however_it_is_split() {
        let body = b"4\r\nWiki\r\n5;name=value\r\npedia\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..=body.len() {
            let mut t = ChunkTracker::default();
            let (a, b) = body.split_at(split);
            let found = match t.feed(a).unwrap() {
                Some(n) => Some(n),
                None => t.feed(b).unwrap().map(|n| n + a.len()),
            };
            assert_eq!(found, Some(end), "split at {split}");
        }
        let mut t = ChunkTracker::default();
        assert_eq!(t.feed(b"0\r\n\r\n").unwrap(), Some(5));
        for bad in [
            &b"x\r\n"[..],
            b"4\r\nWikiXX",
            b"\r\n",
            b"4\n",
            b"0\r\nTrailer: x\n\r\n",
            b"0\r\n\n",
        ] {
            assert!(ChunkTracker::default().feed(bad).is_err(), "{bad:?}");
        }
    }
}
