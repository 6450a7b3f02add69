//! Real `dig` (Debian's bind9-dnsutils) inside a namespace, and its output
//! read back into sections, so the DNS tests check what a standard client
//! sees rather than what our own code thinks it sent.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::cmd::Out;
use crate::netns::Netns;

/// Deadline of one `dig` run (it is also told `+time=2 +tries=1`, so it
/// gives up before this unless it retries over TCP).
pub const DIG_TIMEOUT: Duration = Duration::from_secs(15);

/// One resource record as dig prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rr {
    /// The owner name, with dig's trailing dot.
    pub name: String,
    /// The TTL.
    pub ttl: u32,
    /// The type (`A`, `SRV`, ...).
    pub rtype: String,
    /// The data fields, space-separated as printed.
    pub data: String,
}

/// What one dig run reported (the last answer, if it retried over TCP).
#[derive(Debug, Clone)]
pub struct Dig {
    /// `NOERROR`, `NXDOMAIN`, `SERVFAIL`, `FORMERR`, ...
    pub status: String,
    /// The header flags (`qr`, `aa`, `tc`, `rd`, `ra`).
    pub flags: Vec<String>,
    /// The answer section.
    pub answer: Vec<Rr>,
    /// The authority section.
    pub authority: Vec<Rr>,
    /// The additional section (without the OPT pseudo-record).
    pub additional: Vec<Rr>,
    /// Whether dig said it retried over TCP after a truncated answer.
    pub retried_tcp: bool,
    /// The raw output.
    pub out: Out,
}

impl Dig {
    /// Whether a header flag is set.
    pub fn flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }

    /// The data of every answer record of type `rtype`, sorted.
    pub fn answers(&self, rtype: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .answer
            .iter()
            .filter(|r| r.rtype == rtype)
            .map(|r| r.data.clone())
            .collect();
        v.sort();
        v
    }

    /// The only answer of type `rtype`; an error showing dig's output if
    /// there is not exactly one.
    pub fn one(&self, rtype: &str) -> Result<String> {
        match self.answers(rtype).as_slice() {
            [one] => Ok(one.clone()),
            other => bail!(
                "expected one {rtype} answer, got {other:?}:\n{}",
                self.out.stdout
            ),
        }
    }

    /// Reads dig's default output.
    pub fn parse(out: Out) -> Result<Dig> {
        let text = out.stdout.clone();
        let retried_tcp = text.contains("retrying in TCP mode");
        let start = text
            .rfind("->>HEADER<<-")
            .ok_or_else(|| anyhow!("no answer header in dig's output:\n{text}"))?;
        let body = &text[start..];
        let status = body
            .split("status: ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .ok_or_else(|| anyhow!("no status in dig's output:\n{text}"))?
            .trim()
            .to_owned();
        let flags = body
            .lines()
            .find_map(|l| l.strip_prefix(";; flags:"))
            .and_then(|r| r.split(';').next())
            .map(|f| f.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let mut d = Dig {
            status,
            flags,
            answer: Vec::new(),
            authority: Vec::new(),
            additional: Vec::new(),
            retried_tcp,
            out,
        };
        let mut section: Option<&str> = None;
        for line in body.lines() {
            let line = line.trim_end();
            if let Some(rest) = line.strip_prefix(";; ") {
                section = rest.strip_suffix(" SECTION:");
                continue;
            }
            if line.is_empty() {
                section = None;
                continue;
            }
            if line.starts_with(';') {
                continue;
            }
            let Some(sec) = section else { continue };
            let rr = parse_rr(line).with_context(|| format!("dig output line {line:?}"))?;
            match sec {
                "ANSWER" => d.answer.push(rr),
                "AUTHORITY" => d.authority.push(rr),
                "ADDITIONAL" => d.additional.push(rr),
                _ => {}
            }
        }
        Ok(d)
    }
}

fn parse_rr(line: &str) -> Result<Rr> {
    let mut it = line.split_whitespace();
    let name = it.next().ok_or_else(|| anyhow!("no name"))?.to_owned();
    let ttl = it
        .next()
        .ok_or_else(|| anyhow!("no ttl"))?
        .parse()
        .context("ttl")?;
    let class = it.next().ok_or_else(|| anyhow!("no class"))?;
    if class != "IN" {
        bail!("class {class}");
    }
    let rtype = it.next().ok_or_else(|| anyhow!("no type"))?.to_owned();
    let data = it.collect::<Vec<_>>().join(" ");
    Ok(Rr {
        name,
        ttl,
        rtype,
        data,
    })
}

/// Runs `dig +time=2 +tries=1 args..` in `ns`, requires it to get an answer
/// (exit 0), and parses it.
pub fn dig(ns: &Netns, args: &[&str]) -> Result<Dig> {
    let mut full = vec!["+time=2", "+tries=1"];
    full.extend_from_slice(args);
    let out = ns
        .exec("dig", &full, DIG_TIMEOUT)
        .with_context(|| format!("dig {} in {}", args.join(" "), ns.name()))?;
    let out = out.ok()?;
    Dig::parse(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    fn out(stdout: &str) -> Out {
        Out {
            cmdline: "dig".into(),
            status: ExitStatus::from_raw(0),
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    const SRV: &str = "
; <<>> DiG 9.18.49-1~deb12u3-Debian <<>> @10.18.1.1 web.shop.svc.cluster.internal SRV
; (1 server found)
;; global options: +cmd
;; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 4660
;; flags: qr aa rd; QUERY: 1, ANSWER: 2, AUTHORITY: 0, ADDITIONAL: 3
;; WARNING: recursion requested but not available

;; OPT PSEUDOSECTION:
; EDNS: version: 0, flags:; udp: 1232
;; QUESTION SECTION:
;web.shop.svc.cluster.internal.	IN	SRV

;; ANSWER SECTION:
web.shop.svc.cluster.internal. 5 IN	SRV	0 0 0 1.web.shop.svc.cluster.internal.
web.shop.svc.cluster.internal. 5 IN	SRV	0 0 0 2.web.shop.svc.cluster.internal.

;; ADDITIONAL SECTION:
1.web.shop.svc.cluster.internal. 5 IN	A	10.30.1.2
2.web.shop.svc.cluster.internal. 5 IN	A	10.30.2.2

;; Query time: 0 msec
";

    #[test]
    fn parses_sections_and_flags() {
        let d = Dig::parse(out(SRV)).expect("parses");
        assert_eq!(d.status, "NOERROR");
        assert!(d.flag("aa") && d.flag("qr") && !d.flag("tc"));
        assert_eq!(d.answer.len(), 2);
        assert_eq!(d.answer[0].ttl, 5);
        assert_eq!(
            d.answers("SRV"),
            [
                "0 0 0 1.web.shop.svc.cluster.internal.",
                "0 0 0 2.web.shop.svc.cluster.internal."
            ]
        );
        assert_eq!(d.additional.len(), 2);
        assert!(d.one("SRV").is_err());
        assert!(!d.retried_tcp);
    }

    #[test]
    fn takes_the_last_answer_after_a_tcp_retry() {
        let text = format!(
            ";; Truncated, retrying in TCP mode.\n;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 1\n\
             ;; flags: qr aa tc rd; QUERY: 1, ANSWER: 0, AUTHORITY: 0, ADDITIONAL: 0\n\n{SRV}"
        );
        let d = Dig::parse(out(&text)).expect("parses");
        assert!(d.retried_tcp);
        assert!(!d.flag("tc"));
        assert_eq!(d.answer.len(), 2);
        let nx = ";; ->>HEADER<<- opcode: QUERY, status: NXDOMAIN, id: 9\n\
                  ;; flags: qr aa rd; QUERY: 1, ANSWER: 0, AUTHORITY: 1, ADDITIONAL: 1\n\n\
                  ;; AUTHORITY SECTION:\n\
                  cluster.internal. 5 IN SOA ns.cluster.internal. hostmaster.cluster.internal. 1 5 5 5 5\n";
        let d = Dig::parse(out(nx)).expect("parses");
        assert_eq!(d.status, "NXDOMAIN");
        assert_eq!(d.authority[0].rtype, "SOA");
        assert!(Dig::parse(out(";; connection timed out")).is_err());
    }
}
