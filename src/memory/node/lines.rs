//! The agent's body cut into lines, each at most `MAX_LINE` bytes: a line without end is one
//! garbled line, never memory that grows with it.

/// A sample is a few hundred bytes; a line far longer is not the agent's.
pub(super) const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, PartialEq)]
pub(super) enum Piece {
    Line(Vec<u8>),
    /// A line longer than `MAX_LINE`, skipped to its end.
    TooLong,
}

#[derive(Debug, Default)]
pub(super) struct Lines {
    buf: Vec<u8>,
    skipping: bool,
}

impl Lines {
    /// Adds the bytes of one chunk of the body; the lines it ends go to `out`.
    pub(super) fn push(&mut self, mut chunk: &[u8], out: &mut Vec<Piece>) {
        while !chunk.is_empty() {
            let (part, rest, ends) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (&chunk[..i], &chunk[i + 1..], true),
                None => (chunk, &[][..], false),
            };
            if !self.skipping {
                if self.buf.len() + part.len() > MAX_LINE {
                    self.buf = Vec::new();
                    self.skipping = true;
                    out.push(Piece::TooLong);
                } else {
                    self.buf.extend_from_slice(part);
                }
            }
            if ends {
                if !self.skipping {
                    out.push(Piece::Line(std::mem::take(&mut self.buf)));
                }
                self.skipping = false;
            }
            chunk = rest;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(chunks: &[&[u8]]) -> Vec<Piece> {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        for c in chunks {
            lines.push(c, &mut out);
        }
        out
    }

    #[test]
    fn lines_are_whole_whatever_the_chunks() {
        assert_eq!(
            cut(&[b"{\"a\"", b":1}\n{\"b\":2}\n{\"c", b"\":3}\n", b"tail"]),
            [
                Piece::Line(b"{\"a\":1}".to_vec()),
                Piece::Line(b"{\"b\":2}".to_vec()),
                Piece::Line(b"{\"c\":3}".to_vec()),
            ]
        );
    }

    #[test]
    fn an_endless_line_is_one_garbled_line_and_the_next_is_read() {
        let big = vec![b'x'; MAX_LINE / 2 + 1];
        let out = cut(&[&big, &big, &big, b"still the same line\nnext\n"]);
        assert_eq!(out, [Piece::TooLong, Piece::Line(b"next".to_vec())]);
        let exact = vec![b'y'; MAX_LINE];
        let out = cut(&[&exact, b"\n"]);
        assert_eq!(out, [Piece::Line(exact)]);
    }
}
