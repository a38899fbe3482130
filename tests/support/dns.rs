//! A small DNS server on loopback UDP: it answers A and AAAA questions for
//! the names it was given, says NXDOMAIN for others, and never answers the
//! names it was told to ignore. Enough for a resolver to query for real.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use tokio::net::UdpSocket;

#[derive(Debug, Clone)]
pub struct DnsServer {
    pub addr: SocketAddr,
    queries: Arc<Mutex<Vec<String>>>,
}

impl DnsServer {
    /// Serves `records` (name, addresses); `silent` names get no answer.
    pub async fn start(records: Vec<(&str, Vec<IpAddr>)>, silent: Vec<&str>) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
        let addr = socket.local_addr().expect("dns addr");
        let queries = Arc::new(Mutex::new(Vec::new()));
        let records: Vec<(String, Vec<IpAddr>)> = records
            .into_iter()
            .map(|(n, ips)| (n.to_ascii_lowercase(), ips))
            .collect();
        let silent: Vec<String> = silent.into_iter().map(str::to_ascii_lowercase).collect();
        let seen = queries.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let Some((name, qtype, question_end)) = parse_question(&buf[..n]) else {
                    continue;
                };
                seen.lock().expect("queries").push(name.clone());
                if silent.contains(&name) {
                    continue;
                }
                let found = records.iter().find(|(r, _)| *r == name).map(|(_, ips)| ips);
                let answers: Vec<IpAddr> = found
                    .into_iter()
                    .flatten()
                    .copied()
                    .filter(|ip| matches!((qtype, ip), (1, IpAddr::V4(_)) | (28, IpAddr::V6(_))))
                    .collect();
                let reply = answer(&buf[..question_end], found.is_some(), &answers, qtype);
                let _ = socket.send_to(&reply, from).await;
            }
        });
        Self { addr, queries }
    }

    /// The names asked so far.
    pub fn queries(&self) -> Vec<String> {
        self.queries.lock().expect("queries").clone()
    }
}

/// The first question: name (lower case, no trailing dot), type, and where
/// the question ends.
fn parse_question(msg: &[u8]) -> Option<(String, u16, usize)> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*msg.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(msg.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]);
    Some((labels.join("."), qtype, at + 4))
}

/// A response to the query `head` (header and question).
fn answer(head: &[u8], known: bool, ips: &[IpAddr], qtype: u16) -> Vec<u8> {
    let mut out = head.to_vec();
    out[2] = 0x81; // QR, RD
    out[3] = if known { 0x80 } else { 0x83 }; // RA; NXDOMAIN when unknown
    out[4..6].copy_from_slice(&1u16.to_be_bytes());
    out[6..8].copy_from_slice(&(ips.len() as u16).to_be_bytes());
    out[8..12].fill(0);
    for ip in ips {
        out.extend_from_slice(&[0xc0, 0x0c]); // the question's name
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&[0, 1, 0, 0, 0, 60]); // IN, TTL 60
        match ip {
            IpAddr::V4(v4) => {
                out.extend_from_slice(&4u16.to_be_bytes());
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.extend_from_slice(&16u16.to_be_bytes());
                out.extend_from_slice(&v6.octets());
            }
        }
    }
    out
}
