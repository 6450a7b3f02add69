//! The six CNI commands, each a short conversation with the daemon's API:
//! the daemon owns every piece of state, the plugin only translates.
//!
//! | command | API |
//! |---|---|
//! | ADD | `POST /v1/attachments` (+ `GET /v1/status` for the subnet and DNS) |
//! | DEL | `DELETE /v1/attachments?container_id=&ifname=` (404 is success) |
//! | CHECK | `GET /v1/instances`, then a look into the netns |
//! | STATUS | `GET /v1/status` |
//! | GC | `GET /v1/instances`, then DELETE for each stale one |
//!
//! One file per command (`add`, `check`, `del` with GC, `version`);
//! `daemon` holds the API calls and error mapping they share. STATUS,
//! a few lines, stays here with the dispatch.

mod add;
mod check;
mod daemon;
mod del;
mod version;

use envmgr::api::client::Client;
use serde_json::Value;

use crate::spec::{code, CniError, Command, Env, NetConf, LATEST_VERSION, SUPPORTED_VERSIONS};
use daemon::get_status;
use version::{require_1_1, version, version_json};

/// The outcome of one invocation: what to print and in which version.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The `cniVersion` of the answer (the netconf's, when it was readable).
    pub version: String,
    /// A result to print (`None`: print nothing, exit 0), or an error.
    pub result: Result<Option<Value>, CniError>,
}

impl Reply {
    /// The text for stdout (empty when there is nothing to print).
    pub fn stdout(&self) -> String {
        match &self.result {
            Ok(Some(v)) => format!("{v:#}\n"),
            Ok(None) => String::new(),
            Err(e) => format!("{:#}\n", e.to_json(&self.version)),
        }
    }

    /// The process exit code: 0 on success, 1 on error.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.result.is_err())
    }
}

/// Runs the command that `env` names on the netconf `stdin`.
pub async fn run(env: &Env, stdin: &[u8]) -> Reply {
    let peeked = crate::spec::peek_version(stdin);
    let answer_version = peeked
        .clone()
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.to_owned());
    let command = match env.command() {
        Ok(c) => c,
        Err(e) => {
            return Reply {
                version: answer_version,
                result: Err(e),
            }
        }
    };
    if command == Command::Version {
        return Reply {
            version: answer_version,
            result: Ok(Some(version(peeked))),
        };
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => {
            return Reply {
                version: answer_version,
                result: Err(e),
            }
        }
    };
    let version = conf.cni_version.clone();
    let result = match command {
        Command::Add => add::add(env, &conf).await.map(Some),
        Command::Del => del::del(env, &conf).await.map(|()| None),
        Command::Check => check::check(env, &conf).await.map(|()| None),
        Command::Status => status(&conf).await.map(|()| None),
        Command::Gc => del::gc(&conf).await.map(|()| None),
        Command::Version => Ok(Some(version_json(&conf.cni_version))),
    };
    Reply { version, result }
}

/// STATUS (1.1): ready when the daemon answers; else error 50.
async fn status(conf: &NetConf) -> Result<(), CniError> {
    require_1_1(conf, "STATUS")?;
    let client = Client::new(&conf.socket);
    get_status(&client, &conf.socket)
        .await
        .map(drop)
        .map_err(|e| CniError {
            code: code::PLUGIN_NOT_AVAILABLE,
            ..e
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(cmd: &str) -> Env {
        Env {
            command: Some(cmd.into()),
            container_id: Some("c1".into()),
            netns: Some("/run/netns/x".into()),
            ifname: Some("eth0".into()),
            ..Env::default()
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn version_needs_no_netconf_and_echoes_the_version() {
        let r = rt().block_on(run(&env("VERSION"), b"{\"cniVersion\":\"1.0.0\"}"));
        assert_eq!(
            r.result,
            Ok(Some(
                json!({"cniVersion":"1.0.0","supportedVersions":["1.0.0","1.1.0"]})
            ))
        );
        let r = rt().block_on(run(&env("VERSION"), b""));
        assert_eq!(r.result.expect("ok").expect("some")["cniVersion"], "1.1.0");
    }

    #[test]
    fn a_missing_daemon_is_try_again_for_del_and_not_available_for_status() {
        let dir = std::env::temp_dir().join(format!("ptcni-none-{}", std::process::id()));
        let conf = json!({"cniVersion":"1.1.0","name":"n","type":"proxytun-cni",
            "socket": dir.join("api.sock"), "app":"shop","service":"web"})
        .to_string();
        let del = rt().block_on(run(&env("DEL"), conf.as_bytes()));
        assert_eq!(del.result.expect_err("down").code, code::TRY_AGAIN_LATER);
        let st = rt().block_on(run(&env("STATUS"), conf.as_bytes()));
        assert_eq!(st.exit_code(), 1);
        assert!(st.stdout().contains("\"code\": 50"), "{}", st.stdout());
        assert_eq!(
            st.result.expect_err("down").code,
            code::PLUGIN_NOT_AVAILABLE
        );
        let add = rt().block_on(run(&env("ADD"), conf.as_bytes()));
        assert_eq!(add.result.expect_err("down").code, code::TRY_AGAIN_LATER);
    }

    #[test]
    fn status_and_gc_need_1_1() {
        let conf = br#"{"cniVersion":"1.0.0","name":"n","type":"proxytun-cni","app":"shop"}"#;
        for cmd in ["STATUS", "GC"] {
            let r = rt().block_on(run(&env(cmd), conf));
            assert_eq!(r.result.expect_err("1.0").code, code::INCOMPATIBLE_VERSION);
            assert_eq!(r.version, "1.0.0");
        }
    }

    #[test]
    fn errors_answer_in_a_version_we_speak() {
        let r = rt().block_on(run(
            &env("ADD"),
            br#"{"cniVersion":"0.3.1","name":"n","type":"proxytun-cni"}"#,
        ));
        assert_eq!(r.version, "1.1.0");
        assert_eq!(r.result.expect_err("old").code, code::INCOMPATIBLE_VERSION);
        let r = rt().block_on(run(&Env::default(), b"{}"));
        assert_eq!(r.result.expect_err("no command").code, code::INVALID_ENV);
    }
}
