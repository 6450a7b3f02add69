//! The `proxytun-cni` binary: reads the CNI environment and the netconf,
//! runs the command, prints the result or the error object.

use std::io::{Read, Write};
use std::process::ExitCode;

use proxytun_cni::commands::{self, Reply};
use proxytun_cni::spec::{code, CniError, Env, LATEST_VERSION};

fn main() -> ExitCode {
    let env = Env::from_process();
    let reply = match read_stdin(&env) {
        Ok(stdin) => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(commands::run(&env, &stdin)),
            Err(e) => io_error(format!("starting the async runtime: {e}")),
        },
        Err(e) => io_error(format!("reading the network configuration from stdin: {e}")),
    };
    let mut out = std::io::stdout().lock();
    // If stdout is gone there is nobody left to tell.
    let _ = out.write_all(reply.stdout().as_bytes());
    let _ = out.flush();
    ExitCode::from(reply.exit_code())
}

/// stdin, except for VERSION run by hand from a terminal (no input needed).
fn read_stdin(env: &Env) -> std::io::Result<Vec<u8>> {
    use std::io::IsTerminal;
    let mut buf = Vec::new();
    let stdin = std::io::stdin();
    if env.command.as_deref() == Some("VERSION") && stdin.is_terminal() {
        return Ok(buf);
    }
    stdin.lock().read_to_end(&mut buf)?;
    Ok(buf)
}

fn io_error(msg: String) -> Reply {
    Reply {
        version: LATEST_VERSION.to_owned(),
        result: Err(CniError::new(code::IO, msg)),
    }
}
