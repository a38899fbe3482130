//! The saved file: the table, with bans.
//!
//! ```text
//! magic    8 bytes  "CMADDRS\0"
//! version  u32 LE   2 (1 is read too: it has no anchors)
//! length   u64 LE   of the body
//! body:
//!   key      2 × u64 LE              the table's secret
//!   entries  u32 LE count, then each:
//!     address  AddrCodec              (SocketAddr: 4|6, address bytes, port u16 LE)
//!     source   group: tag u8 + bytes  (see `put_group`)
//!     time, last_try, last_success    3 × u64 LE, unix seconds
//!     attempts u32 LE
//!     tried    u8 (0 or 1)
//!     buckets  u8 count (0 for tried, 1 to 8 for new), then each u16 LE:
//!              the new buckets that hold it (its place in each follows
//!              from the key, so a load puts every entry back exactly)
//!   bans     u32 LE count, then each:
//!     subnet   u16 LE length + UTF-8 text (`Subnet`'s `Display`)
//!     until    u64 LE unix seconds
//!     reason   u16 LE length + UTF-8
//!   anchors  u8 count (at most 8), then each an AddrCodec address
//! checksum 32 bytes  SHA3-256 of everything before it
//! ```
//!
//! Hand-written, little-endian, length-prefixed: no encoding crate, so the
//! format cannot change under us with a dependency's version, and reading
//! it is a bounded walk over a byte slice that checks every length.

use std::{
    fs,
    io::{self, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use sha3::{Digest, Sha3_256};

use super::table::Info;
use crate::policy::{Ban, NetGroup, Network};

const MAGIC: &[u8; 8] = b"CMADDRS\0";
/// The version this build writes and reads.
pub const VERSION: u32 = 2;
/// The most anchors a file holds.
pub(crate) const MAX_ANCHORS: usize = 8;
/// The most bans a file may hold (the policy's default limit).
const MAX_BANS: u32 = 1_000_000;

/// Why a saved table could not be read or written.
#[derive(Debug)]
#[non_exhaustive]
pub enum PersistError {
    /// Reading or writing the file failed.
    Io(io::Error),
    /// Not a saved table of this crate.
    Foreign,
    /// Saved by a newer version of the format.
    Version(u32),
    /// Shorter than it says.
    Truncated,
    /// The checksum does not match: the file was changed or damaged.
    Checksum,
    /// The checksum matches but a field is out of range.
    Corrupt(&'static str),
}

impl std::fmt::Display for PersistError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "address table file: {e}"),
            Self::Foreign => f.pad("not an address table file"),
            Self::Version(v) => {
                write!(f, "address table file of version {v}, newer than {VERSION}")
            }
            Self::Truncated => f.pad("address table file truncated"),
            Self::Checksum => f.pad("address table file damaged (checksum)"),
            Self::Corrupt(what) => write!(f, "address table file corrupt: {what}"),
        }
    }
}

impl std::error::Error for PersistError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for PersistError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// How an address type is written to and read from the saved file.
/// `SocketAddr` implements it.
pub trait AddrCodec: Sized {
    /// Appends the address.
    fn encode(&self, out: &mut Vec<u8>);
    /// Reads one address from the front of `input`, advancing it; `None`
    /// when the bytes are not one.
    fn decode(input: &mut &[u8]) -> Option<Self>;
}

impl AddrCodec for SocketAddr {
    fn encode(&self, out: &mut Vec<u8>) {
        match self.ip() {
            IpAddr::V4(v4) => {
                out.push(4);
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.push(6);
                out.extend_from_slice(&v6.octets());
            }
        }
        out.extend_from_slice(&self.port().to_le_bytes());
    }

    fn decode(input: &mut &[u8]) -> Option<Self> {
        let ip = match take::<1>(input)? {
            [4] => IpAddr::V4(Ipv4Addr::from(take::<4>(input)?)),
            [6] => IpAddr::V6(Ipv6Addr::from(take::<16>(input)?)),
            _ => return None,
        };
        Some(Self::new(ip, u16::from_le_bytes(take::<2>(input)?)))
    }
}

fn take<const N: usize>(input: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = input.split_first_chunk::<N>()?;
    *input = rest;
    Some(*head)
}

fn take_slice<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if input.len() < n {
        return None;
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Some(head)
}

fn u64_of(input: &mut &[u8]) -> Option<u64> {
    take::<8>(input).map(u64::from_le_bytes)
}

fn u32_of(input: &mut &[u8]) -> Option<u32> {
    take::<4>(input).map(u32::from_le_bytes)
}

const NETWORKS: [Network; 7] = [
    Network::Ipv4,
    Network::Ipv6,
    Network::Onion,
    Network::I2p,
    Network::Cjdns,
    Network::Local,
    Network::Name,
];

fn put_group(out: &mut Vec<u8>, g: NetGroup) {
    match g {
        NetGroup::Ipv4(b) => {
            out.push(1);
            out.extend_from_slice(&b);
        }
        NetGroup::Ipv6(b) => {
            out.push(2);
            out.extend_from_slice(&b);
        }
        NetGroup::Onion(b) => out.extend_from_slice(&[3, b]),
        NetGroup::I2p(b) => out.extend_from_slice(&[4, b]),
        NetGroup::Cjdns(b) => {
            out.push(5);
            out.extend_from_slice(&b.to_le_bytes());
        }
        NetGroup::Name(d) => {
            out.push(6);
            out.extend_from_slice(&d.to_le_bytes());
        }
        NetGroup::Inbound(n) => {
            let i = NETWORKS.iter().position(|&x| x == n).unwrap_or(5);
            out.extend_from_slice(&[7, i as u8]);
        }
        // Local, and any group a later version adds.
        _ => out.push(0),
    }
}

fn get_group(input: &mut &[u8]) -> Option<NetGroup> {
    Some(match take::<1>(input)?[0] {
        0 => NetGroup::Local,
        1 => NetGroup::Ipv4(take::<2>(input)?),
        2 => NetGroup::Ipv6(take::<4>(input)?),
        3 => NetGroup::Onion(take::<1>(input)?[0]),
        4 => NetGroup::I2p(take::<1>(input)?[0]),
        5 => NetGroup::Cjdns(u16::from_le_bytes(take::<2>(input)?)),
        6 => NetGroup::Name(u64_of(input)?),
        7 => NetGroup::Inbound(*NETWORKS.get(usize::from(take::<1>(input)?[0]))?),
        _ => return None,
    })
}

fn put_text(out: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
    // A cut inside a character would not read back: cut at a boundary.
    let mut n = bytes.len();
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..n]);
}

fn get_text(input: &mut &[u8]) -> Option<String> {
    let n = u16::from_le_bytes(take::<2>(input)?);
    let bytes = take_slice(input, usize::from(n))?;
    String::from_utf8(bytes.to_vec()).ok()
}

pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The file's bytes.
pub(crate) fn encode<'a, A: AddrCodec + 'a>(
    key: (u64, u64),
    entries: impl Iterator<Item = &'a Info<A>>,
    bans: &[Ban],
    anchors: &[A],
) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&key.0.to_le_bytes());
    body.extend_from_slice(&key.1.to_le_bytes());
    let count_at = body.len();
    body.extend_from_slice(&0u32.to_le_bytes());
    let mut n = 0u32;
    for e in entries {
        e.addr.encode(&mut body);
        put_group(&mut body, e.source);
        for t in [e.time, e.last_try, e.last_success] {
            body.extend_from_slice(&t.to_le_bytes());
        }
        body.extend_from_slice(&e.attempts.to_le_bytes());
        body.push(u8::from(e.tried));
        let held = &e.buckets[..usize::from(e.refs).min(e.buckets.len())];
        body.push(held.len() as u8);
        for b in held {
            body.extend_from_slice(&b.to_le_bytes());
        }
        n += 1;
    }
    body[count_at..count_at + 4].copy_from_slice(&n.to_le_bytes());
    body.extend_from_slice(&(bans.len() as u32).to_le_bytes());
    for ban in bans {
        put_text(&mut body, &ban.subnet.to_string());
        body.extend_from_slice(&unix(ban.until).to_le_bytes());
        put_text(&mut body, &ban.reason);
    }
    let anchors = &anchors[..anchors.len().min(MAX_ANCHORS)];
    body.push(anchors.len() as u8);
    for a in anchors {
        a.encode(&mut body);
    }
    let mut out = Vec::with_capacity(body.len() + 52);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    let sum = Sha3_256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// What a file holds.
pub(crate) struct Decoded<A> {
    pub(crate) key: (u64, u64),
    pub(crate) entries: Vec<Info<A>>,
    pub(crate) bans: Vec<Ban>,
    pub(crate) anchors: Vec<A>,
}

/// Reads a file's bytes, checking everything.
pub(crate) fn decode<A: AddrCodec>(bytes: &[u8]) -> Result<Decoded<A>, PersistError> {
    let mut input = bytes;
    let magic = take::<8>(&mut input).ok_or(PersistError::Foreign)?;
    if &magic != MAGIC {
        return Err(PersistError::Foreign);
    }
    let version = u32_of(&mut input).ok_or(PersistError::Truncated)?;
    if version != VERSION && version != 1 {
        return Err(PersistError::Version(version));
    }
    let len = u64_of(&mut input).ok_or(PersistError::Truncated)?;
    let len = usize::try_from(len).map_err(|_| PersistError::Truncated)?;
    if input.len() < len.saturating_add(32) {
        return Err(PersistError::Truncated);
    }
    if input.len() > len + 32 {
        return Err(PersistError::Corrupt("bytes after the checksum"));
    }
    let (head, sum) = bytes.split_at(bytes.len() - 32);
    if Sha3_256::digest(head).as_slice() != sum {
        return Err(PersistError::Checksum);
    }
    let mut body = &input[..len];
    let bad = PersistError::Corrupt;
    let key = (
        u64_of(&mut body).ok_or(bad("key"))?,
        u64_of(&mut body).ok_or(bad("key"))?,
    );
    let n = u32_of(&mut body).ok_or(bad("entry count"))?;
    if n as usize > super::table::MAX_ENTRIES {
        return Err(bad("too many entries"));
    }
    let mut entries = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let addr = A::decode(&mut body).ok_or(bad("address"))?;
        let source = get_group(&mut body).ok_or(bad("source"))?;
        let time = u64_of(&mut body).ok_or(bad("time"))?;
        let last_try = u64_of(&mut body).ok_or(bad("time"))?;
        let last_success = u64_of(&mut body).ok_or(bad("time"))?;
        let attempts = u32_of(&mut body).ok_or(bad("attempts"))?;
        let tried = match take::<1>(&mut body).ok_or(bad("tried"))? {
            [0] => false,
            [1] => true,
            _ => return Err(bad("tried")),
        };
        let refs = take::<1>(&mut body).ok_or(bad("buckets"))?[0];
        let mut buckets = [0u16; 8];
        if usize::from(refs) > buckets.len() || (tried && refs > 0) {
            return Err(bad("buckets"));
        }
        for b in buckets.iter_mut().take(usize::from(refs)) {
            *b = u16::from_le_bytes(take::<2>(&mut body).ok_or(bad("buckets"))?);
            if usize::from(*b) >= super::table::NEW_BUCKETS {
                return Err(bad("bucket"));
            }
        }
        entries.push(Info {
            addr,
            source,
            time,
            last_try,
            last_count_attempt: 0,
            last_success,
            attempts,
            refs,
            buckets,
            tried,
        });
    }
    let n = u32_of(&mut body).ok_or(bad("ban count"))?;
    if n > MAX_BANS {
        return Err(bad("too many bans"));
    }
    let mut bans = Vec::new();
    for _ in 0..n {
        let subnet = get_text(&mut body)
            .and_then(|t| t.parse().ok())
            .ok_or(bad("ban subnet"))?;
        let until = u64_of(&mut body).ok_or(bad("ban end"))?;
        let until = SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_secs(until))
            .ok_or(bad("ban end"))?;
        let reason = get_text(&mut body).ok_or(bad("ban reason"))?;
        bans.push(Ban {
            subnet,
            until,
            reason,
        });
    }
    let mut anchors = Vec::new();
    if version >= 2 {
        let n = take::<1>(&mut body).ok_or(bad("anchor count"))?[0];
        if usize::from(n) > MAX_ANCHORS {
            return Err(bad("too many anchors"));
        }
        for _ in 0..n {
            anchors.push(A::decode(&mut body).ok_or(bad("anchor"))?);
        }
    }
    if !body.is_empty() {
        return Err(bad("bytes after the anchors"));
    }
    Ok(Decoded {
        key,
        entries,
        bans,
        anchors,
    })
}

/// Writes `bytes` to `path` atomically: a temporary file beside it,
/// flushed to disk, renamed over it, and the directory flushed. A crash at
/// any point leaves the old file or the new one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PersistError> {
    // A name of its own per save: two saves at once (the interval's and
    // stop's) never write or remove each other's file; the last rename wins,
    // and each renamed file is whole.
    let tmp = sibling(
        path,
        &format!("tmp.{}.{:016x}", std::process::id(), fastrand::u64(..)),
    );
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Flushes the rename; not every platform can open a directory.
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(PersistError::Io)
}

/// `path` with `.suffix` added to its file name.
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    path.with_file_name(name)
}
