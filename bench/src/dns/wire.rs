//! DNS on the wire, just what the load tool needs: queries encoded once and
//! sent with only the 16-bit ID patched, and a strict check of every answer
//! (header, echoed question, the one record and its address), so the bench
//! counts wrong answers instead of measuring them as fast ones.
//!
//! Hand-written on purpose: the hot loop must not allocate or parse whole
//! messages, and an encoder independent of hickory (which the resolver
//! uses) is checked against hickory in the tests.

use std::net::IpAddr;

use anyhow::{bail, Result};
use serde::Serialize;

/// `A`.
pub const QTYPE_A: u16 = 1;
/// `AAAA`.
pub const QTYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
/// Flags of a standard query with recursion desired, as stub resolvers
/// (glibc, musl) send it.
const FLAGS_QUERY_RD: u16 = 0x0100;

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
        let mut p = Vec::with_capacity(12 + name.len() + 6);
        p.extend_from_slice(&0u16.to_be_bytes());
        p.extend_from_slice(&FLAGS_QUERY_RD.to_be_bytes());
        p.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
        p.extend_from_slice(&[0; 6]); // AN, NS, AR
        for label in name.trim_end_matches('.').split('.') {
            if label.is_empty() || label.len() > 63 {
                bail!("bad DNS label {label:?} in {name:?}");
            }
            p.push(label.len() as u8);
            p.extend_from_slice(label.as_bytes());
        }
        p.push(0);
        if p.len() - 12 > 255 {
            bail!("DNS name too long: {name:?}");
        }
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&CLASS_IN.to_be_bytes());
        let mut e = [0u8; 16];
        let expect_len = match (qtype, expect) {
            (QTYPE_A, IpAddr::V4(a)) => {
                e[..4].copy_from_slice(&a.octets());
                4
            }
            (QTYPE_AAAA, IpAddr::V6(a)) => {
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
    Some(u16::from_be_bytes([*reply.first()?, *reply.get(1)?]))
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

/// Counters of the verdicts, for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Mismatches {
    /// [`Verdict::Malformed`].
    pub malformed: u64,
    /// [`Verdict::Truncated`].
    pub truncated: u64,
    /// [`Verdict::Rcode`] 2 (SERVFAIL).
    pub servfail: u64,
    /// [`Verdict::Rcode`] 3 (NXDOMAIN).
    pub nxdomain: u64,
    /// [`Verdict::Rcode`], any other code.
    pub other_rcode: u64,
    /// [`Verdict::AnswerCount`].
    pub answer_count: u64,
    /// [`Verdict::WrongRecord`].
    pub wrong_record: u64,
}

impl Mismatches {
    /// Counts one verdict that is not `Ok`.
    pub fn add(&mut self, v: Verdict) {
        match v {
            Verdict::Ok => {}
            Verdict::Malformed => self.malformed += 1,
            Verdict::Truncated => self.truncated += 1,
            Verdict::Rcode(2) => self.servfail += 1,
            Verdict::Rcode(3) => self.nxdomain += 1,
            Verdict::Rcode(_) => self.other_rcode += 1,
            Verdict::AnswerCount(_) => self.answer_count += 1,
            Verdict::WrongRecord => self.wrong_record += 1,
        }
    }

    /// All wrong answers.
    pub fn total(&self) -> u64 {
        self.malformed
            + self.truncated
            + self.servfail
            + self.nxdomain
            + self.other_rcode
            + self.answer_count
            + self.wrong_record
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
    use hickory_proto::rr::rdata::{A, AAAA};
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::str::FromStr;

    const NAME: &str = "svc3.app0.svc.cluster.internal";

    fn q4() -> Query {
        Query::new(NAME, QTYPE_A, Ipv4Addr::new(10, 30, 0, 4).into()).unwrap()
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
        let q6 = Query::new(NAME, QTYPE_AAAA, Ipv6Addr::LOCALHOST.into()).unwrap();
        let m = Message::from_vec(&q6.packet).unwrap();
        assert_eq!(m.queries[0].query_type(), RecordType::AAAA);
        assert!(Query::new(NAME, QTYPE_AAAA, Ipv4Addr::LOCALHOST.into()).is_err());
        assert!(Query::new("a..b", QTYPE_A, Ipv4Addr::LOCALHOST.into()).is_err());
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
            QTYPE_A,
            Ipv4Addr::LOCALHOST.into(),
        )
        .unwrap();
        assert_eq!(check_answer(&ok, &other), Verdict::Malformed);

        let mut m = Mismatches::default();
        for v in [
            Verdict::Rcode(2),
            Verdict::Rcode(3),
            Verdict::Rcode(5),
            Verdict::Ok,
        ] {
            m.add(v);
        }
        assert_eq!(
            (m.servfail, m.nxdomain, m.other_rcode, m.total()),
            (1, 1, 1, 3)
        );
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
