//! Just enough of the DNS wire format (RFC 1035) for the test tools and the
//! bench: build a query, read a header and a question, build a plain
//! answer; and for the bench's load tool, queries encoded once and sent
//! with only the 16-bit ID patched, and a strict check of every answer
//! (header, echoed question, the one record and its address), so the bench
//! counts wrong answers instead of measuring them as fast ones.
//!
//! Written by hand on purpose: the resolver under test is built on hickory,
//! so the fake upstream (`fakedns`), the query flooder (`ptprobe
//! dns-flood`) and the bench's load use an independent implementation, and
//! a bug shared by both ends cannot cancel itself out (the tests check it
//! against hickory). The hot loop neither allocates nor parses whole
//! messages. Names in questions are read without compression (queries
//! carry none); anything else is refused with `None`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Result};

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

/// Class IN.
pub const CLASS_IN: u16 = 1;

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
    b.extend_from_slice(&CLASS_IN.to_be_bytes());
    Some(b)
}

/// The big-endian 16-bit word at `at`, if `b` is long enough.
fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
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
        let w = |i: usize| be16(buf, i);
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
    let w = |i: usize| be16(buf, i);
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

/// One pre-encoded query and the answer it must get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Header (ID 0) and question: exactly the packet sent, ID patched.
    pub packet: Vec<u8>,
    /// The record type asked.
    pub qtype: u16,
    /// The address the one answer record must hold (4 or 16 bytes used).
    expect: [u8; 16],
    expect_len: u8,
}

impl Query {
    /// Encodes a query for `name` (no final dot, lowercase labels) of type
    /// `qtype`, which must be answered with `expect`.
    pub fn new(name: &str, qtype: u16, expect: IpAddr) -> Result<Query> {
        let bare = name.trim_end_matches('.');
        // ID 0, recursion desired (as stub resolvers, glibc and musl, send
        // it); the root name is no service's.
        let Some(p) = query(0, bare, qtype, true).filter(|_| !bare.is_empty()) else {
            bail!(
                "bad DNS name {name:?}: an empty label, a label over 63 bytes or over 255 in all"
            );
        };
        let mut e = [0u8; 16];
        let expect_len = match (qtype, expect) {
            (TYPE_A, IpAddr::V4(a)) => {
                e[..4].copy_from_slice(&a.octets());
                4
            }
            (TYPE_AAAA, IpAddr::V6(a)) => {
                e.copy_from_slice(&a.octets());
                16
            }
            _ => bail!("query type {qtype} cannot be answered with {expect}"),
        };
        Ok(Query {
            packet: p,
            qtype,
            expect: e,
            expect_len,
        })
    }

    /// The expected address bytes.
    pub fn expected_rdata(&self) -> &[u8] {
        &self.expect[..usize::from(self.expect_len)]
    }

    /// Writes the query with `id` into `buf` (at least `packet.len()`
    /// bytes) and returns its length: a copy and a 2-byte patch, nothing
    /// is encoded per send.
    pub fn write_with_id(&self, id: u16, buf: &mut [u8]) -> usize {
        let n = self.packet.len();
        buf[..n].copy_from_slice(&self.packet);
        buf[..2].copy_from_slice(&id.to_be_bytes());
        n
    }
}

/// The ID of a reply, if it is long enough to have one.
pub fn reply_id(reply: &[u8]) -> Option<u16> {
    be16(reply, 0)
}

/// What was wrong with an answer. Each has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// NOERROR, the question echoed, one record of the asked type holding
    /// the expected address.
    Ok,
    /// Not a well-formed response to our query (QR unset, wrong opcode,
    /// cut short, another question).
    Malformed,
    /// TC set: the answer did not fit (it always should here).
    Truncated,
    /// A response code other than NOERROR.
    Rcode(u8),
    /// NOERROR with other than exactly one answer record.
    AnswerCount(u16),
    /// One record, but of the wrong name, type, class or address.
    WrongRecord,
}

/// Checks a resolver's reply to `q` (the ID is matched by the caller).
pub fn check_answer(reply: &[u8], q: &Query) -> Verdict {
    check_answer_inner(reply, q).unwrap_or(Verdict::Malformed)
}

fn check_answer_inner(r: &[u8], q: &Query) -> Option<Verdict> {
    let flags = be16(r, 2)?;
    if flags & 0x8000 == 0 || (flags >> 11) & 0xf != 0 {
        return Some(Verdict::Malformed);
    }
    if flags & 0x0200 != 0 {
        return Some(Verdict::Truncated);
    }
    let rcode = (flags & 0xf) as u8;
    let qdcount = be16(r, 4)?;
    let ancount = be16(r, 6)?;
    // The question must come back as asked (same name bytes, type, class).
    let qlen = q.packet.len();
    if qdcount != 1 || r.get(12..qlen)? != &q.packet[12..] {
        return Some(Verdict::Malformed);
    }
    if rcode != 0 {
        return Some(Verdict::Rcode(rcode));
    }
    if ancount != 1 {
        return Some(Verdict::AnswerCount(ancount));
    }
    // The record's owner: a pointer to the question's name (offset 12) or
    // the same name written out.
    let mut at = qlen;
    let qname = &q.packet[12..qlen - 4];
    if *r.get(at)? & 0xc0 == 0xc0 {
        if be16(r, at)? != 0xc00c {
            return Some(Verdict::WrongRecord);
        }
        at += 2;
    } else {
        if !r.get(at..at + qname.len())?.eq_ignore_ascii_case(qname) {
            return Some(Verdict::WrongRecord);
        }
        at += qname.len();
    }
    let rtype = be16(r, at)?;
    let class = be16(r, at + 2)?;
    let rdlen = usize::from(be16(r, at + 8)?);
    let rdata = r.get(at + 10..at + 10 + rdlen)?;
    if rtype != q.qtype || class != CLASS_IN || rdata != q.expected_rdata() {
        return Some(Verdict::WrongRecord);
    }
    Some(Verdict::Ok)
}

/// Checks an echo server's reply: the query itself, byte for byte.
pub fn check_echo(reply: &[u8], q: &Query) -> Verdict {
    if reply.len() == q.packet.len() && reply.get(2..) == q.packet.get(2..) {
        Verdict::Ok
    } else {
        Verdict::Malformed
    }
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
#[allow(clippy::unwrap_used)] // Tests may unwrap.
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
    use hickory_proto::rr::rdata::{A, AAAA};
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    use std::str::FromStr;

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

    const NAME: &str = "svc3.app0.svc.cluster.internal";

    fn q4() -> Query {
        Query::new(NAME, TYPE_A, Ipv4Addr::new(10, 30, 0, 4).into()).unwrap()
    }

    #[test]
    fn patched_query_parses_with_hickory() {
        let q = q4();
        let mut buf = [0u8; 512];
        for id in [0u16, 1, 0x1234, 0xffff] {
            let n = q.write_with_id(id, &mut buf);
            assert_eq!(&buf[2..n], &q.packet[2..]);
            let m = Message::from_vec(&buf[..n]).unwrap();
            assert_eq!(m.metadata.id, id);
            assert_eq!(m.metadata.message_type, MessageType::Query);
            assert_eq!(m.metadata.op_code, OpCode::Query);
            assert!(m.metadata.recursion_desired);
            assert_eq!(m.queries.len(), 1);
            assert_eq!(m.queries[0].name().to_ascii(), format!("{NAME}."));
            assert_eq!(m.queries[0].query_type(), RecordType::A);
        }
        let q6 = Query::new(NAME, TYPE_AAAA, Ipv6Addr::LOCALHOST.into()).unwrap();
        let m = Message::from_vec(&q6.packet).unwrap();
        assert_eq!(m.queries[0].query_type(), RecordType::AAAA);
        assert!(Query::new(NAME, TYPE_AAAA, Ipv4Addr::LOCALHOST.into()).is_err());
        assert!(Query::new("a..b", TYPE_A, Ipv4Addr::LOCALHOST.into()).is_err());
        assert_eq!(reply_id(&[0x12, 0x34, 0]), Some(0x1234));
        assert_eq!(reply_id(&[0x12]), None);
    }

    /// A reply built by hickory (as the resolver builds it) to query `q`.
    fn reply(q: &Query, rcode: ResponseCode, answers: Vec<RData>) -> Vec<u8> {
        let query = Message::from_vec(&q.packet).unwrap();
        let mut m = Message::response(7, OpCode::Query);
        m.metadata.response_code = rcode;
        m.add_queries(query.queries.clone());
        for a in answers {
            m.add_answer(Record::from_rdata(Name::from_str(NAME).unwrap(), 5, a));
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn answers_are_checked_strictly() {
        let q = q4();
        let good = RData::A(A(Ipv4Addr::new(10, 30, 0, 4)));
        let ok = reply(&q, ResponseCode::NoError, vec![good.clone()]);
        assert_eq!(check_answer(&ok, &q), Verdict::Ok);
        let wrong = RData::A(A(Ipv4Addr::new(10, 30, 0, 5)));
        assert_eq!(
            check_answer(&reply(&q, ResponseCode::NoError, vec![wrong]), &q),
            Verdict::WrongRecord
        );
        let v6 = RData::AAAA(AAAA(Ipv6Addr::LOCALHOST));
        assert_eq!(
            check_answer(&reply(&q, ResponseCode::NoError, vec![v6]), &q),
            Verdict::WrongRecord
        );
        assert_eq!(
            check_answer(&reply(&q, ResponseCode::NXDomain, vec![]), &q),
            Verdict::Rcode(3)
        );
        assert_eq!(
            check_answer(&reply(&q, ResponseCode::NoError, vec![]), &q),
            Verdict::AnswerCount(0)
        );
        assert_eq!(
            check_answer(
                &reply(&q, ResponseCode::NoError, vec![good.clone(), good]),
                &q
            ),
            Verdict::AnswerCount(2)
        );
        // The query itself (an echo) is not an answer; nor is a cut one.
        assert_eq!(check_answer(&q.packet, &q), Verdict::Malformed);
        assert_eq!(check_answer(&ok[..ok.len() - 2], &q), Verdict::Malformed);
        assert_eq!(check_answer(&ok[..5], &q), Verdict::Malformed);
        let mut tc = ok.clone();
        tc[2] |= 0x02;
        assert_eq!(check_answer(&tc, &q), Verdict::Truncated);
        // Another question is not an answer to ours.
        let other = Query::new(
            "svc4.app0.svc.cluster.internal",
            TYPE_A,
            Ipv4Addr::LOCALHOST.into(),
        )
        .unwrap();
        assert_eq!(check_answer(&ok, &other), Verdict::Malformed);
    }

    #[test]
    fn uncompressed_owner_names_are_accepted() {
        let q = q4();
        let mut r = q.packet.clone();
        r[2] = 0x85; // QR, AA, RD
        r[3] = 0x80; // RA, NOERROR
        r[7] = 1; // ANCOUNT
        r.extend_from_slice(&q.packet[12..q.packet.len() - 4]);
        r.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 30, 0, 4]);
        assert_eq!(check_answer(&r, &q), Verdict::Ok);
        let n = r.len();
        r[n - 1] = 9;
        assert_eq!(check_answer(&r, &q), Verdict::WrongRecord);
    }

    #[test]
    fn echo_check_compares_bytes() {
        let q = q4();
        let mut buf = [0u8; 512];
        let n = q.write_with_id(99, &mut buf);
        assert_eq!(check_echo(&buf[..n], &q), Verdict::Ok);
        buf[n - 1] ^= 1;
        assert_eq!(check_echo(&buf[..n], &q), Verdict::Malformed);
        assert_eq!(check_echo(&buf[..n - 1], &q), Verdict::Malformed);
    }
}
