//! What the runtime hands the plugin besides stdin: the `CNI_*`
//! variables, the command they name, and our keys in `CNI_ARGS`.

use std::path::PathBuf;

use super::error::{code, CniError};

/// The six verbs of CNI 1.1 (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach the container.
    Add,
    /// Detach it (idempotent).
    Del,
    /// Verify an earlier ADD still holds.
    Check,
    /// Report the versions we speak.
    Version,
    /// 1.1: can the plugin serve ADDs now?
    Status,
    /// 1.1: detach whatever the runtime no longer knows.
    Gc,
}

impl Command {
    /// Parses `CNI_COMMAND` (exact, upper case as the spec writes it).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            _ => return None,
        })
    }
}

/// The `CNI_*` environment of one invocation. Empty values count as
/// absent (runtimes set `CNI_NETNS=` on a DEL whose netns is gone).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`, as given.
    pub command: Option<String>,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`: the container's network namespace file.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`: the interface to create inside it.
    pub ifname: Option<String>,
    /// `CNI_ARGS`: `KEY=VALUE;...`.
    pub args: Option<String>,
    /// `CNI_PATH`: where the runtime looks for plugins (unused: we
    /// delegate to none, but it is part of the contract).
    pub path: Option<String>,
}

impl Env {
    /// Reads the variables through `get`, so tests need not touch the
    /// process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let v = |k: &str| get(k).filter(|s| !s.is_empty());
        Self {
            command: v("CNI_COMMAND"),
            container_id: v("CNI_CONTAINERID"),
            netns: v("CNI_NETNS").map(PathBuf::from),
            ifname: v("CNI_IFNAME"),
            args: v("CNI_ARGS"),
            path: v("CNI_PATH"),
        }
    }

    /// The process environment.
    pub fn from_process() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// The command, or error 4 saying which variable is wrong.
    pub fn command(&self) -> Result<Command, CniError> {
        let raw = self
            .command
            .as_deref()
            .ok_or_else(|| missing("CNI_COMMAND", "one of ADD, DEL, CHECK, VERSION, STATUS, GC"))?;
        Command::parse(raw).ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_COMMAND={raw:?} is not a CNI command: use ADD, DEL, CHECK, VERSION, STATUS or GC"
                ),
            )
        })
    }

    /// `CNI_CONTAINERID`, required by ADD, DEL and CHECK.
    pub fn container_id(&self) -> Result<&str, CniError> {
        self.container_id
            .as_deref()
            .ok_or_else(|| missing("CNI_CONTAINERID", "the runtime's id of the container"))
    }

    /// `CNI_NETNS`, required by ADD and CHECK.
    pub fn netns(&self) -> Result<&std::path::Path, CniError> {
        self.netns.as_deref().ok_or_else(|| {
            missing(
                "CNI_NETNS",
                "the container's network namespace file, e.g. /run/netns/c1",
            )
        })
    }

    /// `CNI_IFNAME`, required by ADD, DEL and CHECK; checked as a Linux
    /// interface name (1-15 bytes, no `/`, blank or `:`).
    pub fn ifname(&self) -> Result<&str, CniError> {
        let name = self.ifname.as_deref().ok_or_else(|| {
            missing(
                "CNI_IFNAME",
                "the interface name inside the container, e.g. eth0",
            )
        })?;
        let bad = name.len() > 15
            || name == "."
            || name == ".."
            || name
                .bytes()
                .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0);
        if bad {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_IFNAME={name:?} is not a valid interface name: 1 to 15 characters, no '/', ':' or blanks"
                ),
            ));
        }
        Ok(name)
    }
}

fn missing(var: &str, what: &str) -> CniError {
    CniError::new(
        code::INVALID_ENV,
        format!("{var} is not set: the runtime must pass {what}"),
    )
}

/// What `CNI_ARGS` says about us. Keys are `PROXYTUN_APP`,
/// `PROXYTUN_SERVICE`, `PROXYTUN_INSTANCE`; `IgnoreUnknown=1` lets the
/// runtime pass keys meant for other plugins (`K8S_POD_NAME`, ...), which
/// are an error otherwise (the spec convention).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `PROXYTUN_APP`.
    pub app: Option<String>,
    /// `PROXYTUN_SERVICE`.
    pub service: Option<String>,
    /// `PROXYTUN_INSTANCE`.
    pub instance: Option<u32>,
}

impl CniArgs {
    /// Parses `KEY=VALUE;KEY=VALUE` (empty pieces are skipped).
    pub fn parse(raw: Option<&str>) -> Result<Self, CniError> {
        let mut out = Self::default();
        let Some(raw) = raw else {
            return Ok(out);
        };
        let bad = |msg: String| CniError::new(code::INVALID_ENV, msg);
        let mut unknown = Vec::new();
        let mut ignore_unknown = false;
        for piece in raw.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = piece.split_once('=').ok_or_else(|| {
                bad(format!(
                    "CNI_ARGS: {piece:?} is not KEY=VALUE (pairs are separated by ';')"
                ))
            })?;
            match k {
                "IgnoreUnknown" => {
                    ignore_unknown = match v.to_ascii_lowercase().as_str() {
                        "1" | "true" => true,
                        "0" | "false" => false,
                        _ => {
                            return Err(bad(format!(
                                "CNI_ARGS: IgnoreUnknown={v:?} must be 1, 0, true or false"
                            )))
                        }
                    }
                }
                "PROXYTUN_APP" => out.app = Some(v.to_owned()),
                "PROXYTUN_SERVICE" => out.service = Some(v.to_owned()),
                "PROXYTUN_INSTANCE" => {
                    out.instance = Some(v.parse().map_err(|_| {
                        bad(format!(
                            "CNI_ARGS: PROXYTUN_INSTANCE={v:?} must be a whole number"
                        ))
                    })?)
                }
                other => unknown.push(other.to_owned()),
            }
        }
        if !unknown.is_empty() && !ignore_unknown {
            return Err(bad(format!(
                "CNI_ARGS: unknown key(s) {}: proxytun reads PROXYTUN_APP, PROXYTUN_SERVICE and \
                 PROXYTUN_INSTANCE; add IgnoreUnknown=1 to pass keys for other plugins",
                unknown.join(", ")
            )));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_treats_empty_as_absent_and_names_the_variable() {
        let env = Env::from_lookup(|k| match k {
            "CNI_COMMAND" => Some("ADD".into()),
            "CNI_NETNS" => Some(String::new()),
            "CNI_IFNAME" => Some("eth0".into()),
            _ => None,
        });
        assert_eq!(env.command(), Ok(Command::Add));
        let e = env.netns().expect_err("empty netns");
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("CNI_NETNS"), "{e}");
        assert!(env
            .container_id()
            .expect_err("none")
            .msg
            .contains("CNI_CONTAINERID"));
        assert_eq!(env.ifname(), Ok("eth0"));
        let bad = Env {
            command: Some("add".into()),
            ifname: Some("a/b".into()),
            ..Env::default()
        };
        assert_eq!(
            bad.command().expect_err("lower case").code,
            code::INVALID_ENV
        );
        assert_eq!(bad.ifname().expect_err("slash").code, code::INVALID_ENV);
    }

    #[test]
    fn cni_args_follow_the_ignore_unknown_convention() {
        let a = CniArgs::parse(Some(
            "IgnoreUnknown=1;K8S_POD_NAME=x;PROXYTUN_APP=shop;PROXYTUN_SERVICE=web;PROXYTUN_INSTANCE=3",
        ))
        .expect("valid");
        assert_eq!(a.app.as_deref(), Some("shop"));
        assert_eq!(a.service.as_deref(), Some("web"));
        assert_eq!(a.instance, Some(3));
        let e = CniArgs::parse(Some("K8S_POD_NAME=x;PROXYTUN_APP=shop")).expect_err("unknown");
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(
            e.msg.contains("K8S_POD_NAME") && e.msg.contains("IgnoreUnknown=1"),
            "{e}"
        );
        assert!(CniArgs::parse(Some("IgnoreUnknown=0;X=1")).is_err());
        assert!(CniArgs::parse(Some("PROXYTUN_APP")).is_err());
        assert!(CniArgs::parse(Some("PROXYTUN_INSTANCE=x")).is_err());
        assert_eq!(CniArgs::parse(None), Ok(CniArgs::default()));
    }
}
