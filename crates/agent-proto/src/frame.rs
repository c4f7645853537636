//! Frames: the unit everything on an agent connection travels in.
//!
//! ```text
//! u32 length (big endian) of what follows: 5 + payload
//! u32 channel (big endian): which request this belongs to
//! u8  kind
//! payload
//! ```
//!
//! A connection multiplexes channels: the first [`Kind::Request`] frame of
//! a channel opens it, its stdio, window sizes, signals, file entries and
//! replies follow on the same channel, and [`Kind::Exit`], [`Kind::Reply`]
//! or [`Kind::Error`] closes it.

use std::io::{self, Read, Write};

/// Largest payload a frame may carry. File data and stdio go in chunks of
/// [`CHUNK`]; the limit bounds what a peer can make the other allocate.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Size of the data chunks the sides send.
pub const CHUNK: usize = 64 * 1024;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Host → guest, JSON [`crate::Envelope`]: opens the channel.
    Request = 1,
    /// Host → guest: bytes for the process's stdin; empty: end of input.
    Stdin = 2,
    /// Guest → host: process output.
    Stdout = 3,
    Stderr = 4,
    /// Host → guest, JSON [`crate::Resize`].
    Resize = 5,
    /// Host → guest, JSON [`crate::SignalRequest`].
    Signal = 6,
    /// Guest → host, JSON [`crate::Started`].
    Started = 7,
    /// Guest → host, JSON [`crate::Exited`]: the channel is done.
    Exit = 8,
    /// Guest → host, JSON [`crate::Failure`]: the channel is done.
    Error = 9,
    /// Either way, JSON [`crate::tree::Entry`]: one file of a tree.
    Entry = 10,
    /// Either way: file content after an entry.
    Data = 11,
    /// Either way: the tree is complete.
    End = 12,
    /// Guest → host, JSON: the answer to a request without a process.
    Reply = 13,
}

impl Kind {
    const ALL: [Kind; 13] = [
        Kind::Request,
        Kind::Stdin,
        Kind::Stdout,
        Kind::Stderr,
        Kind::Resize,
        Kind::Signal,
        Kind::Started,
        Kind::Exit,
        Kind::Error,
        Kind::Entry,
        Kind::Data,
        Kind::End,
        Kind::Reply,
    ];

    pub fn from_u8(b: u8) -> Option<Kind> {
        Self::ALL.into_iter().find(|k| *k as u8 == b)
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub channel: u32,
    pub kind: Kind,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(channel: u32, kind: Kind, payload: impl Into<Vec<u8>>) -> Frame {
        Frame {
            channel,
            kind,
            payload: payload.into(),
        }
    }

    /// A frame with a JSON payload.
    pub fn json(channel: u32, kind: Kind, value: &impl serde::Serialize) -> Frame {
        // Our message types always serialize.
        let payload = serde_json::to_vec(value).unwrap_or_default();
        Frame::new(channel, kind, payload)
    }

    /// The payload as JSON of type `T`.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> io::Result<T> {
        serde_json::from_slice(&self.payload).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a {:?} frame that is not valid: {e}", self.kind),
            )
        })
    }
}

/// Writes one frame (header and payload in one write, so frames from
/// several threads do not interleave when the writer is shared under a
/// lock).
pub fn write_frame(w: &mut impl Write, frame: &Frame) -> io::Result<()> {
    if frame.payload.len() > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a frame of {} bytes is too large", frame.payload.len()),
        ));
    }
    let mut buf = Vec::with_capacity(9 + frame.payload.len());
    buf.extend_from_slice(&(5 + frame.payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(&frame.channel.to_be_bytes());
    buf.push(frame.kind as u8);
    buf.extend_from_slice(&frame.payload);
    w.write_all(&buf)?;
    w.flush()
}

/// Reads one frame; `None` at a clean end of stream (between frames).
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if !(5..=5 + MAX_PAYLOAD).contains(&len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame header says {len} bytes: not an agent connection?"),
        ));
    }
    let mut rest = vec![0u8; len];
    r.read_exact(&mut rest)?;
    let channel = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let kind = Kind::from_u8(rest[4]).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown frame kind {}", rest[4]),
        )
    })?;
    rest.drain(..5);
    Ok(Some(Frame {
        channel,
        kind,
        payload: rest,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_input_is_refused() {
        let mut buf = Vec::new();
        let a = Frame::new(7, Kind::Stdout, b"hello".to_vec());
        let b = Frame::json(1, Kind::Resize, &crate::Resize { rows: 24, cols: 80 });
        write_frame(&mut buf, &a).unwrap();
        write_frame(&mut buf, &b).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r).unwrap(), Some(a));
        let got = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(
            got.parse::<crate::Resize>().unwrap(),
            crate::Resize { rows: 24, cols: 80 }
        );
        assert_eq!(read_frame(&mut r).unwrap(), None);

        // Truncated, oversized, unknown kind.
        assert!(read_frame(&mut &buf[..7]).is_err());
        let huge = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 3];
        assert!(read_frame(&mut &huge[..])
            .unwrap_err()
            .to_string()
            .contains("not an agent"));
        let odd = [0, 0, 0, 5, 0, 0, 0, 1, 99];
        assert!(read_frame(&mut &odd[..])
            .unwrap_err()
            .to_string()
            .contains("kind 99"));
        let big = Frame::new(1, Kind::Data, vec![0u8; MAX_PAYLOAD + 1]);
        assert!(write_frame(&mut Vec::new(), &big).is_err());
    }
}
