//! Just enough of the DNS wire format (RFC 1035) for the test tools: build a
//! query, read a header and a question, build a plain answer.
//!
//! Written by hand on purpose: the resolver under test is built on hickory,
//! so the fake upstream (`fakedns`) and the query flooder (`ptprobe
//! dns-flood`) use an independent implementation, and a bug shared by both
//! ends cannot cancel itself out. Names in questions are read without
//! compression (queries carry none); anything else is refused with `None`.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type SOA.
pub const TYPE_SOA: u16 = 6;
/// Record type PTR.
pub const TYPE_PTR: u16 = 12;
/// Record type TXT.
pub const TYPE_TXT: u16 = 16;
/// Record type AAAA.
pub const TYPE_AAAA: u16 = 28;
/// Record type SRV.
pub const TYPE_SRV: u16 = 33;

/// Response code NOERROR.
pub const RCODE_NOERROR: u8 = 0;
/// Response code FORMERR.
pub const RCODE_FORMERR: u8 = 1;
/// Response code SERVFAIL.
pub const RCODE_SERVFAIL: u8 = 2;
/// Response code NXDOMAIN.
pub const RCODE_NXDOMAIN: u8 = 3;

/// The type number of a name like `A` or `SRV` (or `TYPE<n>`).
pub fn qtype_from_str(s: &str) -> Option<u16> {
    Some(match s.to_ascii_uppercase().as_str() {
        "A" => TYPE_A,
        "SOA" => TYPE_SOA,
        "PTR" => TYPE_PTR,
        "TXT" => TYPE_TXT,
        "AAAA" => TYPE_AAAA,
        "SRV" => TYPE_SRV,
        other => other.strip_prefix("TYPE")?.parse().ok()?,
    })
}

/// Appends `name` (dots between labels, trailing dot optional) in wire
/// form; `None` if a label is empty or longer than 63 bytes, or the name
/// longer than 255.
pub fn encode_name(name: &str, out: &mut Vec<u8>) -> Option<()> {
    let start = out.len();
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            let len = u8::try_from(label.len())
                .ok()
                .filter(|l| (1..=63).contains(l))?;
            out.push(len);
            out.extend_from_slice(label.as_bytes());
        }
    }
    out.push(0);
    (out.len() - start <= 255).then_some(())
}

/// A standard query (opcode QUERY, class IN, one question, no EDNS).
pub fn query(id: u16, name: &str, qtype: u16, recursion_desired: bool) -> Option<Vec<u8>> {
    let flags: u16 = if recursion_desired { 0x0100 } else { 0 };
    let mut b = Vec::with_capacity(12 + name.len() + 6);
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    encode_name(name, &mut b)?;
    b.extend_from_slice(&qtype.to_be_bytes());
    b.extend_from_slice(&1u16.to_be_bytes());
    Some(b)
}

/// The fixed 12-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The message id.
    pub id: u16,
    /// The flags word (QR, opcode, AA, TC, RD, RA, Z, RCODE).
    pub flags: u16,
    /// Question count.
    pub qdcount: u16,
    /// Answer count.
    pub ancount: u16,
    /// Authority count.
    pub nscount: u16,
    /// Additional count.
    pub arcount: u16,
}

impl Header {
    /// Reads the header; `None` if `buf` is shorter than 12 bytes.
    pub fn parse(buf: &[u8]) -> Option<Header> {
        let w = |i: usize| Some(u16::from_be_bytes([*buf.get(i)?, *buf.get(i + 1)?]));
        Some(Header {
            id: w(0)?,
            flags: w(2)?,
            qdcount: w(4)?,
            ancount: w(6)?,
            nscount: w(8)?,
            arcount: w(10)?,
        })
    }

    /// Whether this is a response (QR).
    pub fn is_response(&self) -> bool {
        self.flags & 0x8000 != 0
    }

    /// The opcode.
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xf) as u8
    }

    /// Whether the answer was truncated (TC).
    pub fn truncated(&self) -> bool {
        self.flags & 0x0200 != 0
    }

    /// The response code (low 4 bits; no EDNS extension).
    pub fn rcode(&self) -> u8 {
        (self.flags & 0xf) as u8
    }
}

/// The first question of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The name, lower-cased, with a trailing dot (`web.shop.svc.x.`).
    pub name: String,
    /// Its type.
    pub qtype: u16,
    /// Its class.
    pub qclass: u16,
    /// The offset just past the question, where the answers would start.
    pub end: usize,
}

/// Reads the first question (uncompressed name); `None` if there is none
/// or it runs past the end.
pub fn question(buf: &[u8]) -> Option<Question> {
    let h = Header::parse(buf)?;
    if h.qdcount == 0 {
        return None;
    }
    let mut i = 12;
    let mut name = String::new();
    loop {
        let len = usize::from(*buf.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        let label = buf.get(i..i + len)?;
        name.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
        name.push('.');
        i += len;
    }
    if name.is_empty() {
        name.push('.');
    }
    let w = |i: usize| Some(u16::from_be_bytes([*buf.get(i)?, *buf.get(i + 1)?]));
    Some(Question {
        name,
        qtype: w(i)?,
        qclass: w(i + 2)?,
        end: i + 4,
    })
}

/// An answer's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rdata {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An IPv6 address.
    Aaaa(Ipv6Addr),
}

impl Rdata {
    fn rtype(&self) -> u16 {
        match self {
            Rdata::A(_) => TYPE_A,
            Rdata::Aaaa(_) => TYPE_AAAA,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match self {
            Rdata::A(a) => a.octets().to_vec(),
            Rdata::Aaaa(a) => a.octets().to_vec(),
        }
    }
}

/// The answer to `query` (whose first question is `q`): the query's id,
/// opcode, RD and question, QR and RA set, `rcode`, and one record per
/// entry of `answers`, owned by the question's name (a pointer to it).
pub fn response(query: &[u8], q: &Question, rcode: u8, answers: &[Rdata], ttl: u32) -> Vec<u8> {
    let h = Header::parse(query).unwrap_or(Header {
        id: 0,
        flags: 0,
        qdcount: 0,
        ancount: 0,
        nscount: 0,
        arcount: 0,
    });
    let flags = 0x8000 | (h.flags & 0x7900) | 0x0080 | u16::from(rcode & 0xf);
    let ancount = u16::try_from(answers.len()).unwrap_or(u16::MAX);
    let mut b = Vec::with_capacity(q.end + answers.len() * 28);
    b.extend_from_slice(&h.id.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&1u16.to_be_bytes());
    b.extend_from_slice(&ancount.to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, 0]);
    b.extend_from_slice(query.get(12..q.end).unwrap_or_default());
    for a in answers.iter().take(usize::from(ancount)) {
        let data = a.bytes();
        b.extend_from_slice(&[0xc0, 12]);
        b.extend_from_slice(&a.rtype().to_be_bytes());
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&ttl.to_be_bytes());
        b.extend_from_slice(&u16::try_from(data.len()).unwrap_or(0).to_be_bytes());
        b.extend_from_slice(&data);
    }
    b
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string (whitespace allowed); `None` if malformed.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_round_trips() {
        let q = query(0x1234, "Web.Shop.svc.cluster.internal.", TYPE_AAAA, true).expect("valid");
        let h = Header::parse(&q).expect("header");
        assert_eq!((h.id, h.flags, h.qdcount), (0x1234, 0x0100, 1));
        assert!(!h.is_response());
        let qq = question(&q).expect("question");
        assert_eq!(qq.name, "web.shop.svc.cluster.internal.");
        assert_eq!((qq.qtype, qq.qclass, qq.end), (TYPE_AAAA, 1, q.len()));
        assert!(query(1, "a..b", TYPE_A, false).is_none());
        assert!(query(1, &"x".repeat(64), TYPE_A, false).is_none());
        assert_eq!(question(&q[..q.len() - 1]), None);
    }

    #[test]
    fn response_points_at_the_question() {
        let q = query(7, "a.example.test", TYPE_A, true).expect("valid");
        let qq = question(&q).expect("question");
        let r = response(
            &q,
            &qq,
            RCODE_NOERROR,
            &[Rdata::A(Ipv4Addr::new(198, 51, 100, 7))],
            30,
        );
        let h = Header::parse(&r).expect("header");
        assert!(h.is_response());
        assert_eq!((h.id, h.rcode(), h.qdcount, h.ancount), (7, 0, 1, 1));
        assert_eq!(h.flags & 0x0100, 0x0100, "RD copied");
        assert_eq!(
            &r[qq.end..],
            &[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 198, 51, 100, 7]
        );
        let nx = response(&q, &qq, RCODE_NXDOMAIN, &[], 30);
        assert_eq!(Header::parse(&nx).expect("header").rcode(), RCODE_NXDOMAIN);
        assert_eq!(nx.len(), q.len());
    }

    #[test]
    fn hex_and_types() {
        assert_eq!(unhex("00 ff10").expect("valid"), [0, 255, 16]);
        assert!(unhex("0").is_none() && unhex("zz").is_none());
        assert_eq!(hex(&[0xab, 1]), "ab01");
        assert_eq!(qtype_from_str("srv"), Some(TYPE_SRV));
        assert_eq!(qtype_from_str("TYPE65"), Some(65));
        assert_eq!(qtype_from_str("nope"), None);
    }
}
